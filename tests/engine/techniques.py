"""What the CurES, DARS, BroRL, APRIL and AReaL tests share (tests/engine/test_cures.py,
test_dars.py, test_brorl.py, test_april.py, test_areal.py, test_sync_split.py): an end-to-end learning run judged like tests/engine/test_learning.py,
and the resume check of tests/engine/test_checkpoints.py, whose helpers they import
(tests are not a package, so they are loaded by path)."""

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

from engine.checkpoint import checkpoint_folder, complete_checkpoints
from engine.events import ListSink
from engine.orchestration import run
from engine.problems import Problem
from engine.rollout.types import Group, Rollout
from engine.sampling.base import PlanItem
from engine.spec import parse_spec


def load_test_module(name: str) -> ModuleType:
    """tests/engine/<name>.py as a module."""
    path = Path(__file__).with_name(f"{name}.py")
    module_spec = importlib.util.spec_from_file_location(f"{name}_helpers", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


learning = load_test_module("test_learning")
checkpoints = load_test_module("test_checkpoints")

# The learning runs: test_learning's task, model and held-out set, on one thread.
LEARNING_EVAL_SIZE = 512
LEARNING_BASE: dict[str, Any] = {
    "model": {"path": "builtin:arith-tiny"},
    "dataset": {"name": "arith", "eval_size": LEARNING_EVAL_SIZE},
    "rollout": {"prompts_per_step": 16, "n": 8, "temperature": 1.0, "max_new_tokens": 256},
    "training": {"steps": 16, "lr": 3e-4, "warmup_steps": 10, "eval_every": 0},
    "resources": {"executor": "inprocess", "cpus": 1},
    "seed": 0,
}


def merged(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """base | overrides, with each section the two share merged key by key."""
    return base | {
        key: base[key] | value if isinstance(value, dict) and isinstance(base.get(key), dict) else value
        for key, value in overrides.items()
    }


def untimed(values: dict[str, float], own: tuple[str, ...] = ()) -> dict[str, float]:
    """A step's metrics without those that differ between any two runs (timings, idle
    ratios, throughputs) and without the ones starting with `own` (a technique's own,
    which the run it is compared with does not report)."""
    return {
        name: value
        for name, value in values.items()
        if not (
            name.startswith(("timing_s/", *own))
            or name.endswith("idle_ratio")
            or (name.startswith("perf/") and not name.endswith("_tokens"))
        )
    }


def held_out_gain(overrides: dict[str, Any]) -> tuple[float, float, float, ListSink]:
    """Train LEARNING_BASE with `overrides` merged in; returns step-0 and final held-out
    accuracy, the 3-SE margin the gain must beat, and the run's events."""
    spec = parse_spec(merged(LEARNING_BASE, overrides))
    sink = ListSink()
    assert run(spec, sink) == "succeeded"
    accuracy = {m.step: m.values["val/acc/mean@1"] for m in sink.of_kind("metrics") if "val/acc/mean@1" in m.values}
    before, after = accuracy[0], accuracy[spec.training.steps]
    return before, after, 3 * learning.difference_se(before, after, LEARNING_EVAL_SIZE), sink


def resumed_equals_straight(overrides: dict[str, Any], tmp_path: Path) -> ListSink:
    """test_checkpoints' BASE with `overrides` merged in: checkpoints.STEPS steps straight, and the same stopped after RESUME_AT and resumed in a
    fresh recipe, report the same after RESUME_AT and end with the same weights and state
    (every part's, the sampler's included); returns the resumed run's events."""
    spec = parse_spec(merged(checkpoints.BASE, overrides))
    straight_dir, straight_sink = tmp_path / "straight", ListSink()
    assert run(spec, straight_sink, run_dir=straight_dir) == "succeeded"

    resumed_dir, first_sink, second_sink = tmp_path / "resumed", ListSink(), ListSink()
    stop = lambda: checkpoints.steps_done(first_sink) >= checkpoints.RESUME_AT  # noqa: E731
    assert run(spec, first_sink, should_stop=stop, run_dir=resumed_dir) == "cancelled"
    assert [step for step, _ in complete_checkpoints(resumed_dir)] == [checkpoints.RESUME_AT]
    assert run(spec, second_sink, run_dir=resumed_dir) == "succeeded"

    assert f"resumed at step {checkpoints.RESUME_AT}" in second_sink.of_kind("log")[0].message
    after = checkpoints.RESUME_AT
    assert checkpoints.per_step_record(second_sink, after) == checkpoints.per_step_record(straight_sink, after)
    checkpoints.assert_same_weights_and_state(
        checkpoint_folder(straight_dir, checkpoints.STEPS), checkpoint_folder(resumed_dir, checkpoints.STEPS)
    )
    return second_sink


class ScriptedCollector:
    """Stands in for the generation backend with fixed verdicts, so the merge arithmetic is
    checked against exact numbers (the real collector runs in the learning test): each
    call hands out the next list of rewards per plan item."""

    def __init__(self, rounds: list[list[list[float]]]):
        self.rounds = list(rounds)
        self.plans: list[list[PlanItem]] = []

    def collect(self, plan, first_group, timeline, generator=None):
        self.plans.append(list(plan))
        rewards = self.rounds.pop(0)
        groups = []
        for index, (item, scores) in enumerate(zip(plan, rewards, strict=True)):
            assert len(scores) == item.n
            group = Group(id=first_group + index, problem=item.problem, rollouts=[])
            group.rollouts = [
                Rollout(group.id, item.problem, [1], [5, 2], [-0.1, -0.2], [0, 0], "completed", reward=score)
                for score in scores
            ]
            groups.append(group)
        return groups


def problem(index: int) -> Problem:
    return Problem(id=f"p{index}", prompt=f"{index} +1", answer=str(index + 1), difficulty=1.0, solution="")
