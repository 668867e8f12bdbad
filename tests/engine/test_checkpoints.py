"""Checkpoints restore everything: N steps equal k steps + checkpoint + a fresh trainer
resuming + (N − k) steps, bit for bit on the CPU; a requeued run resumes its own latest
checkpoint, a fork continues another run's; an interrupted save is never the latest."""

import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from engine.checkpoint import INFO_FILE, MODEL_DIR, STATE_FILE, checkpoint_folder, complete_checkpoints, latest_checkpoint
from engine.events import ListSink
from engine.models import load_policy
from engine.orchestration import run
from engine.spec import ModelSpec, parse_spec

STEPS, RESUME_AT = 4, 2


def spec(**training):
    return parse_spec(
        {
            "dataset": {"eval_size": 8},
            "rollout": {"prompts_per_step": 2, "n": 4, "max_new_tokens": 64},
            "training": {"steps": STEPS, "eval_every": 2, "warmup_steps": 2, "lr": 1e-3} | training,
            "resources": {"executor": "inprocess", "cpus": 1},
            "seed": 3,
        }
    )


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
    """Everything a run reported about steps after `after`, timings left out."""
    record = []
    for event in sink.events:
        if event.kind == "metrics" and event.step > after:
            record.append(("metrics", event.step, untimed(event.values)))
        elif event.kind in ("length_histogram", "prompt_results") and event.step > after:
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


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """N steps without a break; checkpoints at every step to compare against."""
    run_dir = tmp_path_factory.mktemp("straight")
    sink = ListSink()
    assert run(spec(checkpoint_every=1), sink, run_dir=run_dir) == "succeeded"
    return run_dir, sink


def test_n_steps_equal_k_steps_then_a_resume_in_a_fresh_trainer_bit_for_bit(straight_run, tmp_path):
    straight_dir, straight_sink = straight_run
    first_sink, second_sink = ListSink(), ListSink()
    steps_done = lambda: sum(1 for h in first_sink.of_kind("heartbeat") if h.step > 0)  # noqa: E731

    # Stopped after k steps (a cancel writes the checkpoint of the last finished step) ...
    assert run(spec(), first_sink, should_stop=lambda: steps_done() >= RESUME_AT, run_dir=tmp_path) == "cancelled"
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [RESUME_AT]
    # ... then started again on the same run directory: a new Trainer, restored.
    assert run(spec(), second_sink, run_dir=tmp_path) == "succeeded"

    resumed = second_sink.of_kind("log")[0].message
    assert f"resumed at step {RESUME_AT}" in resumed and "optimiser" in resumed
    assert [h.step for h in second_sink.of_kind("heartbeat")] == [RESUME_AT, 3, 4]
    assert per_step_record(second_sink, after=RESUME_AT) == per_step_record(straight_sink, after=RESUME_AT)
    # The comparison saw steps that learnt something: some groups had mixed rewards.
    resumed_steps = [m.values for m in second_sink.of_kind("metrics") if "advantages/abs_mean" in m.values]
    assert any(values["advantages/abs_mean"] > 0 for values in resumed_steps)
    assert_same_weights_and_state(checkpoint_folder(straight_dir, STEPS), checkpoint_folder(tmp_path, STEPS))


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


def test_every_attribute_of_the_trainer_is_saved_or_rebuilt_from_the_spec():
    """A tripwire for state added to the Trainer later: say here which kind it is, and
    save it in Trainer.state_dict if a step changes it."""
    from engine.checkpoint import generator_states
    from engine.trainer import Trainer

    trainer = Trainer(spec())
    saved = {"model", "optimizer", "scheduler", "step_count", "_order", *generator_states(trainer)}
    rebuilt_from_the_spec = {
        "spec", "tokenizer", "device", "worker", "task", "algorithm", "reference", "train_pool", "eval_problems",
        "bin_edges", "curriculum",
    }  # fmt: skip

    assert set(vars(trainer)) == saved | rebuilt_from_the_spec
    assert {"_order_rng", "_sampling_rng"} <= set(generator_states(trainer))
    assert set(trainer.state_dict()) == {"step", "optimizer", "scheduler", "prompt_order", "generators", "global_rng"}


def test_the_checkpoint_layout_is_readable_without_torch():
    code = (
        "import sys, engine.checkpoint, engine.orchestration\n"
        "heavy = [m for m in ('torch', 'transformers', 'ray') if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


@pytest.mark.timeout(300)
def test_the_ray_executor_writes_and_resumes_checkpoints(tmp_path):
    ray_spec = parse_spec(spec().model_dump() | {"resources": {"executor": "ray", "cpus": 1}})
    first = ListSink()
    steps_done = lambda: sum(1 for h in first.of_kind("heartbeat") if h.step > 0)  # noqa: E731
    assert run(ray_spec, first, should_stop=lambda: steps_done() >= 1, run_dir=tmp_path) == "cancelled"

    second = ListSink()
    assert run(ray_spec, second, run_dir=tmp_path) == "succeeded"

    assert "resumed at step 1" in second.of_kind("log")[0].message
    assert [h.step for h in second.of_kind("heartbeat")] == [1, 2, 3, 4]
    assert [step for step, _ in complete_checkpoints(tmp_path)] == [1, 4]
