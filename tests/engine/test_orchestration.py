"""The driver loop: evaluate, train, evaluate; a heartbeat closes every step; cancel is
honoured between steps; a failure is reported as a status and re-raised."""

import json
import shutil
import subprocess
import sys

import pytest

from engine.assets import resolve_model_path
from engine.events import ListSink
from engine.orchestration import due_after, run
from engine.spec import parse_spec


def tiny_spec(**overrides) -> dict:
    spec = {
        "dataset": {"eval_size": 8},
        "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 32},
        "training": {"steps": 3, "eval_every": 2},
        "resources": {"executor": "inprocess"},
    }
    return spec | overrides


def test_evaluations_and_checkpoints_follow_every_nth_step_and_the_last():
    assert [s for s in range(1, 8) if due_after(s, steps=7, every=3)] == [3, 6, 7]
    assert [s for s in range(1, 5) if due_after(s, steps=4, every=0)] == [4]


def test_a_run_reports_status_evaluations_steps_and_heartbeats_in_order():
    sink = ListSink()

    assert run(parse_spec(tiny_spec()), sink) == "succeeded"

    kinds = [event.kind for event in sink.events]
    assert kinds[0] == "status" and sink.events[0].status == "running"
    assert sink.events[-1].kind == "status" and sink.events[-1].status == "succeeded"
    assert [h.step for h in sink.of_kind("heartbeat")] == [0, 1, 2, 3]
    evaluated_at = [m.step for m in sink.of_kind("metrics") if "val/acc/mean@1" in m.values]
    assert evaluated_at == [0, 2, 3]
    trained_at = [m.step for m in sink.of_kind("metrics") if "reward/mean" in m.values]
    assert trained_at == [1, 2, 3]
    # Everything a step produced arrives before the heartbeat that closes it.
    last_heartbeat = kinds.index("heartbeat", kinds.index("heartbeat") + 1)
    assert {"metrics", "length_histogram", "prompt_results", "span"} <= set(kinds[:last_heartbeat])


def test_should_stop_cancels_between_steps():
    sink = ListSink()
    steps_done = lambda: len([h for h in sink.of_kind("heartbeat") if h.step > 0])  # noqa: E731

    outcome = run(parse_spec(tiny_spec(training={"steps": 50})), sink, should_stop=lambda: steps_done() >= 2)

    assert outcome == "cancelled"
    assert steps_done() == 2
    assert sink.events[-1].status == "cancelled" and "before step 3" in sink.events[-1].message


def test_a_failure_is_reported_as_a_status_and_raised(tmp_path):
    # The built-in model's files beside a config naming no known architecture: a real failure.
    for name in ("tokenizer.json", "tokenizer_config.json", "model.safetensors"):
        shutil.copy(resolve_model_path("builtin:arith-tiny") / name, tmp_path / name)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    sink = ListSink()

    with pytest.raises(Exception):
        run(parse_spec(tiny_spec(model={"path": str(tmp_path)})), sink)

    assert sink.events[-1].kind == "status" and sink.events[-1].status == "failed"
    assert "no-such-architecture" in sink.events[-1].message


@pytest.mark.timeout(300)
def test_the_ray_executor_runs_the_recipe_in_an_actor():
    import torch

    # Building a recipe seeds the global torch stream of the process it is built in
    # (engine.recipes.sync.seed_everything): a recipe in an actor leaves this one's alone.
    torch.manual_seed(12345)
    before = torch.get_rng_state()
    sink = ListSink()

    assert run(parse_spec(tiny_spec(resources={"executor": "ray"}, training={"steps": 1})), sink) == "succeeded"

    assert torch.equal(torch.get_rng_state(), before)
    spans = sink.of_kind("span")
    assert {span.worker for span in spans} == {"trainer", "rollout-0"}
    assert [m.step for m in sink.of_kind("metrics") if "reward/mean" in m.values] == [1]


def test_the_inprocess_executor_builds_the_recipe_here():
    import torch

    torch.manual_seed(12345)
    before = torch.get_rng_state()

    assert run(parse_spec(tiny_spec(training={"steps": 1, "eval_every": 0})), ListSink()) == "succeeded"

    assert not torch.equal(torch.get_rng_state(), before)  # the contrast for the Ray test above


def test_python_m_engine_run_prints_progress_and_refuses_a_bad_spec(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec(training={"steps": 2, "eval_every": 0})))
    done = subprocess.run([sys.executable, "-m", "engine", "run", str(spec_file)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "step     1  reward" in done.stdout and done.stdout.strip().endswith("succeeded")

    spec_file.write_text(json.dumps({"rollout": {"n": 0}}))
    refused = subprocess.run([sys.executable, "-m", "engine", "run", str(spec_file)], capture_output=True, text=True)
    assert refused.returncode == 2
    assert "rollout.n" in refused.stderr


def test_python_m_engine_run_checkpoints_into_a_run_dir_and_forks_from_a_checkpoint(tmp_path):
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(tiny_spec(training={"steps": 2, "eval_every": 0})))
    engine_run = [sys.executable, "-m", "engine", "run", str(spec_file)]

    first = subprocess.run([*engine_run, "--run-dir", str(tmp_path / "a")], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    checkpoint = tmp_path / "a" / "checkpoints" / "step-000002"
    assert f"checkpoint: step 2 at {checkpoint}" in first.stdout

    fork = [*engine_run, "--steps", "3", "--run-dir", str(tmp_path / "b"), "--resume-from", str(checkpoint)]
    forked = subprocess.run(fork, capture_output=True, text=True)
    assert forked.returncode == 0, forked.stderr
    assert f"resumed at step 2 from {checkpoint}" in forked.stdout
    assert "step     3  reward" in forked.stdout and "step     1  reward" not in forked.stdout
    assert (tmp_path / "b" / "checkpoints" / "step-000003" / "model" / "config.json").is_file()

    missing = subprocess.run([*engine_run, "--resume-from", str(tmp_path / "nowhere")], capture_output=True, text=True)
    assert missing.returncode == 2 and "not a complete checkpoint" in missing.stderr
