"""Advantages, ratios, the clipped surrogate, aggregation, entropy and KL against hand-computed values."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from engine.algorithms.advantages import group_advantages
from engine.algorithms.aggregation import Counts, aggregate
from engine.algorithms.kl import kl_estimate
from engine.algorithms.policy_loss import entropy_from_logits, log_importance_ratio, ppo_clipped, token_logprobs

# Three groups of different sizes: a = [1, 0, 0, 1], b = [1] (alone), c = [0, 0].
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
GROUPS = ["a", "a", "a", "a", "b", "c", "c"]


def test_group_norm_is_grpo():
    advantages = group_advantages(REWARDS, GROUPS, "group_norm")
    # a: mean 0.5, unbiased std sqrt(4 · 0.25 / 3) = 0.57735 → ±0.5 / 0.57735 = ±0.86603.
    # b: a group of one has no peers: 0.
    # c: all equal → 0 / (0 + 1e-6) = 0.
    expected = torch.tensor([0.86603, -0.86603, -0.86603, 0.86603, 0.0, 0.0, 0.0])
    assert torch.allclose(advantages, expected, atol=1e-4)


def test_group_mean_is_dr_grpo():
    advantages = group_advantages(REWARDS, GROUPS, "group_mean")
    # a: R − 0.5; b: R − R = 0; c: 0.
    assert torch.allclose(advantages, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0, 0.0]))


def test_leave_one_out_is_rloo():
    advantages = group_advantages(REWARDS, GROUPS, "leave_one_out")
    # a, R = 1: the others are (0, 0, 1), mean 1/3 → 2/3; R = 0: others (1, 0, 1) → −2/3.
    # Same as G/(G−1)·(R − mean) = 4/3 · ±0.5. b has no "others": 0.
    assert torch.allclose(advantages, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 0.0, 0.0, 0.0]), atol=1e-6)


def test_groups_are_keyed_by_id_not_position():
    shuffled = [3, 5, 0, 6, 1, 4, 2]
    advantages = group_advantages(REWARDS[shuffled], [GROUPS[i] for i in shuffled], "group_norm")
    assert torch.allclose(advantages, group_advantages(REWARDS, GROUPS, "group_norm")[shuffled])


def test_an_unknown_estimator_is_refused_even_when_every_group_is_alone():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
        group_advantages(torch.tensor([1.0]), ["a"], "ppo")


binary_groups = st.lists(st.sampled_from([0.0, 1.0]), min_size=2, max_size=12)


@given(binary_groups)
def test_binary_rewards_follow_the_mean_only_identity(rewards):
    # algorithms.md §0.4: with accuracy p, R − mean is +(1 − p) when right, −p when
    # wrong, so Σ|A| = 2·G·p(1 − p).
    group = torch.tensor(rewards)
    size, p = len(rewards), sum(rewards) / len(rewards)
    advantages = group_advantages(group, [0] * size, "group_mean")
    assert torch.allclose(advantages, torch.where(group > 0, 1 - p, -p), atol=1e-6)
    assert advantages.abs().sum().item() == pytest.approx(2 * size * p * (1 - p), abs=1e-5)


@given(st.lists(st.floats(-5, 5, allow_nan=False), min_size=2, max_size=12))
def test_leave_one_out_is_the_group_mean_advantage_scaled_by_g_over_g_minus_one(rewards):
    group = torch.tensor(rewards)
    size = len(rewards)
    loo = group_advantages(group, [0] * size, "leave_one_out")
    assert torch.allclose(loo, size / (size - 1) * group_advantages(group, [0] * size, "group_mean"), atol=1e-4)


@given(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=2, max_size=12))
def test_group_norm_advantages_have_mean_zero_and_unit_unbiased_std(rewards):
    group = torch.tensor(rewards)
    advantages = group_advantages(group, [0] * len(rewards), "group_norm")
    assert abs(advantages.mean().item()) < 1e-5
    if group.std() > 0:
        assert advantages.std(unbiased=True).item() == pytest.approx(1.0, abs=1e-4)
    else:
        assert not advantages.any()


def test_ppo_clipped_surrogate_and_clip_statistics():
    ratios = torch.tensor([[1.5, 0.5, 1.0, 0.7]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, 2.0]])
    log_ratio = ratios.log().requires_grad_(True)

    terms = ppo_clipped(log_ratio, advantages, clip_eps_low=0.2, clip_eps_high=0.28)

    # r=1.5, A=+1: min(1.5, 1.28) = 1.28          → ℓ = −1.28, upper clip binds
    # r=0.5, A=−1: min(−0.5, 0.8·−1 = −0.8) = −0.8 → ℓ = +0.8,  lower clip binds
    # r=1.0, A=+1: 1                              → ℓ = −1
    # r=0.7, A=+2: min(1.4, 0.8·2 = 1.6) = 1.4     → ℓ = −1.4, outside the region, not clipped
    assert torch.allclose(terms.loss, torch.tensor([[-1.28, 0.8, -1.0, -1.4]]))
    assert terms.clipped_high.tolist() == [[True, False, False, False]]
    assert terms.clipped_low.tolist() == [[False, True, False, False]]
    assert terms.out_of_region.tolist() == [[True, True, False, True]]
    assert not terms.clipped_dual.any()
    # Where the clipped branch wins, the token gets no gradient; elsewhere dℓ/dlog r = −A·r.
    terms.loss.sum().backward()
    assert torch.allclose(log_ratio.grad, torch.tensor([[0.0, 0.0, -1.0, -1.4]]))


def test_dual_clip_caps_the_loss_of_a_huge_ratio_on_a_bad_token():
    ratios = torch.tensor([[3.0, 1.5, 3.0]])
    advantages = torch.tensor([[-1.0, -2.0, 1.0]])
    log_ratio = ratios.log().requires_grad_(True)

    terms = ppo_clipped(log_ratio, advantages, 0.2, 0.2, dual_clip_c=2.0)

    # r=3,   A=−1: ℓ = max(3·1, 1.2·1) = 3 > c·|A| = 2 → capped at 2, no gradient
    # r=1.5, A=−2: ℓ = max(1.5·2, 1.2·2) = 3 < c·|A| = 4 → unchanged, dℓ/dlog r = −A·r = 3
    # r=3,   A=+1: the upper clip binds, ℓ = −1.2; the dual clip only touches A < 0
    assert torch.allclose(terms.loss, torch.tensor([[2.0, 3.0, -1.2]]))
    assert terms.clipped_dual.tolist() == [[True, False, False]]
    terms.loss.sum().backward()
    assert torch.allclose(log_ratio.grad, torch.tensor([[0.0, 3.0, 0.0]]))


def test_ppo_broadcasts_one_advantage_per_sequence():
    terms = ppo_clipped(torch.zeros(2, 3), torch.tensor([2.0, -1.0]), 0.2, 0.2)
    assert torch.allclose(terms.loss, torch.tensor([[-2.0] * 3, [1.0] * 3]))


# Token log-ratios (log π_θ − log π_old) of three responses; the mask hides padding.
LOG_RATIOS = torch.tensor([[0.1, 0.3, 0.0], [-0.4, 0.0, 0.0], [0.05, -0.05, 0.0]])
RATIO_MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
OLD = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5], [-0.2, -0.7, -1.2]])


def test_token_level_ratio_is_per_token():
    logprobs = OLD + LOG_RATIOS
    assert torch.allclose(log_importance_ratio(logprobs, OLD, RATIO_MASK, "token"), LOG_RATIOS)


def test_sequence_level_ratio_is_the_length_normalised_sequence_ratio():
    logprobs = OLD + LOG_RATIOS
    log_s = log_importance_ratio(logprobs, OLD, RATIO_MASK, "sequence")
    # s_i = exp(mean over its tokens): (0.1 + 0.3)/2 = 0.2; −0.4/1; (0.05 − 0.05 + 0)/3 = 0.
    expected = torch.tensor([0.2, -0.4, 0.0])[:, None].expand(3, 3)
    assert torch.allclose(log_s, expected, atol=1e-6)


def test_gspo_token_form_has_the_gradient_of_the_sequence_objective():
    advantages = torch.tensor([1.0, -1.0, 2.0])
    eps_low, eps_high = 0.2, 0.2

    # GSPO-token, as the trainer computes it: per-token terms, seq-mean-token-mean.
    token_form = (OLD + LOG_RATIOS).requires_grad_(True)
    terms = ppo_clipped(log_importance_ratio(token_form, OLD, RATIO_MASK, "sequence"), advantages, eps_low, eps_high)
    aggregate(terms.loss, RATIO_MASK, "seq-mean-token-mean").backward()

    # The paper's objective, written directly on s_i = exp(mean_t log r_t).
    direct = (OLD + LOG_RATIOS).requires_grad_(True)
    s = torch.exp(((direct - OLD) * RATIO_MASK).sum(-1) / RATIO_MASK.sum(-1))
    objective = torch.minimum(s * advantages, s.clamp(1 - eps_low, 1 + eps_high) * advantages).mean()
    (-objective).backward()

    assert torch.allclose(token_form.grad, direct.grad, atol=1e-6)
    # By hand: s = (1.2214, 0.6703, 1.0). Sequence 1 (A = +1) is above 1 + ε and sequence 2
    # (A = −1) below 1 − ε: both clipped, no gradient. Sequence 3 (s = 1, A = 2, 3 tokens)
    # gets −A·s/|y|/B = −2/3/3 on each token.
    assert torch.allclose(token_form.grad[:2], torch.zeros(2, 3))
    assert torch.allclose(token_form.grad[2], torch.full((3,), -2 / 9))
    assert terms.clipped_high[0, 0] and terms.clipped_low[1, 0]


VALUES = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 99.0]])
MASK = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # the 99 is padding


@pytest.mark.parametrize(
    "mode, expected",
    [
        ("token-mean", 15 / 5),  # L = (6, 9), n = (3, 2): 15 tokens' sum over 5 tokens
        ("seq-mean-token-mean", (6 / 3 + 9 / 2) / 2),  # = 3.25
        ("seq-mean-token-sum", 15 / 2),
        ("seq-mean-token-sum-norm", 15 / (2 * 10)),  # constant normaliser: 2 sequences × 10
    ],
)
def test_aggregation_modes(mode, expected):
    assert aggregate(VALUES, MASK, mode, Counts(num_seqs=2, num_tokens=MASK.sum(), norm_len=10)).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_micro_batches_sum_to_the_full_batch(mode):
    whole = aggregate(VALUES, MASK, mode, Counts(num_seqs=2, num_tokens=MASK.sum(), norm_len=10))
    parts = sum(
        aggregate(VALUES[i : i + 1], MASK[i : i + 1], mode, Counts(num_seqs=2, num_tokens=5, norm_len=10)) for i in range(2)
    )
    assert parts.item() == pytest.approx(whole.item())


def test_token_logprobs_and_entropy():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])  # softmax = (0.25, 0.75)
    assert token_logprobs(logits, torch.tensor([[1]])).item() == pytest.approx(math.log(0.75))
    # H = −(0.25 ln 0.25 + 0.75 ln 0.75) = 0.34657 + 0.21576
    assert entropy_from_logits(logits).item() == pytest.approx(0.56233, abs=1e-5)
    # Temperature 2 halves the logits: softmax(0, ln 3 / 2) = (1, √3) / (1 + √3).
    assert token_logprobs(logits, torch.tensor([[0]]), temperature=2.0).item() == pytest.approx(
        math.log(1 / (1 + math.sqrt(3)))
    )


@pytest.mark.parametrize(
    "estimator, expected",
    [
        # d = log π_θ − log π_ref = ln 0.5 − ln 0.25 = ln 2 = 0.69315 for the first token;
        # the second token has the same log-prob under both (d = 0); the third d = −15.
        ("k1", [0.69315, 0.0, -15.0]),  # d
        ("k2", [0.24023, 0.0, 112.5]),  # d² / 2
        ("k3", [0.19315, 0.0, math.exp(15) - 16]),  # exp(−d) − 1 + d: 0.5 − 1 + 0.69315
        ("low_var_kl", [0.19315, 0.0, 10.0]),  # k3 clamped to [−10, 10]
    ],
)
def test_kl_estimators(estimator, expected):
    logprobs = torch.tensor([math.log(0.5), -1.0, -16.0], dtype=torch.float64)
    reference = torch.tensor([math.log(0.25), -1.0, -1.0], dtype=torch.float64)
    kl = kl_estimate(logprobs, reference, estimator)
    assert torch.allclose(kl, torch.tensor(expected, dtype=torch.float64), rtol=1e-4, atol=1e-5)
