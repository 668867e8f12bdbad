"""Placement on Ray: the async recipe's trainer in one actor and its rollout worker in
another, each with one CPU (this machine's two cores), weights going from the one to the
other through Ray's object store with their version."""

import pytest

from engine.events import ListSink
from engine.orchestration import run
from engine.spec import parse_spec


@pytest.mark.timeout(300)
def test_the_trainer_and_a_rollout_worker_run_in_separate_actors_with_one_cpu_each():
    import ray

    spec = parse_spec(
        {
            "dataset": {"eval_size": 4},
            "algorithm": {"name": "grpo", "policy_loss": "decoupled_ppo"},
            "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 48},
            "training": {"steps": 3, "eval_every": 0, "warmup_steps": 1, "lr": 1e-3},
            "orchestration": {"mode": "async", "max_staleness": 1},
            "resources": {"executor": "ray", "cpus": 1, "rollout_workers": 1, "rollout_cpus": 1},
        }
    )
    sink = ListSink()

    assert run(spec, sink) == "succeeded"

    spans = sink.of_kind("span")
    assert {"generate", "sync"} <= {s.phase for s in spans if s.worker == "rollout-0"}
    assert {"train", "sync"} <= {s.phase for s in spans if s.worker == "trainer"}
    steps = [m.values for m in sink.of_kind("metrics") if "reward/mean" in m.values]
    assert len(steps) == 3
    # Weights reached the worker with their versions: from step 2 on it samples with
    # version ≥ 1, and with η = 1 some trained tokens are a version behind.
    assert all(v["timing_s/worker_sync"] >= 0 for v in steps)
    assert max(v["off_policy/staleness/max"] for v in steps) >= 1
    assert ray.is_initialized()  # Ray stays up for the worker's next run
