"""Checkpoints restore everything: N steps equal k steps + checkpoint + a fresh recipe
resuming + (N − k) steps, bit for bit on the CPU, for grpo, dapo with dynamic sampling,
gspo with 4 mini-batches, easy_to_hard and the Ray executor; every part that holds
state gives it back through its state_dict (the tripwire); a requeued run resumes its
own latest checkpoint, a fork continues another run's; an interrupted save is never the
latest."""

import dataclasses
import json
import random
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import load_file

from engine.checkpoint import (
    INFO_FILE,
    MODEL_DIR,
    STATE_FILE,
    checkpoint_folder,
    complete_checkpoints,
    latest_checkpoint,
    publish_checkpoint,
)
from engine.events import ListSink
from engine.models import load_policy
from engine.orchestration import run
from engine.recipes.sync import SyncRecipe
from engine.sampling.passes import pacing_quantile
from engine.spec import ModelSpec, RunSpec, parse_spec

STEPS, RESUME_AT = 4, 2

BASE = {
    "dataset": {"eval_size": 8},
    "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 64},
    "training": {"steps": STEPS, "eval_every": 2, "warmup_steps": 2, "lr": 1e-3},
    "resources": {"executor": "inprocess", "cpus": 1},
    "seed": 3,
}

# What each resumed case adds to BASE. The Ray case is BASE in an actor: it must give what
# the in-process grpo run gives, so it is compared with that run.
RESUME_CASES: dict[str, dict[str, Any]] = {
    "grpo": {},
    # At BASE's lr 1e-3 this seed's DAPO policy stops solving anything after one step (every
    # group all wrong, ten rounds a step); 1e-4 keeps mixed groups, refilled over rounds.
    "dapo": {"algorithm": {"name": "dapo", "dynamic_sampling": True}, "training": {**BASE["training"], "lr": 1e-4}},
    "gspo": {
        "algorithm": {"name": "gspo"},
        "rollout": {**BASE["rollout"], "prompts_per_step": 4},
        "training": {**BASE["training"], "mini_batches": 4},
    },
    "easy_to_hard": {"curriculum": {"strategy": "easy_to_hard", "start_quantile": 0.3, "ramp_steps": 4}},
    "ray": {"resources": {"executor": "ray", "cpus": 1}},
}
COMPARED_WITH = {"ray": "grpo"}


def spec(case: str = "grpo", **training) -> RunSpec:
    data = BASE | RESUME_CASES[case]
    return parse_spec(data | {"training": data["training"] | training})


def measures_time(name: str) -> bool:
    """Timings, idle ratios and throughputs differ between any two runs; token counts do not."""
    return (
        name.startswith("timing_s/")
        or name.endswith("idle_ratio")
        or (name.startswith("perf/") and not name.endswith("_tokens"))
    )


def untimed(values: dict[str, float]) -> dict[str, float]:
    return {name: value for name, value in values.items() if not measures_time(name)}


def per_step_record(sink: ListSink, after: int) -> list[tuple]:
    """Everything a run reported about steps after `after`, timings left out: untimed
    metrics, length histograms, prompt results, difficulty updates and sample records
    (training's and evaluations')."""
    record = []
    for event in sink.events:
        if event.kind == "metrics" and event.step > after:
            record.append(("metrics", event.step, untimed(event.values)))
        elif event.kind in ("length_histogram", "prompt_results", "difficulty", "samples") and event.step > after:
            record.append(event.model_dump(exclude={"wall_time"}))
    return record


def assert_same_weights_and_state(checkpoint_a, checkpoint_b):
    weights_a = load_file(checkpoint_a / MODEL_DIR / "model.safetensors")
    weights_b = load_file(checkpoint_b / MODEL_DIR / "model.safetensors")
    assert weights_a.keys() == weights_b.keys()
    for name in weights_a:
        assert torch.equal(weights_a[name], weights_b[name]), name
    state_a = torch.load(checkpoint_a / STATE_FILE, weights_only=True)
    state_b = torch.load(checkpoint_b / STATE_FILE, weights_only=True)
    assert_equal_nested(state_a, state_b)


def assert_equal_nested(a, b, where="state"):
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_nested(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{index}]")
    else:
        assert a == b, where


def steps_done(sink: ListSink) -> int:
    return sum(1 for h in sink.of_kind("heartbeat") if h.step > 0)


@pytest.fixture(scope="module")
def straight_runs(tmp_path_factory):
    """N steps without a break, per case, run once per module; grpo's checkpoints every
    step, for the fork and retention tests to start from."""
    done: dict[str, tuple[Path, ListSink]] = {}

    def straight(case: str) -> tuple[Path, ListSink]:
        if case not in done:
            run_dir = tmp_path_factory.mktemp(f"straight-{case}")
            sink = ListSink()
            assert run(spec(case, checkpoint_every=1 if case == "grpo" else 0), sink, run_dir=run_dir) == "succeeded"
            done[case] = run_dir, sink
        return done[case]

    return straight


@pytest.fixture(scope="module")
def straight_run(straight_runs):
    return straight_runs("grpo")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_n_steps_equal_k_steps_then_a_resume_in_a_fresh_recipe_bit_for_bit(case, straight_runs, tmp_path):
    straight_dir, straight_sink = straight_runs(COMPARED_WITH.get(case, case))
    first_sink, second_sink = ListSink(), ListSink()

    # Stopped after k steps (a cancel writes the checkpoint of the last finished step) ...
    stop_after_k = lambda: steps_done(first_sink) >= RESUME_AT  # noqa: E731
    assert run(spec(case), first_sink, should_stop=stop_after_k, run_dir=tmp_path) == "cancelled"
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [RESUME_AT]
    # ... then started again on the same run directory: a new recipe, restored.
    assert run(spec(case), second_sink, run_dir=tmp_path) == "succeeded"

    resumed = second_sink.of_kind("log")[0].message
    assert f"resumed at step {RESUME_AT}" in resumed and "optimiser" in resumed
    assert [h.step for h in second_sink.of_kind("heartbeat")] == [RESUME_AT, 3, 4]
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [RESUME_AT, STEPS]
    assert per_step_record(second_sink, after=RESUME_AT) == per_step_record(straight_sink, after=RESUME_AT)
    assert_same_weights_and_state(checkpoint_folder(straight_dir, STEPS), checkpoint_folder(tmp_path, STEPS))

    # The comparison saw steps that learnt something, with the case's part at work.
    resumed_steps = {m.step: m.values for m in second_sink.of_kind("metrics") if "advantages/abs_mean" in m.values}
    assert sorted(resumed_steps) == [3, 4]
    assert any(values["advantages/abs_mean"] > 0 for values in resumed_steps.values())
    if case == "dapo":
        # The resumed steps refilled: the restored sampler gave the later rounds' prompts.
        assert all(0 < values["dapo/keep_rate"] <= 1 for values in resumed_steps.values())
        assert max(values["dapo/gen_rounds"] for values in resumed_steps.values()) >= 2
    if case == "gspo":
        # Four optimiser steps per batch: from the second on π_θ ≠ π_old, so the ratio moves.
        assert all(values["actor/ppo_kl"] != 0 for values in resumed_steps.values())
    if case == "easy_to_hard":
        # Mid-ramp: q(3) = 0.3 + 0.7 · (3 − 1)/4 = 0.65, so the curriculum still held prompts back.
        assert resumed_steps[3]["curriculum/difficulty_quantile"] == pytest.approx(pacing_quantile(3, 0.3, 4))
        assert resumed_steps[3]["curriculum/difficulty_quantile"] == pytest.approx(0.65)
        assert resumed_steps[3]["curriculum/admission_rate"] < 1.0


def test_a_fork_continues_another_runs_checkpoint_in_its_own_directory(straight_run, tmp_path):
    straight_dir, straight_sink = straight_run
    source = checkpoint_folder(straight_dir, RESUME_AT)
    sink = ListSink()

    assert run(spec(), sink, run_dir=tmp_path, resume_from=source) == "succeeded"

    # A fork evaluates where it starts, then trains the remaining steps exactly as the source did.
    assert [m.step for m in sink.of_kind("metrics") if "val/acc/mean@1" in m.values] == [RESUME_AT, 4]
    assert per_step_record(sink, after=RESUME_AT) == per_step_record(straight_sink, after=RESUME_AT)
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [STEPS]
    assert_same_weights_and_state(checkpoint_folder(straight_dir, STEPS), checkpoint_folder(tmp_path, STEPS))


def test_a_fork_with_a_new_learning_rate_trains_with_it(straight_run, tmp_path):
    straight_dir, _ = straight_run
    sink = ListSink()

    run(spec(lr=2e-3, steps=3), sink, run_dir=tmp_path, resume_from=checkpoint_folder(straight_dir, RESUME_AT))

    step_three = next(m for m in sink.of_kind("metrics") if m.step == 3 and "actor/lr" in m.values)
    assert step_three.values["actor/lr"] == pytest.approx(2e-3)  # warm-up (2 steps) is over


def test_checkpoint_events_carry_the_latest_held_out_metrics(straight_run):
    straight_dir, sink = straight_run
    events = sink.of_kind("checkpoint")

    assert [event.step for event in events] == [1, 2, 3, 4]
    val_at = {m.step: m.values["val/acc/mean@1"] for m in sink.of_kind("metrics") if "val/acc/mean@1" in m.values}
    # Step 1 was not evaluated: its checkpoint carries the evaluation before training.
    assert [event.metrics["val/acc/mean@1"] for event in events] == [val_at[0], val_at[2], val_at[2], val_at[4]]
    info = json.loads((checkpoint_folder(straight_dir, 4) / INFO_FILE).read_text())
    assert info == {"step": 4, "metrics": events[-1].metrics}
    # The heartbeat closing a step comes after its checkpoint, so a batching sink stores them together.
    kinds = [event.kind for event in sink.events]
    assert kinds[kinds.index("checkpoint") + 1] == "heartbeat"


def test_a_checkpoint_is_itself_a_loadable_model_folder(straight_run):
    straight_dir, _ = straight_run
    folder = checkpoint_folder(straight_dir, STEPS) / MODEL_DIR

    model, tokenizer = load_policy(ModelSpec(path=str(folder), device="cpu"))

    saved = load_file(folder / "model.safetensors")
    assert all(torch.equal(saved[name], tensor) for name, tensor in model.state_dict().items() if name in saved)
    assert tokenizer("12 +3")["input_ids"] == [tokenizer.bos_token_id, *tokenizer.convert_tokens_to_ids(["12", "+3"])]
    assert parse_spec({"model": {"path": str(folder)}}).model.path == str(folder)


def test_an_interrupted_save_is_never_the_latest(straight_run, tmp_path):
    straight_dir, _ = straight_run
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    subprocess.run(["cp", "-r", str(checkpoint_folder(straight_dir, 2)), str(checkpoint_folder(run_dir, 2))], check=True)
    # What a save killed halfway leaves: a partial folder, never renamed.
    (run_dir / "checkpoints" / ".partial-step-000003-0badc0de" / MODEL_DIR).mkdir(parents=True)

    assert latest_checkpoint(run_dir) == checkpoint_folder(run_dir, 2)

    sink = ListSink()
    assert run(spec(steps=3), sink, run_dir=run_dir) == "succeeded"
    assert "resumed at step 2" in sink.of_kind("log")[0].message


def test_a_resume_from_that_is_not_a_checkpoint_fails_naming_what_is_missing(tmp_path):
    sink = ListSink()
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint.*trainer_state.pt"):
        run(spec(), sink, resume_from=tmp_path)
    assert sink.events[-1].status == "failed"


def test_a_cancel_before_any_new_step_writes_nothing(tmp_path):
    assert run(spec(), ListSink(), should_stop=lambda: True, run_dir=tmp_path) == "cancelled"
    assert complete_checkpoints(tmp_path) == []


# ----------------------------------------------------------------- the tripwire
# What the tripwire accepts a restored recipe to differ in, by attribute path, and why.
# Everything else reachable from the recipe and its parts must come back from a
# checkpoint exactly as it was saved.
REBUILT_FROM_THE_SPEC = {
    # Frozen: no step moves it (checked below), so building it again gives it back.
    "recipe.training.reference": "the frozen reference model of a KL term",
}
NOT_STATE = {
    "recipe.collector.backend._store_keys": "the KV store: a row is written before it is read, and no sample is in flight between steps",
    "recipe.collector.backend._store_values": "the KV store, as _store_keys",
    "recipe.collector.backend.stats": "counters for benchmarks; nothing in a run reads them",
    "recipe.collector.backend.generator": "the collector's stream (recipe.collector.generator), lent for each collect",
}  # fmt: skip


def walk(recipe: SyncRecipe) -> tuple[dict[str, Any], set[str]]:
    """Every attribute reachable from the recipe, by path (`recipe.sampler._order_rng`),
    and the paths of the objects walked into: the engine's own (the parts, the
    collector's backend, the loss, the shapers); anything else is a leaf. Breadth first,
    and an object reached twice counts where it is reached first: the collector's random
    stream is `recipe.collector.generator`, though its backend holds it too while it
    samples."""
    leaves: dict[str, Any] = {}
    objects: set[str] = set()
    seen: set[int] = {id(recipe)}
    queue: deque[tuple[str, Any]] = deque([("recipe", recipe)])
    while queue:
        path, obj = queue.popleft()
        objects.add(path)
        for name, value in vars(obj).items():
            if id(value) in seen and not isinstance(value, (int, float, str, bool, type(None))):
                continue
            seen.add(id(value))
            if is_engine_object(value):
                queue.append((f"{path}.{name}", value))
            elif isinstance(value, (list, tuple)) and any(is_engine_object(item) for item in value):
                for index, item in enumerate(value):
                    seen.add(id(item))
                    queue.append((f"{path}.{name}[{index}]", item))
            else:
                leaves[f"{path}.{name}"] = value
    return leaves, objects


def fingerprints(recipe: SyncRecipe) -> dict[str, Any]:
    return {path: fingerprint(value) for path, value in walk(recipe)[0].items()}


def is_engine_object(value: Any) -> bool:
    """One of the engine's objects with attributes of its own (a frozen dataclass, such as
    a Problem or the sampling settings, is a value, and the spec is one pydantic value)."""
    frozen = dataclasses.is_dataclass(value) and value.__dataclass_params__.frozen
    return (
        type(value).__module__.startswith("engine.")
        and hasattr(value, "__dict__")
        and not frozen
        and not isinstance(value, BaseModel)
    )


def fingerprint(value: Any) -> Any:
    """A comparable copy of what a value holds: random streams by their state, tensors,
    modules, optimisers and schedulers by their contents."""
    if isinstance(value, torch.Tensor):
        return ("tensor", str(value.dtype), tuple(value.shape), value.detach().cpu().numpy().tobytes())
    if isinstance(value, torch.Generator):
        return ("torch.Generator", fingerprint(value.get_state()))
    if isinstance(value, random.Random):
        return ("random.Random", value.getstate())
    if isinstance(value, np.random.Generator):
        return ("numpy.Generator", repr(value.bit_generator.state))
    if isinstance(value, np.random.RandomState):
        return ("numpy.RandomState", repr(value.get_state()))
    if isinstance(value, (torch.nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler)):
        return (type(value).__name__, fingerprint(value.state_dict()))
    if isinstance(value, dict):
        return ("dict", tuple((fingerprint(key), fingerprint(item)) for key, item in value.items()))
    if isinstance(value, (list, tuple, deque)):
        return (type(value).__name__, tuple(fingerprint(item) for item in value))
    if isinstance(value, (set, frozenset)):
        return ("set", tuple(sorted(repr(fingerprint(item)) for item in value)))
    if isinstance(value, BaseModel):
        return ("pydantic", value.model_dump_json())
    if dataclasses.is_dataclass(value):
        return (type(value).__name__, fingerprint(vars(value)))
    if value is None or isinstance(value, (int, float, str, bool, np.generic)):
        return value
    # A tokenizer, a device, a task: built from the spec and never changed by a step.
    return ("built", type(value).__qualname__)


@torch.no_grad()
def scramble(value: Any) -> None:
    """Move a random stream or a tensor away from where a fresh recipe starts, so that
    one a checkpoint does not give back cannot pass for restored."""
    if isinstance(value, torch.Generator):
        value.manual_seed(987_654_321)
    elif isinstance(value, random.Random):
        value.seed(987_654_321)
    elif isinstance(value, np.random.Generator):
        value.bit_generator.state = np.random.PCG64(987_654_321).state
    elif isinstance(value, np.random.RandomState):
        value.seed(987_654)
    elif isinstance(value, torch.Tensor):
        value.add_(1)
    elif isinstance(value, torch.nn.Module):
        for tensor in value.state_dict().values():
            tensor.add_(1)
    elif isinstance(value, (list, tuple, deque)):
        for item in value:
            scramble(item)
    elif isinstance(value, dict):
        for item in value.values():
            scramble(item)


def global_random_states() -> Any:
    return fingerprint((random.getstate(), np.random.get_state(), torch.get_rng_state()))


@pytest.mark.parametrize(
    "case",
    [
        {},  # grpo: a reference model, plain collection, the uniform sampler
        {"algorithm": {"name": "dapo"}, "curriculum": {"strategy": "easy_to_hard", "ramp_steps": 4}},  # refill, pacing, shaping
        {"algorithm": {"name": "rloo"}},  # KL in the reward
    ],
    ids=["grpo", "dapo-easy_to_hard", "rloo"],
)
def test_every_part_gives_back_all_its_state_through_its_state_dict(case, tmp_path):
    """A tripwire for state added to a part later: a random stream, optimiser, tensor or
    counter that a part (or the recipe) holds but does not return from its state_dict
    differs between the recipe that saved a checkpoint and a fresh one that loaded it.
    Save it in the part's state_dict, or say here why it need not be."""
    run_spec = parse_spec(BASE | case)
    trained = SyncRecipe(run_spec)
    for _ in range(RESUME_AT):
        trained.step()
    folder = publish_checkpoint(trained.write_checkpoint(str(tmp_path), RESUME_AT, {}))
    saved, saved_random = fingerprints(trained), global_random_states()

    restored = SyncRecipe(run_spec)
    fresh = fingerprints(restored)
    for path, value in walk(restored)[0].items():
        if path not in REBUILT_FROM_THE_SPEC:
            scramble(value)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    restored.load_checkpoint(folder)
    loaded = fingerprints(restored)

    # Every part is walked into, and the checkpoint holds each one's state by its name.
    assert {f"recipe.{name}" for name in trained.parts()} <= walk(trained)[1]
    assert set(trained.state_dict()) == {"step", "global_rng", *trained.parts()}
    every = saved.keys() | loaded.keys()
    exempt = {path for path in every if any(path == p or path.startswith(p + ".") for p in NOT_STATE)}
    checked = every - exempt - REBUILT_FROM_THE_SPEC.keys()
    missing = object()
    not_given_back = sorted(path for path in checked if loaded.get(path, missing) != saved.get(path, missing))
    assert not_given_back == [], f"held, not given back by a state_dict: {not_given_back}"
    changed = sorted(path for path in REBUILT_FROM_THE_SPEC if path in saved and saved[path] != fresh[path])
    assert changed == [], f"listed as rebuilt from the spec, but a step changed it: {changed}"
    assert global_random_states() == saved_random
    # The walk saw the state that matters, so an empty walk cannot pass.
    assert {"recipe.step_count", "recipe.sampler._order_rng", "recipe.collector.generator"} <= checked
    assert {"recipe.training.model", "recipe.training.optimizer", "recipe.training.version"} <= checked


def test_the_checkpoint_layout_is_readable_without_torch():
    code = (
        "import sys, engine.checkpoint, engine.orchestration\n"
        "heavy = [m for m in ('torch', 'transformers', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
