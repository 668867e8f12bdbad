"""Reward shapers (engine.algorithms.REWARD_SHAPERS): each adds to every rollout's
`shaping`, which the advantages read as reward + shaping, and returns its metrics.

- `overlong`: DAPO's soft overlong punishment for using the last part of the length
  budget (algorithms.md §0.5, DAPO).
- `kl_penalty`: the KL to the reference in the reward (PPO/RLOO style, algorithms.md
  §0.3): −β·Σ_t KL_t(π_old ‖ π_ref) per rollout, after the recipe attached π_ref.
"""

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from engine.algorithms.kl import kl_estimate


def overlong_penalty(length: int, max_len: int, buffer_len: int, factor: float) -> float:
    """DAPO's soft overlong punishment, added to the task reward (verl's form):

        0                                        if length ≤ max_len − buffer_len
        −(length − (max_len − buffer_len)) / buffer_len · factor   in the buffer

    so a response that uses the whole budget (max_len, i.e. truncated) gets −factor.
    buffer_len = 0 turns shaping off.
    """
    if buffer_len <= 0:
        return 0.0
    expected = max_len - buffer_len
    return min(-(length - expected) / buffer_len * factor, 0.0)


def overlong_buffer_len(max_new_tokens: int, fraction: float) -> int:
    """The buffer in tokens: `fraction` of the length budget, rounded down."""
    return math.floor(max_new_tokens * fraction)


class OverlongShaping:
    def __init__(self, spec: Any):
        self.max_len = spec.rollout.max_new_tokens
        self.buffer_len = overlong_buffer_len(self.max_len, spec.algorithm.overlong_buffer_fraction)
        self.factor = spec.algorithm.overlong_penalty_factor

    def __call__(self, rollouts: Sequence[Any]) -> dict[str, float]:
        if self.buffer_len == 0:  # a budget too short for a buffer of a whole token
            return {}
        penalties = []
        for item in rollouts:
            penalty = overlong_penalty(item.length, self.max_len, self.buffer_len, self.factor)
            item.shaping += penalty
            penalties.append(penalty)
        lengths = np.array([item.length for item in rollouts])
        return {
            "overlong/penalty_mean": float(np.mean(penalties)),
            "overlong/buffer_ratio": float(np.mean((lengths > self.max_len - self.buffer_len) & (lengths < self.max_len))),
            "overlong/truncated_ratio": float(np.mean([item.status == "truncated" for item in rollouts])),
        }


class KLPenalty:
    def __init__(self, spec: Any):
        self.coef = spec.algorithm.kl_coef
        self.estimator = spec.algorithm.kl_estimator

    def __call__(self, rollouts: Sequence[Any]) -> dict[str, float]:
        for item in rollouts:
            item.shaping -= self.coef * float(kl_estimate(item.policy_logprobs(), item.ref_logprobs, self.estimator).sum())
        return {}
