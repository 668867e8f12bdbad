"""docs/metrics.md says what the engine emits: the names under "Emitted today" are exactly
the names a real run reports, so the page cannot promise a metric that is gone nor miss a
new one. Two one-step runs of the built-in model cover every part that has metrics of its
own: GRPO (a reference model and its KL term) and DAPO (dynamic sampling, overlong
shaping)."""

import re
from pathlib import Path

import pytest

from engine.events import ListSink
from engine.orchestration import run
from engine.spec import parse_spec

DOC = Path(__file__).resolve().parent.parent / "docs" / "metrics.md"
# One step, an evaluation before and after it, on a handful of prompts: seconds, in process.
TINY = {
    "dataset": {"eval_size": 4},
    "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 48},
    "training": {"steps": 1, "eval_pass_k": [1, 2], "eval_samples": 2},
    "resources": {"executor": "inprocess", "cpus": 1},
}
# `val/pass@{k}` in the page stands for one name per k of training.eval_pass_k.
PASS_AT_K = re.compile(r"^val/pass@\d+$")


def documented_today() -> set[str]:
    """The backticked first cell of every table row between "## Emitted today" and the next
    second-level heading."""
    section = DOC.read_text().split("## Emitted today", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([^`]+)` \|", section, re.MULTILINE))


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
    documented = documented_today()
    assert sorted(every - documented) == [], "emitted but not in docs/metrics.md"
    assert sorted(documented - every) == [], "in docs/metrics.md under 'Emitted today' but not emitted"


def test_the_conditional_metrics_come_with_their_parts(emitted):
    # GRPO's default has a KL term and no dynamic sampling; DAPO the reverse, plus shaping.
    assert "kl" in emitted["grpo"] and "kl" not in emitted["dapo"]
    dapo_only = {"dapo/keep_rate", "dapo/gen_rounds", "overlong/penalty_mean", "overlong/buffer_ratio"}
    assert dapo_only <= emitted["dapo"] and not dapo_only & emitted["grpo"]
