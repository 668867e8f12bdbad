"""Advantage estimators on outcome rewards (algorithms.md §0.4), one registered function
each (engine.algorithms.ADVANTAGE_ESTIMATORS), and the loop that applies one per group.

An estimator maps the rewards of one group, [G] float32 with G ≥ 2, to their advantages
[G]; every generated token of a sample gets its sample's advantage.
"""

from collections.abc import Hashable, Sequence

import torch

from engine.algorithms import ADVANTAGE_ESTIMATORS

EPS = 1e-6


def group_norm(rewards: torch.Tensor) -> torch.Tensor:
    """GRPO: (R − mean) / (std + eps), std unbiased (as torch and verl)."""
    return (rewards - rewards.mean()) / (rewards.std(unbiased=True) + EPS)


def group_mean(rewards: torch.Tensor) -> torch.Tensor:
    """Dr.GRPO: R − mean."""
    return rewards - rewards.mean()


def leave_one_out(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: R − mean of the *other* samples of the group."""
    return rewards - (rewards.sum() - rewards) / (len(rewards) - 1)


def group_advantages(rewards: torch.Tensor, group_ids: Sequence[Hashable], estimator: str) -> torch.Tensor:
    """Outcome advantages, one per sample, computed within groups of any size.

    rewards: [N] float; group_ids: N hashable keys (samples of one prompt share a key).
    Returns [N] float32. A group of one sample has no peers to compare with, so its
    advantage is 0: that is what R − mean gives, and the unbiased std and the
    leave-one-out mean are undefined for it. (verl instead uses baseline 0 and std 1,
    i.e. A = R: a signal no other sample in the batch is measured against.)
    """
    if estimator not in ADVANTAGE_ESTIMATORS:
        raise ValueError(ADVANTAGE_ESTIMATORS.unknown_message(estimator))
    estimate = ADVANTAGE_ESTIMATORS.load(estimator)
    rewards = rewards.float()
    advantages = torch.zeros_like(rewards)
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(group_ids):
        members.setdefault(key, []).append(index)
    for indices in members.values():
        if len(indices) == 1:
            continue
        idx = torch.tensor(indices)
        advantages[idx] = estimate(rewards[idx])
    return advantages
