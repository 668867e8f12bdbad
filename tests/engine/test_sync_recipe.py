"""The synchronous recipe's steps and evaluations: what they report, that they are
reproducible, and how each algorithm's parts (reference model, KL placement,
mini-batches, micro-batches, dynamic sampling) are wired."""

import pytest
import torch

from engine.algorithms.advantages import group_advantages
from engine.algorithms.shaping import KLPenalty
from engine.recipes.sync import SyncRecipe
from engine.rollout.types import Rollout
from engine.spec import parse_spec
from engine.telemetry import Timeline, length_bin_edges
from engine.training.batching import micro_batches, split_evenly

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
    "rollout/response_length/p99", "rollout/response_length/max", "rollout/clip_ratio", "rollout/aborted_ratio",
    "rollout/tail_ratio",
    "timing_s/gen", "timing_s/reward", "timing_s/old_log_prob", "timing_s/ref", "timing_s/adv",
    "timing_s/update_actor", "timing_s/sync", "timing_s/step",
    "actor/pg_loss", "actor/entropy", "actor/grad_norm", "actor/ppo_kl",
    "clip_ratio/low_mean", "clip_ratio/high_mean", "clip_ratio/region_mean",
    "difficulty/frac_all_correct", "difficulty/frac_all_wrong", "difficulty/frac_mixed",
    "perf/tokens_per_sec_per_gpu", "perf/throughput", "rollout/idle_ratio", "trainer/idle_ratio",
    "curriculum/difficulty_quantile", "curriculum/admission_rate",
}  # fmt: skip


def spec(**overrides):
    return parse_spec({**SMALL, **overrides})


def untimed(values: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in values.items() if "tim" not in k and "perf" not in k and "idle" not in k}


@pytest.fixture(scope="module")
def recipe_and_events():
    recipe = SyncRecipe(spec())
    return recipe, recipe.step()


def test_a_step_reports_metrics_histogram_prompts_difficulty_samples_and_spans(recipe_and_events):
    recipe, events = recipe_and_events
    kinds = [event.kind for event in events]
    assert kinds[:5] == ["metrics", "length_histogram", "prompt_results", "difficulty", "samples"]
    assert set(kinds[5:]) == {"span"}

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
    assert recipe.training.version == 1  # one optimiser step so far

    histogram = events[1]
    assert histogram.bin_edges == length_bin_edges(80) and sum(histogram.counts) == 16  # 4 prompts × 4

    results = events[2].results
    assert events[2].split == "train" and sum(r.attempts for r in results) == 16
    assert all(0 <= r.successes <= r.attempts and r.difficulty >= 1 for r in results)

    # Sampling, then training: the collector's worker generates and verifies, the trainer
    # trains and pushes the weights once the generation is over.
    spans = [event for event in events if event.kind == "span"]
    busy = lambda worker: [s.phase for s in spans if s.worker == worker and s.phase != "idle"]  # noqa: E731
    assert busy("rollout-0") == ["generate", "verify"] and busy("trainer") == ["train", "sync"]
    generate = next(s for s in spans if s.phase == "generate")
    train = next(s for s in spans if s.phase == "train")
    assert all(s.start <= s.end for s in spans) and generate.end <= train.start


def test_bins_are_fixed_for_the_run_and_catch_a_truncated_response():
    edges = length_bin_edges(256)
    assert edges == list(range(0, 257, 8))  # 32 bins of 8 tokens; 256 falls in the last
    assert length_bin_edges(80)[-1] >= 80


def test_an_evaluation_reports_held_out_accuracy_and_is_repeatable(recipe_and_events):
    recipe, _ = recipe_and_events
    metrics, results, samples, *spans = recipe.evaluate(step=1)
    assert metrics.step == 1 and 0 <= metrics.values["val/acc/mean@1"] <= 1
    assert results.split == "test" and sum(r.attempts for r in results.results) == 16
    assert samples.kind == "samples" and samples.split == "test" and samples.samples
    assert [(s.worker, s.phase) for s in spans] == [("rollout-0", "eval")]
    # Same weights, same dice: the same score (differences between evaluations are the policy's).
    assert recipe.evaluate(step=1)[0].values["val/acc/mean@1"] == metrics.values["val/acc/mean@1"]


def test_the_same_seed_gives_the_same_run():
    first, second = SyncRecipe(spec(seed=3)), SyncRecipe(spec(seed=3))
    for _ in range(2):
        assert untimed(first.step()[0].values) == untimed(second.step()[0].values)


def scored_batch(recipe: SyncRecipe) -> list[Rollout]:
    """4 prompts × 4 samples from the recipe's collector, scored, with reference log-probs
    when the algorithm has a KL term and advantages that are never all zero (a batch this
    small may be all-equal)."""
    plan = recipe.sampler.next(1, 4)
    groups = recipe.collector.collect(plan, first_group=0, timeline=Timeline(1), generator=torch.Generator().manual_seed(0))
    rollouts = [item for group in groups for item in group.rollouts]
    if recipe.training.reference is not None:
        for item, logprobs in zip(rollouts, recipe.training.logprobs(rollouts, reference=True)):
            item.ref_logprobs = logprobs
    rewards = torch.tensor([r.reward for r in rollouts]) + torch.arange(16) / 16
    advantages = group_advantages(rewards, [r.group for r in rollouts], recipe.spec.algorithm.advantage)
    for item, advantage in zip(rollouts, advantages.tolist()):
        item.advantage = advantage
    return rollouts


def gradient(recipe: SyncRecipe, rollouts: list[Rollout]) -> list[torch.Tensor]:
    """The gradient of one optimiser step on `rollouts` as one mini-batch."""
    training = recipe.training
    training.optimizer_step(rollouts, recipe.loss, training.begin_batch())
    return [p.grad.clone() for p in training.model.parameters()]


@pytest.mark.parametrize("algorithm", ["grpo", "dr_grpo", "gspo"])  # KL in the loss; constant norm; sequence ratio
def test_micro_batching_does_not_change_the_gradient(algorithm):
    recipe = SyncRecipe(spec(algorithm={"name": algorithm}))
    for group in recipe.training.optimizer.param_groups:  # keep the weights, look at the gradients
        group["lr"] = 0.0
    rollouts = scored_batch(recipe)

    whole = gradient(recipe, rollouts)
    recipe.training.spec = spec(algorithm={"name": algorithm}, training={"steps": 2, "micro_batch_tokens": 64})
    assert len(micro_batches(rollouts, 64)) > 4
    parts = gradient(recipe, rollouts)

    assert any(bool(g.abs().sum() > 0) for g in whole)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(whole, parts))


def test_micro_batches_respect_the_token_budget():
    recipe = SyncRecipe(spec())
    groups = recipe.collector.collect(recipe.sampler.next(1, 4), first_group=0, timeline=Timeline(1))
    rollouts = [item for group in groups for item in group.rollouts]
    for batch in micro_batches(rollouts, 200):
        width = max(len(r.prompt_ids) + len(r.token_ids) for r in batch)
        assert len(batch) == 1 or width * len(batch) <= 200
    assert sum(len(b) for b in micro_batches(rollouts, 200)) == 16


def test_kl_in_the_loss_keeps_a_frozen_copy_of_the_starting_policy():
    recipe = SyncRecipe(spec(algorithm={"name": "grpo", "kl_coef": 0.1}))
    first = recipe.step()[0].values
    # The reference is the starting policy, so the first step's KL is (almost) zero.
    reference = recipe.training.reference
    assert reference is not None and 0 <= first["kl"] < 1e-4
    assert not any(p.requires_grad for p in reference.parameters())
    second = recipe.step()[0].values
    assert second["kl"] > first["kl"]  # the policy moved, the reference did not


def test_the_reference_can_be_a_named_model():
    recipe = SyncRecipe(spec(model={"path": "builtin:arith-tiny", "reference": "builtin:arith-tiny"}))
    reference, model = recipe.training.reference, recipe.training.model
    assert reference is not model
    assert all(torch.equal(a, b) for a, b in zip(reference.parameters(), model.parameters()))


def test_without_a_kl_term_there_is_no_reference_and_no_kl_metric():
    recipe = SyncRecipe(spec(algorithm={"name": "gspo"}))
    assert recipe.training.reference is None and "kl" not in recipe.step()[0].values


def test_kl_in_the_reward_lowers_each_reward_by_beta_times_the_sequence_kl():
    recipe = SyncRecipe(spec(algorithm={"name": "rloo"}))  # k1 in the reward, β = 0.05
    [shaper] = recipe.shapers
    assert isinstance(shaper, KLPenalty)
    for group in recipe.training.optimizer.param_groups:
        group["lr"] = 1e-3  # move the policy away from the reference in one step
    recipe.step()
    rollouts = scored_batch(recipe)
    shaper(rollouts)

    fresh = SyncRecipe(spec(algorithm={"name": "rloo"}))  # the starting weights: the reference
    for item, start_logprobs in zip(rollouts, fresh.training.logprobs(rollouts)):
        assert torch.allclose(item.ref_logprobs, start_logprobs, atol=1e-5)
        sampler = torch.tensor(item.logprobs)
        # k1 per token is log π_old − log π_ref; the reward moves by −β Σ_t k1_t.
        assert item.shaping == pytest.approx(-0.05 * float((sampler - start_logprobs).sum()), abs=1e-5)
    assert any(abs(item.shaping) > 1e-4 for item in rollouts)


def test_mini_batches_and_epochs_train_a_moving_policy_against_the_old_one():
    # 8 samples per prompt: with 4, this seed's first batch has no mixed group, so no gradient.
    rollout = {"prompts_per_step": 4, "n": 8, "max_new_tokens": 80}
    one_update = SyncRecipe(spec(algorithm={"name": "gspo"}, rollout=rollout)).step()[0].values
    several = SyncRecipe(
        spec(algorithm={"name": "gspo"}, rollout=rollout, training={"steps": 2, "mini_batches": 2, "epochs": 2})
    )
    values = several.step()[0].values
    assert values["advantages/abs_mean"] > 0
    assert several.training.version == 4  # 2 epochs × 2 mini-batches
    # One optimiser step on fresh samples: ratio 1, nothing clipped, no old-policy pass.
    assert one_update["clip_ratio/region_mean"] == 0 and one_update["timing_s/old_log_prob"] < 1e-3
    # Four: π_old is recomputed once, then every step after the first sees a moved policy,
    # and GSPO's tiny clip range (3e-4 / 4e-4) binds on some sequences.
    assert values["timing_s/old_log_prob"] > 0
    assert values["actor/ppo_kl"] != 0 and values["clip_ratio/region_mean"] > 0


def test_recomputed_old_log_probs_match_the_samplers():
    recipe = SyncRecipe(spec(training={"steps": 2, "mini_batches": 2}))
    rollouts = scored_batch(recipe)
    for item, logprobs in zip(rollouts, recipe.training.logprobs(rollouts)):
        assert torch.allclose(logprobs, torch.tensor(item.logprobs), atol=1e-4)


def test_split_evenly_keeps_order_and_sizes_within_one():
    assert split_evenly(list(range(7)), 3) == [[0, 1, 2], [3, 4], [5, 6]]
    assert split_evenly(list(range(4)), 1) == [[0, 1, 2, 3]]


def test_dynamic_sampling_trains_on_exactly_the_batch_of_mixed_groups():
    recipe = SyncRecipe(spec(algorithm={"name": "dapo"}))
    events = recipe.step()
    values = events[0].values
    rounds = values["dapo/gen_rounds"]
    assert 1 <= rounds <= 10 and 0 < values["dapo/keep_rate"] <= 1
    generating = [s.phase for s in events if s.kind == "span" and s.worker == "rollout-0" and s.phase != "idle"]
    assert generating == ["generate", "verify"] * int(rounds)
    # Every generated rollout is reported (the policy's accuracy and lengths) ...
    generated = sum(r.attempts for r in events[2].results)
    assert generated >= 16 and generated % 4 == 0 and sum(events[1].counts) == generated
    # ... and overlong shaping reports its share of the batch.
    assert {"overlong/penalty_mean", "overlong/buffer_ratio", "overlong/truncated_ratio"} <= set(values)
