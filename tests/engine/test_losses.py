"""Advantages, the clipped surrogate, aggregation, entropy and KL against hand-computed values."""

import math

import pytest
import torch

from engine.losses import aggregate, entropy_from_logits, group_advantages, kl_k3, ppo_clipped, token_logprobs

# Three groups of different sizes: a = [1, 0, 0, 1], b = [1] (alone), c = [0, 0].
REWARDS = torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0])
GROUPS = ["a", "a", "a", "a", "b", "c", "c"]


def test_group_norm_is_grpo():
    advantages = group_advantages(REWARDS, GROUPS, "group_norm")
    # a: mean 0.5, unbiased std sqrt(4 · 0.25 / 3) = 0.57735 → ±0.5 / 0.57735 = ±0.86603.
    # b: a group of one gets mean 0 and std 1 → 1 / (1 + 1e-6).
    # c: all equal → 0 / (0 + 1e-6) = 0.
    expected = torch.tensor([0.86603, -0.86603, -0.86603, 0.86603, 1.0, 0.0, 0.0])
    assert torch.allclose(advantages, expected, atol=1e-4)


def test_group_mean_is_dr_grpo():
    advantages = group_advantages(REWARDS, GROUPS, "group_mean")
    # a: R − 0.5; b: R − 0 (no peers); c: 0.
    assert torch.allclose(advantages, torch.tensor([0.5, -0.5, -0.5, 0.5, 1.0, 0.0, 0.0]))


def test_leave_one_out_is_rloo():
    advantages = group_advantages(REWARDS, GROUPS, "leave_one_out")
    # a, R = 1: the others are (0, 0, 1), mean 1/3 → 2/3; R = 0: others (1, 0, 1) → −2/3.
    # Same as G/(G−1)·(R − mean) = 4/3 · ±0.5.
    assert torch.allclose(advantages, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3, 1.0, 0.0, 0.0]), atol=1e-6)


def test_groups_are_keyed_by_id_not_position():
    shuffled = [3, 5, 0, 6, 1, 4, 2]
    advantages = group_advantages(REWARDS[shuffled], [GROUPS[i] for i in shuffled], "group_norm")
    assert torch.allclose(advantages, group_advantages(REWARDS, GROUPS, "group_norm")[shuffled])


def test_ppo_clipped_surrogate_and_clip_statistics():
    ratios = torch.tensor([[1.5, 0.5, 1.0, 0.7]])
    advantages = torch.tensor([[1.0, -1.0, 1.0, 2.0]])
    old = torch.zeros(1, 4)
    logprobs = ratios.log().requires_grad_(True)

    terms = ppo_clipped(logprobs, old, advantages, clip_eps_low=0.2, clip_eps_high=0.28)

    # r=1.5, A=+1: min(1.5, 1.28) = 1.28          → ℓ = −1.28, upper clip binds
    # r=0.5, A=−1: min(−0.5, 0.8·−1 = −0.8) = −0.8 → ℓ = +0.8,  lower clip binds
    # r=1.0, A=+1: 1                              → ℓ = −1
    # r=0.7, A=+2: min(1.4, 0.8·2 = 1.6) = 1.4     → ℓ = −1.4, outside the region, not clipped
    assert torch.allclose(terms.loss, torch.tensor([[-1.28, 0.8, -1.0, -1.4]]))
    assert terms.clipped_high.tolist() == [[True, False, False, False]]
    assert terms.clipped_low.tolist() == [[False, True, False, False]]
    assert terms.out_of_region.tolist() == [[True, True, False, True]]
    # Where the clipped branch wins, the token gets no gradient; elsewhere dℓ/dlogπ = −A·r.
    terms.loss.sum().backward()
    assert torch.allclose(logprobs.grad, torch.tensor([[0.0, 0.0, -1.0, -1.4]]))


def test_ppo_broadcasts_one_advantage_per_sequence():
    logprobs = torch.zeros(2, 3)
    terms = ppo_clipped(logprobs, logprobs, torch.tensor([2.0, -1.0]), 0.2, 0.2)
    assert torch.allclose(terms.loss, torch.tensor([[-2.0] * 3, [1.0] * 3]))


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
    assert aggregate(VALUES, MASK, mode, norm_len=10).item() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"])
def test_micro_batches_sum_to_the_full_batch(mode):
    whole = aggregate(VALUES, MASK, mode, norm_len=10)
    parts = sum(
        aggregate(VALUES[i : i + 1], MASK[i : i + 1], mode, num_seqs=2, num_tokens=5, norm_len=10) for i in range(2)
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


def test_k3_kl():
    # d = log 0.5 − log 0.25 = ln 2: exp(−d) − 1 + d = 0.5 − 1 + 0.69315 = 0.19315.
    kl = kl_k3(torch.tensor([math.log(0.5), -1.0]), torch.tensor([math.log(0.25), -1.0]))
    assert torch.allclose(kl, torch.tensor([0.19315, 0.0]), atol=1e-5)
