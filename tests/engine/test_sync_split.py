"""The synchronous recipe split across actors (resources.rollout_workers ≥ 1,
engine.rollout.workers.PooledCollector): one rollout worker reports what the colocated
run does, through local Ray as in process; k = 2 workers both generate, and every
planned group is trained exactly once, with its n samples, in sync and async mode."""

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from engine.events import ListSink
from engine.orchestration import run
from engine.spec import parse_spec

_path = Path(__file__).with_name("techniques.py")
_module_spec = importlib.util.spec_from_file_location("techniques", _path)
techniques = importlib.util.module_from_spec(_module_spec)
_module_spec.loader.exec_module(techniques)

TINY = {
    "dataset": {"eval_size": 4},
    "rollout": {"prompts_per_step": 4, "n": 2, "max_new_tokens": 48},
    "training": {"steps": 2, "eval_every": 0, "warmup_steps": 1, "lr": 1e-3},
    "resources": {"executor": "inprocess", "cpus": 1},
    "seed": 5,
}


def split(workers: int, **resources) -> dict:
    return techniques.merged(TINY, {"resources": {"rollout_workers": workers, "rollout_cpus": 1, **resources}})


def trained_prompts(sink: ListSink) -> list[Counter]:
    """Per training step, how many samples of each prompt it trained on."""
    return [
        Counter({result.prompt_id: result.attempts for result in event.results})
        for event in sink.of_kind("prompt_results")
        if event.split == "train"
    ]


def generating_workers(sink: ListSink) -> set[str]:
    return {span.worker for span in sink.of_kind("span") if span.phase == "generate"}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("executor", ["inprocess", pytest.param("ray", marks=pytest.mark.slow)])
def test_one_split_rollout_worker_reports_what_the_colocated_run_does(executor):
    """Tolerance: none, every untimed metric and histogram equal float for float. The
    worker's copy of the policy is loaded from the same folder, its parameters require
    grad like the trainer's (frozen ones take CPU kernels that round the last bits
    differently: log-probs 1e-7 apart), it gets every update's weights (through Ray's
    object store, exact CPU tensors, under Ray), its sampling
    stream is seeded as the colocated collector's, and it is given the whole plan in one
    submission, so its backend decodes the same batch step by step. Under Ray the trainer
    and the worker are two actors of one CPU each, one torch thread apiece like the
    colocated trainer's, so their matmuls add up in the same order; with different
    thread counts the last bits could differ and a sampled token flip, which is why both
    runs give every process one core (this machine's two)."""
    colocated, apart = ListSink(), ListSink()
    assert run(parse_spec(techniques.merged(TINY, {"resources": {"executor": executor}})), colocated) == "succeeded"
    assert run(parse_spec(split(1, executor=executor)), apart) == "succeeded"

    assert [techniques.untimed(m.values) for m in apart.of_kind("metrics")] == [
        techniques.untimed(m.values) for m in colocated.of_kind("metrics")
    ]
    assert [h.counts for h in apart.of_kind("length_histogram")] == [h.counts for h in colocated.of_kind("length_histogram")]
    assert generating_workers(colocated) == {"rollout-0"}  # the trainer's model, named as the colocated worker
    assert generating_workers(apart) == {"rollout-0"}
    # Split, the trainer waits while the worker generates, then pushes it the weights.
    trainer = {span.phase for span in apart.of_kind("span") if span.worker == "trainer" and span.step > 0}
    assert {"wait", "train", "sync"} <= trainer
    assert {"sync"} <= {span.phase for span in apart.of_kind("span") if span.worker == "rollout-0"}
    # The worker's pause-load-resume is part of the trainer's push (its sync phase), and
    # only a split run has workers to push to.
    steps = [m.values for m in apart.of_kind("metrics") if "reward/mean" in m.values]
    assert len(steps) == 2 and all(0 < v["timing_s/worker_sync"] <= v["timing_s/sync"] for v in steps)
    assert not any("timing_s/worker_sync" in m.values for m in colocated.of_kind("metrics"))


@pytest.mark.timeout(300)
def test_two_split_rollout_workers_both_generate_and_every_group_is_trained_once():
    """k = 2 in process: the plan is cut in two, one half per worker (each its own
    sampling stream, so the samples differ from the colocated run's); the sampler is
    the same, so each step trains exactly the colocated run's prompts, each with its
    n = 2 samples: none lost, none twice."""
    colocated, apart = ListSink(), ListSink()
    run(parse_spec(TINY), colocated)
    assert run(parse_spec(split(2)), apart) == "succeeded"

    assert generating_workers(apart) == {"rollout-0", "rollout-1"}
    for step in range(1, TINY["training"]["steps"] + 1):
        assert {span.worker for span in apart.of_kind("span") if span.step == step and span.phase == "generate"} == {
            "rollout-0",
            "rollout-1",
        }
    assert trained_prompts(apart) == trained_prompts(colocated)
    assert all(set(step.values()) == {2} and len(step) == 4 for step in trained_prompts(apart))
    steps = [m.values for m in apart.of_kind("metrics") if "reward/mean" in m.values]
    assert len(steps) == 2 and all(v["perf/generated_tokens"] > 0 for v in steps)


@pytest.mark.timeout(300)
def test_async_with_two_rollout_workers_trains_every_admitted_group_once():
    """η = 1, k = 2 in process, 3 steps of B = 4 groups: the bound admits (1 + v + 1)·4
    groups by version v, each to the less loaded worker; both workers generate, every
    step trains 4 groups of 2 samples, and no prompt is trained twice (the train pool
    holds each prompt once per pass)."""
    spec = techniques.merged(
        split(2),
        {"orchestration": {"mode": "async", "max_staleness": 1}, "training": {"steps": 3}},
    )
    sink = ListSink()
    assert run(parse_spec(spec), sink) == "succeeded"

    assert generating_workers(sink) == {"rollout-0", "rollout-1"}
    trained = trained_prompts(sink)
    assert len(trained) == 3 and all(sum(step.values()) == 8 and set(step.values()) == {2} for step in trained)
    every = [prompt for step in trained for prompt in step]
    assert len(every) == len(set(every)) == 12


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_split_run_resumes_bit_for_bit_with_each_workers_sampling_stream(tmp_path):
    """k = 2 in process: 4 steps straight equal 2 steps, a checkpoint and 2 more in a fresh
    recipe, metric for metric and state for state. The checkpoint's `rollout` part holds
    both workers' sampling streams (each seeded differently, each moved by its own half
    of every plan), so a resume that restored one stream to both, or none, would sample
    other tokens after step 2."""
    sink = techniques.resumed_equals_straight({"resources": {"rollout_workers": 2}}, tmp_path)
    assert generating_workers(sink) == {"rollout-0", "rollout-1"}
