"""Per-token estimators of KL(π_θ ‖ π_ref) from the sampled tokens' log-probs
(algorithms.md §0.3), registered in engine.algorithms.KL_ESTIMATORS. Each takes
d = log π_θ − log π_ref, [B, T], and returns [B, T].
"""

import torch

from engine.algorithms import KL_ESTIMATORS


def k1(d: torch.Tensor) -> torch.Tensor:
    """d: unbiased, can be negative per token."""
    return d


def k2(d: torch.Tensor) -> torch.Tensor:
    """d² / 2: biased, low variance."""
    return d.square() / 2


def k3(d: torch.Tensor) -> torch.Tensor:
    """exp(−d) − 1 + d: unbiased and non-negative (GRPO's)."""
    return torch.exp(-d) - 1 + d


def low_var_kl(d: torch.Tensor) -> torch.Tensor:
    """k3 clamped to [−10, 10] (verl, slime)."""
    return k3(d).clamp(-10.0, 10.0)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str) -> torch.Tensor:
    """The named estimator on d = logprobs − ref_logprobs, both [B, T] → [B, T]."""
    if estimator not in KL_ESTIMATORS:
        raise ValueError(KL_ESTIMATORS.unknown_message(estimator))
    return KL_ESTIMATORS.load(estimator)(logprobs - ref_logprobs)
