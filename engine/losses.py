"""Advantages and policy-loss parts: the shared blocks every algorithm configures.

See docs/algorithms.md §0. Everything here is a plain function on tensors so a reader
can check it against the formulas, and so the trainer can micro-batch: `aggregate` takes
the *whole batch's* sequence and token counts, so summing its result over micro-batches
gives exactly the loss of the full batch.

Shapes: B sequences in a (micro-)batch, T token positions, V vocabulary entries.
`mask` [B, T] is 1.0 on generated (trained) tokens and 0.0 on prompt and padding.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import torch

from engine.algorithms import Advantage, Aggregation


def group_advantages(
    rewards: torch.Tensor, group_ids: Sequence[Hashable], estimator: Advantage, eps: float = 1e-6
) -> torch.Tensor:
    """Outcome advantages, one per sample, computed within groups of any size.

    rewards: [N] float; group_ids: N hashable keys (samples of one prompt share a key).
    Returns [N] float32.
    - 'group_norm' (GRPO):      (R − mean) / (std + eps), std unbiased (as torch and verl).
    - 'group_mean' (Dr.GRPO):   R − mean.
    - 'leave_one_out' (RLOO):   R − mean of the *other* samples of the group.
    A group of one sample has no peers to compare with; as in verl it gets baseline 0
    (and std 1 for 'group_norm'), so its advantage is its reward.
    """
    rewards = rewards.float()
    advantages = torch.zeros_like(rewards)
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(group_ids):
        members.setdefault(key, []).append(index)
    for indices in members.values():
        idx = torch.tensor(indices)
        group = rewards[idx]
        size = len(indices)
        if size == 1:
            mean, std = torch.zeros(()), torch.ones(())
        else:
            mean, std = group.mean(), group.std(unbiased=True)
        if estimator == "group_norm":
            advantages[idx] = (group - mean) / (std + eps)
        elif estimator == "group_mean":
            advantages[idx] = group - mean
        elif estimator == "leave_one_out":
            baseline = (group.sum() - group) / (size - 1) if size > 1 else torch.zeros_like(group)
            advantages[idx] = group - baseline
        else:
            raise ValueError(f"unknown advantage estimator {estimator!r}")
    return advantages


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T)[target] — the same convention as engine.generation.

    logits: [B, T, V]; targets: [B, T] long. Returns [B, T] float32.
    """
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Entropy of softmax(logits / T) at each position. logits [B, T, V] → [B, T]."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(logprobs.exp() * logprobs).sum(dim=-1)


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(π_θ ‖ π_ref): exp(−d) − 1 + d, d = log π_θ − log π_ref.

    Non-negative, unbiased (algorithms.md §0.3). Both [B, T] → [B, T].
    """
    d = logprobs - ref_logprobs
    return torch.exp(-d) - 1 + d


@dataclass
class PPOTerms:
    """Per-token pieces of the clipped surrogate, all [B, T]."""

    loss: torch.Tensor  # ℓ_t = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A)
    ratio: torch.Tensor  # r_t = π_θ / π_old
    clipped_low: torch.Tensor  # bool: A < 0 and r < 1 − ε_low (the lower clip binds)
    clipped_high: torch.Tensor  # bool: A > 0 and r > 1 + ε_high (the upper clip binds)
    out_of_region: torch.Tensor  # bool: r outside [1 − ε_low, 1 + ε_high], whatever A's sign


def ppo_clipped(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
) -> PPOTerms:
    """The PPO clipped token surrogate (algorithms.md §0.1), to be minimised.

    logprobs (with grad), old_logprobs: [B, T]; advantages: [B] (one per sequence,
    broadcast over its tokens) or [B, T]. "Clipped" here means the clipped branch is the
    one min() picks with a different value, i.e. the token's gradient is cut off.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * advantages
    with torch.no_grad():
        low = (advantages < 0) & (ratio < 1 - clip_eps_low)
        high = (advantages > 0) & (ratio > 1 + clip_eps_high)
        region = (ratio < 1 - clip_eps_low) | (ratio > 1 + clip_eps_high)
    return PPOTerms(
        loss=-torch.minimum(unclipped, clipped),
        ratio=ratio,
        clipped_low=low,
        clipped_high=high,
        out_of_region=region,
    )


def aggregate(
    values: torch.Tensor,
    mask: torch.Tensor,
    mode: Aggregation,
    num_seqs: int | None = None,
    num_tokens: int | float | None = None,
    norm_len: int | None = None,
) -> torch.Tensor:
    """Reduce per-token values [B, T] to a scalar (algorithms.md §0.2).

    With L_i = Σ_t m_it·v_it and n_i = Σ_t m_it:
    - 'token-mean':               Σ_i L_i / N_tokens
    - 'seq-mean-token-mean':      Σ_i (L_i / n_i) / N_seqs
    - 'seq-mean-token-sum':       Σ_i L_i / N_seqs
    - 'seq-mean-token-sum-norm':  Σ_i L_i / (N_seqs · norm_len), norm_len a constant for the
      run (the trainer passes max_new_tokens), which is verl's mean over sequences of
      L_i / max_len and Dr.GRPO's constant normaliser.
    N_seqs and N_tokens default to this batch's; pass the whole batch's counts when
    `values` is one micro-batch of it. A sequence with no trained token counts in N_seqs
    and adds 0.
    """
    mask = mask.to(values.dtype)
    per_seq = (values * mask).sum(dim=-1)  # L_i, [B]
    num_seqs = values.shape[0] if num_seqs is None else num_seqs
    if mode == "token-mean":
        num_tokens = mask.sum() if num_tokens is None else num_tokens
        return per_seq.sum() / max(float(num_tokens), 1.0)
    if mode == "seq-mean-token-mean":
        return (per_seq / mask.sum(dim=-1).clamp(min=1.0)).sum() / num_seqs
    if mode == "seq-mean-token-sum":
        return per_seq.sum() / num_seqs
    if mode == "seq-mean-token-sum-norm":
        if norm_len is None:
            raise ValueError("seq-mean-token-sum-norm needs norm_len (a constant such as max_new_tokens)")
        return per_seq.sum() / (num_seqs * norm_len)
    raise ValueError(f"unknown aggregation {mode!r}")
