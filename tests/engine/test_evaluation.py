"""Held-out evaluation: the unbiased pass@k estimator, and the val/ metrics a run reports."""

from itertools import combinations
from math import comb

import pytest
import torch

from engine.evaluation import mean_pass_at_k, pass_at_k
from engine.spec import parse_spec


def brute_force_pass_at_k(samples: int, correct: int, k: int) -> float:
    """The share of all k-subsets of the samples holding at least one correct sample."""
    outcomes = [True] * correct + [False] * (samples - correct)
    subsets = list(combinations(outcomes, k))
    return sum(any(subset) for subset in subsets) / len(subsets)


def test_pass_at_k_matches_hand_computed_values():
    assert pass_at_k(4, 0, 1) == 0.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(0.5)  # 1 − C(3,2)/C(4,2) = 1 − 3/6
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)  # 1 − C(3,2)/C(5,2) = 1 − 3/10
    assert pass_at_k(10, 3, 4) == pytest.approx(1 - 35 / 210)  # C(7,4) = 35, C(10,4) = 210
    assert pass_at_k(4, 3, 2) == 1.0  # fewer wrong samples than k: every pair holds a right one


@pytest.mark.parametrize("samples", [1, 2, 5, 8])
def test_pass_at_k_equals_the_share_of_k_subsets_with_a_correct_sample(samples):
    for correct in range(samples + 1):
        for k in range(1, samples + 1):
            assert pass_at_k(samples, correct, k) == pytest.approx(brute_force_pass_at_k(samples, correct, k), abs=1e-12)


def test_pass_at_k_stays_finite_where_the_binomials_overflow_a_float():
    samples, correct, k = 2000, 3, 500
    exact = 1 - comb(samples - correct, k) / comb(samples, k)  # Python's ints and true division
    assert comb(samples, k) > 10**308
    assert pass_at_k(samples, correct, k) == pytest.approx(exact, rel=1e-12)


def test_pass_at_1_is_the_mean_accuracy_and_prompts_are_averaged():
    assert mean_pass_at_k([(4, 1), (4, 3)], 1) == pytest.approx(0.5)
    assert mean_pass_at_k([(4, 1), (4, 0)], 4) == pytest.approx(0.5)


def test_impossible_counts_are_refused():
    with pytest.raises(ValueError, match="k ≤ samples"):
        pass_at_k(2, 1, 3)
    with pytest.raises(ValueError):
        pass_at_k(2, 3, 1)


def test_the_spec_needs_as_many_samples_as_the_largest_k():
    training = parse_spec({"training": {"eval_samples": 4, "eval_pass_k": [4, 1, 4]}}).training
    assert training.eval_pass_k == [1, 4]
    with pytest.raises(ValueError, match="eval_samples ≥ 8"):
        parse_spec({"training": {"eval_samples": 4, "eval_pass_k": [8]}})
    with pytest.raises(ValueError, match="at least 1"):
        parse_spec({"training": {"eval_pass_k": [0]}})


def test_an_evaluation_reports_pass_at_k_from_several_samples_per_prompt():
    from engine.recipes.sync import SyncRecipe

    spec = parse_spec(
        {
            "dataset": {"eval_size": 12},
            "rollout": {"max_new_tokens": 48},
            "training": {"eval_samples": 4, "eval_pass_k": [1, 2, 4]},
            "resources": {"executor": "inprocess", "cpus": 1},
            "model": {"device": "cpu"},
        }
    )
    recipe = SyncRecipe(spec)
    # Short chains repeat among held-out prompts, and PromptResults merges a repeated
    # prompt's samples; with distinct prompts its counts are exactly the per-prompt ones.
    recipe.eval_problems = list({problem.id: problem for problem in recipe.eval_problems}.values())
    training_stream = recipe.collector.generator.get_state()

    metrics, prompt_results, samples, *spans = recipe.evaluate(step=0)

    values = metrics.values
    counts = [(result.attempts, result.successes) for result in prompt_results.results]
    assert [attempts for attempts, _ in counts] == [4] * len(recipe.eval_problems)
    for k in (1, 2, 4):
        assert values[f"val/pass@{k}"] == pytest.approx(mean_pass_at_k(counts, k))
    assert values["val/pass@1"] == pytest.approx(values["val/acc/mean@1"])
    # The warm-started model solves some held-out chains and misses others.
    assert 0 < values["val/pass@1"] < values["val/pass@2"] < values["val/pass@4"] <= 1
    # Its samples are kept for drill-down, at most telemetry.samples_per_prompt (4) a prompt,
    # sampled by the weights of version 0 (no update yet).
    assert samples.split == "test" and len(samples.samples) == 4 * len(recipe.eval_problems)
    assert {(s.first_version, s.last_version) for s in samples.samples} == {(0, 0)}
    assert [(span.worker, span.phase) for span in spans] == [("rollout-0", "eval")]
    # Evaluating draws from its own stream: the training stream has not moved ...
    assert torch.equal(recipe.collector.generator.get_state(), training_stream)
    # ... and re-evaluating the same weights draws the same samples.
    assert recipe.evaluate(step=0)[0].values["val/pass@4"] == values["val/pass@4"]
