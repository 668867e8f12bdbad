"""docs/metrics.md says what the engine emits: the names under "Emitted today" are exactly
the names a real run reports, so the page cannot promise a metric that is gone nor miss a
new one. Two one-step runs of the built-in model cover the parts every run has and those
with metrics of their own in the plain recipe: GRPO (a reference model and its KL term)
and DAPO (dynamic sampling, overlong shaping). The techniques' names (CurES, DARS, APRIL,
AReaL; their own section) are checked against the engine's source instead: each must
still be written there."""

import re
from pathlib import Path

import pytest

from engine.events import ListSink
from engine.orchestration import run
from engine.spec import parse_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC = REPO_ROOT / "docs" / "metrics.md"
TECHNIQUES = "### With a technique selected"
# One step, an evaluation before and after it, on a handful of prompts: seconds, in process.
TINY = {
    "dataset": {"eval_size": 4},
    "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 48},
    "training": {"steps": 1, "eval_pass_k": [1, 2], "eval_samples": 2},
    "resources": {"executor": "inprocess", "cpus": 1},
}
# `val/pass@{k}` in the page stands for one name per k of training.eval_pass_k.
PASS_AT_K = re.compile(r"^val/pass@\d+$")


def documented_today() -> tuple[set[str], set[str]]:
    """The backticked first cell of every table row between "## Emitted today" and the next
    second-level heading: (the names of the techniques' section, all the others)."""
    section = DOC.read_text().split("## Emitted today", 1)[1].split("\n## ", 1)[0]
    plain, _, rest = section.partition(TECHNIQUES)
    techniques, _, after = rest.partition("\n### ")
    names = re.compile(r"^\| `([^`]+)` \|", re.MULTILINE)
    return set(names.findall(techniques)), set(names.findall(plain + after))


def emitted_names(algorithm: str) -> set[str]:
    sink = ListSink()
    assert run(parse_spec({**TINY, "algorithm": {"name": algorithm}}), sink) == "succeeded"
    names = {name for event in sink.of_kind("metrics") for name in event.values}
    return {"val/pass@{k}" if PASS_AT_K.match(name) else name for name in names}


@pytest.fixture(scope="module")
def emitted() -> dict[str, set[str]]:
    return {algorithm: emitted_names(algorithm) for algorithm in ("grpo", "dapo")}


def test_the_page_lists_exactly_the_metrics_the_engine_emits(emitted):
    every = emitted["grpo"] | emitted["dapo"]
    techniques, documented = documented_today()
    assert sorted(every - documented - techniques) == [], "emitted but not in docs/metrics.md"
    assert sorted(documented - every) == [], "in docs/metrics.md under 'Emitted today' but not emitted"


def test_the_techniques_names_are_still_written_by_the_engine():
    source = "\n".join(path.read_text() for path in (REPO_ROOT / "engine").rglob("*.py"))
    techniques, _ = documented_today()
    assert len(techniques) >= 30  # CurES 7, DARS 6, APRIL 6, off-policy 7, AReaL 7
    missing = [name for name in sorted(techniques) if not written(name, source)]
    assert missing == [], "in docs/metrics.md but written nowhere in engine/"


def written(name: str, source: str) -> bool:
    """`name` as a string literal; `dars/extra_rollouts/{bucket}` as an f-string with that
    prefix; `timing_s/<label>` also as the label of a timeline phase, which it sums."""
    if "{" in name:
        return f'f"{name.split("{")[0]}{{' in source
    label = name.removeprefix("timing_s/")
    return f'"{name}"' in source or (label != name and re.search(rf'phase\([^)]*"{label}"\)', source) is not None)


def test_the_conditional_metrics_come_with_their_parts(emitted):
    # GRPO's default has a KL term and no dynamic sampling; DAPO the reverse, plus shaping.
    assert "kl" in emitted["grpo"] and "kl" not in emitted["dapo"]
    dapo_only = {"dapo/keep_rate", "dapo/gen_rounds", "overlong/penalty_mean", "overlong/buffer_ratio"}
    assert dapo_only <= emitted["dapo"] and not dapo_only & emitted["grpo"]
