"""Trainer steps and evaluations: what they report, that they are reproducible, and how each
algorithm's parts (reference model, KL placement, mini-batches, dynamic sampling) are wired."""

import pytest
import torch

from engine.spec import parse_spec
from engine.generation import SamplingParams
from engine.losses import group_advantages
from engine.trainer import Rollout, Trainer, length_bin_edges, micro_batches, split_evenly

SMALL = {
    "dataset": {"eval_size": 16},
    "rollout": {"prompts_per_step": 4, "n": 4, "max_new_tokens": 80},
    "training": {"steps": 2},
    # One thread: batches this small gain nothing from two, and on a shared machine two
    # threads per process oversubscribe the cores (OpenMP spin-waits then cost ~10×).
    "resources": {"executor": "inprocess", "cpus": 1},
}

# The names docs/metrics.md promises for every step.
STEP_METRICS = {
    "reward/mean", "reward/std", "acc/mean",
    "rollout/response_length/mean", "rollout/response_length/p50", "rollout/response_length/p90",
    "rollout/response_length/p99", "rollout/response_length/max", "rollout/clip_ratio", "rollout/tail_ratio",
    "timing_s/gen", "timing_s/reward", "timing_s/old_log_prob", "timing_s/ref", "timing_s/adv",
    "timing_s/update_actor", "timing_s/step",
    "actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/ppo_kl",
    "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
    "difficulty/frac_all_correct", "difficulty/frac_all_wrong", "difficulty/frac_mixed",
    "perf/tokens_per_sec_per_gpu", "perf/throughput", "rollout/idle_ratio", "trainer/idle_ratio",
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


def scored_batch(trainer: Trainer) -> list[Rollout]:
    """4 prompts × 4 samples, scored, with reference log-probs when the algorithm has a KL
    term and advantages that are never all zero (a batch this small may be all-equal)."""
    rollouts, texts = trainer.sample(
        trainer.next_prompts(4), SamplingParams(n=4, max_new_tokens=80), torch.Generator().manual_seed(0)
    )
    trainer.score(rollouts, texts)
    if trainer.reference is not None:
        trainer._attach_reference(rollouts)
    rewards = torch.tensor([r.reward for r in rollouts]) + torch.arange(16) / 16
    advantages = group_advantages(rewards, [r.group for r in rollouts], trainer.algorithm.advantage)
    for item, advantage in zip(rollouts, advantages.tolist()):
        item.advantage = advantage
    return rollouts


@pytest.mark.parametrize("algorithm", ["grpo", "dr_grpo", "gspo"])  # KL in the loss; constant norm; sequence ratio
def test_micro_batching_does_not_change_the_gradient(algorithm):
    trainer = Trainer(spec(algorithm={"name": algorithm}))
    for group in trainer.optimizer.param_groups:  # keep the weights, look at the gradients
        group["lr"] = 0.0
    rollouts = scored_batch(trainer)

    trainer.update(rollouts)
    whole = [p.grad.clone() for p in trainer.model.parameters()]
    trainer.spec = spec(algorithm={"name": algorithm}, training={"steps": 2, "micro_batch_tokens": 64})
    assert len(micro_batches(rollouts, 64)) > 4
    trainer.update(rollouts)
    parts = [p.grad for p in trainer.model.parameters()]
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, parts))


def test_micro_batches_respect_the_token_budget():
    trainer = Trainer(spec())
    rollouts, _ = trainer.sample(trainer.next_prompts(4), SamplingParams(n=4, max_new_tokens=80), torch.Generator())
    for batch in micro_batches(rollouts, 200):
        width = max(len(r.completion.prompt_ids) + len(r.completion.token_ids) for r in batch)
        assert len(batch) == 1 or width * len(batch) <= 200
    assert sum(len(b) for b in micro_batches(rollouts, 200)) == 16


def test_kl_in_the_loss_keeps_a_frozen_copy_of_the_starting_policy():
    trainer = Trainer(spec(algorithm={"name": "grpo", "kl_coef": 0.1}))
    first = trainer.step()[0].values
    # The reference is the starting policy, so the first step's KL is (almost) zero.
    assert trainer.reference is not None and 0 <= first["kl"] < 1e-4
    assert not any(p.requires_grad for p in trainer.reference.parameters())
    second = trainer.step()[0].values
    assert second["kl"] > first["kl"]  # the policy moved, the reference did not


def test_the_reference_can_be_a_named_model():
    trainer = Trainer(spec(model={"path": "builtin:arith-tiny", "reference": "builtin:arith-tiny"}))
    assert trainer.reference is not trainer.model
    assert all(torch.equal(a, b) for a, b in zip(trainer.reference.parameters(), trainer.model.parameters()))


def test_without_a_kl_term_there_is_no_reference_and_no_kl_metric():
    trainer = Trainer(spec(algorithm={"name": "gspo"}))
    assert trainer.reference is None and "kl" not in trainer.step()[0].values


def test_kl_in_the_reward_lowers_each_reward_by_beta_times_the_sequence_kl():
    trainer = Trainer(spec(algorithm={"name": "rloo"}))  # k1 in the reward, β = 0.05
    for group in trainer.optimizer.param_groups:
        group["lr"] = 1e-3  # move the policy away from the reference in one step
    trainer.step()
    rollouts = scored_batch(trainer)
    fresh = Trainer(spec(algorithm={"name": "rloo"}))  # the starting weights: the reference
    for item, start_logprobs in zip(rollouts, fresh._response_logprobs(fresh.model, rollouts)):
        assert torch.allclose(item.ref_logprobs, start_logprobs, atol=1e-5)
        sampler = torch.tensor(item.completion.logprobs)
        assert item.shaping == pytest.approx(-0.05 * float((sampler - start_logprobs).sum()), abs=1e-5)
    assert any(abs(item.shaping) > 1e-4 for item in rollouts)


def test_mini_batches_and_epochs_train_a_moving_policy_against_the_old_one():
    # 8 samples per prompt: with 4, this seed's first batch has no mixed group, so no gradient.
    rollout = {"prompts_per_step": 4, "n": 8, "max_new_tokens": 80}
    one_update = Trainer(spec(algorithm={"name": "gspo"}, rollout=rollout)).step()[0].values
    several = Trainer(
        spec(algorithm={"name": "gspo"}, rollout=rollout, training={"steps": 2, "mini_batches": 2, "epochs": 2})
    )
    values = several.step()[0].values
    assert values["advantages/abs_mean"] > 0
    # One optimiser step on fresh samples: ratio 1, nothing clipped, no old-policy pass.
    assert one_update["clip_ratio/region_mean"] == 0 and one_update["timing_s/old_log_prob"] < 1e-3
    # Four: π_old is recomputed once, then every step after the first sees a moved policy,
    # and GSPO's tiny clip range (3e-4 / 4e-4) binds on some sequences.
    assert values["timing_s/old_log_prob"] > 0
    assert values["actor/ppo_kl"] != 0 and values["clip_ratio/region_mean"] > 0


def test_recomputed_old_log_probs_match_the_samplers():
    trainer = Trainer(spec(training={"steps": 2, "mini_batches": 2}))
    rollouts = scored_batch(trainer)
    for item, logprobs in zip(rollouts, trainer._response_logprobs(trainer.model, rollouts)):
        assert torch.allclose(logprobs, torch.tensor(item.completion.logprobs), atol=1e-4)


def test_split_evenly_keeps_order_and_sizes_within_one():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly(list(range(4)), 1) == [[0, 1, 2, 3]]


def test_dynamic_sampling_trains_on_exactly_the_batch_of_mixed_groups():
    trainer = Trainer(spec(algorithm={"name": "dapo"}))
    events = trainer.step()
    values = events[0].values
    rounds = values["dapo/gen_rounds"]
    assert 1 <= rounds <= 10 and 0 < values["dapo/keep_rate"] <= 1
    assert [s.phase for s in events if s.kind == "span"] == ["generate", "reward"] * int(rounds) + ["train"]
    # Every generated rollout is reported (the policy's accuracy and lengths) ...
    generated = sum(r.attempts for r in events[2].results)
    assert generated >= 16 and generated % 4 == 0 and sum(events[1].counts) == generated
    # ... and overlong shaping reports its share of the batch.
    assert {"overlong/penalty_mean", "overlong/buffer_ratio", "overlong/truncated_ratio"} <= set(values)


def test_dapo_trains_on_whole_distinct_groups_informative_ones_first(monkeypatch):
    trainer = Trainer(spec(algorithm={"name": "dapo"}))
    trained: list[Rollout] = []
    real_update = trainer.update
    monkeypatch.setattr(trainer, "update", lambda batch: trained.extend(batch) or real_update(batch))
    events = trainer.step()
    values = events[0].values

    groups: dict[int, list[float]] = {}
    for item in trained:
        groups.setdefault(item.group, []).append(item.reward)
    assert len(groups) == 4 and all(len(rewards) == 4 for rewards in groups.values())
    generated_groups = sum(r.attempts for r in events[2].results) // 4
    kept = round(values["dapo/keep_rate"] * generated_groups)
    assert sum(max(rewards) != min(rewards) for rewards in groups.values()) == min(4, kept)
