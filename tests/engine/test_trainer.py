"""One GRPO step and one evaluation: what they report, and that they are reproducible."""

import pytest
import torch

from engine.spec import parse_spec
from engine.trainer import Trainer, length_bin_edges, micro_batches

SMALL = {
    "dataset": {"eval_size": 16},
    "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 80},
    "training": {"steps": 2},
    "resources": {"executor": "inprocess"},
}

# The names docs/metrics.md promises for every step.
STEP_METRICS = {
    "reward/mean", "reward/std", "acc/mean",
    "rollout/response_length/mean", "rollout/response_length/p50", "rollout/response_length/p90",
    "rollout/response_length/p99", "rollout/response_length/max", "rollout/clip_ratio", "rollout/tail_ratio",
    "timing_s/gen", "timing_s/reward", "timing_s/update_actor", "timing_s/step",
    "actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/ppo_kl",
    "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
    "difficulty/frac_all_correct", "difficulty/frac_all_wrong", "difficulty/frac_mixed",
    "perf/tokens_per_sec", "trainer/idle_ratio",
}  # fmt: skip


def spec(**overrides):
    return parse_spec({**SMALL, **overrides})


@pytest.fixture(scope="module")
def trainer_and_events():
    trainer = Trainer(spec())
    return trainer, trainer.step()


def test_a_step_reports_metrics_histogram_prompts_and_spans(trainer_and_events):
    trainer, events = trainer_and_events
    kinds = [event.kind for event in events]
    assert kinds[:3] == ["metrics", "length_histogram", "prompt_results"]

    metrics = events[0]
    assert metrics.step == 1 and STEP_METRICS <= set(metrics.values)
    values = metrics.values
    assert 0 <= values["reward/mean"] <= 1 and values["acc/mean"] == values["reward/mean"]
    assert values["rollout/response_length/p50"] <= values["rollout/response_length/p99"] <= values["rollout/response_length/max"]
    fractions = values["difficulty/frac_all_correct"] + values["difficulty/frac_all_wrong"] + values["difficulty/frac_mixed"]
    assert fractions == pytest.approx(1.0)
    # One update per batch of fresh samples: the policy that sampled is the one trained,
    # so the importance ratio is 1 up to float error and nothing is clipped.
    assert abs(values["actor/ppo_kl"]) < 1e-4 and values["clip_ratio/region_mean"] == 0

    histogram = events[1]
    assert histogram.bin_edges == length_bin_edges(80) and sum(histogram.counts) == 16

    results = events[2].results
    assert events[2].split == "train" and sum(r.attempts for r in results) == 16
    assert all(0 <= r.successes <= r.attempts and r.difficulty >= 1 for r in results)

    spans = [event for event in events if event.kind == "span"]
    assert [s.phase for s in spans] == ["generate", "reward", "train"]
    assert all(s.start <= s.end for s in spans) and spans[0].end <= spans[2].start
    assert spans[0].worker == "trainer:cpu"


def test_bins_are_fixed_for_the_run_and_catch_a_truncated_response():
    edges = length_bin_edges(256)
    assert edges == list(range(0, 257, 8))  # 32 bins of 8 tokens; 256 falls in the last
    assert length_bin_edges(80)[-1] >= 80


def test_an_evaluation_reports_held_out_accuracy_and_is_repeatable(trainer_and_events):
    trainer, _ = trainer_and_events
    metrics, results, span = trainer.evaluate(step=1)
    assert metrics.step == 1 and 0 <= metrics.values["val/acc/mean@1"] <= 1
    assert results.split == "test" and sum(r.attempts for r in results.results) == 16
    assert span.phase == "eval"
    # Same weights, same dice: the same score (differences between evaluations are the policy's).
    assert trainer.evaluate(step=1)[0].values["val/acc/mean@1"] == metrics.values["val/acc/mean@1"]


def test_the_same_seed_gives_the_same_run():
    first, second = Trainer(spec(seed=3)), Trainer(spec(seed=3))
    for _ in range(2):
        a, b = first.step()[0].values, second.step()[0].values
        assert {k: v for k, v in a.items() if "tim" not in k and "perf" not in k and "idle" not in k} == {
            k: v for k, v in b.items() if "tim" not in k and "perf" not in k and "idle" not in k
        }


def test_micro_batching_does_not_change_the_gradient():
    trainer = Trainer(spec())
    trainer.scheduler.base_lrs = [0.0]  # keep the weights, look at the gradients
    for group in trainer.optimizer.param_groups:
        group["lr"] = 0.0
    problems = trainer.next_prompts(4)
    from engine.generation import SamplingParams
    from engine.losses import group_advantages

    rollouts, texts = trainer.sample(problems, SamplingParams(n=4, max_new_tokens=80), torch.Generator().manual_seed(0))
    for item, text in zip(rollouts, texts):
        item.reward = trainer.task.score(item.problem, text)
    rewards = torch.tensor([r.reward for r in rollouts])
    # Rewards alone may all be equal in so small a batch; any advantages exercise the loss.
    advantages = group_advantages(rewards + torch.arange(16) / 16, [r.group for r in rollouts], "group_norm")
    for item, advantage in zip(rollouts, advantages.tolist()):
        item.advantage = advantage

    trainer.update(rollouts)
    whole = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.spec = spec(training={"steps": 2, "micro_batch_tokens": 64})
    assert len(micro_batches(rollouts, 64)) > 4
    trainer.update(rollouts)
    parts = [p.grad for p in trainer.model.parameters()]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, parts))


def test_micro_batches_respect_the_token_budget():
    trainer = Trainer(spec())
    from engine.generation import SamplingParams

    rollouts, _ = trainer.sample(trainer.next_prompts(4), SamplingParams(n=4, max_new_tokens=80), torch.Generator())
    for batch in micro_batches(rollouts, 200):
        width = max(len(r.completion.prompt_ids) + len(r.completion.token_ids) for r in batch)
        assert len(batch) == 1 or width * len(batch) <= 200
    assert sum(len(b) for b in micro_batches(rollouts, 200)) == 16


def test_a_kl_coefficient_adds_a_frozen_reference():
    trainer = Trainer(spec(algorithm={"name": "grpo", "kl_coef": 0.1}))
    values = trainer.step()[0].values
    # The reference is the starting policy, so the first step's KL is (almost) zero.
    assert trainer.reference is not None and 0 <= values["kl"] < 1e-4
    assert not any(p.requires_grad for p in trainer.reference.parameters())
