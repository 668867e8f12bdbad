"""Advantages and policy-loss parts: the shared blocks every algorithm configures.

The formulas are in the team brief (algorithms.md §0); docs/algorithms.md says which
algorithm uses which. Everything here is a plain function on tensors so a reader can
check it against the formulas, and so the trainer can micro-batch: `aggregate` takes the
*whole (mini-)batch's* sequence and token counts, so summing its result over
micro-batches gives exactly the loss of the (mini-)batch.

Shapes: B sequences in a (micro-)batch, T token positions, V vocabulary entries.
`mask` [B, T] is 1.0 on generated (trained) tokens and 0.0 on prompt and padding.
"""

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import get_args

import torch

from engine.algorithms import Advantage, Aggregation, KLEstimator, RatioLevel


def group_advantages(
    rewards: torch.Tensor, group_ids: Sequence[Hashable], estimator: Advantage, eps: float = 1e-6
) -> torch.Tensor:
    """Outcome advantages, one per sample, computed within groups of any size.

    rewards: [N] float; group_ids: N hashable keys (samples of one prompt share a key).
    Returns [N] float32.
    - 'group_norm' (GRPO):      (R − mean) / (std + eps), std unbiased (as torch and verl).
    - 'group_mean' (Dr.GRPO):   R − mean.
    - 'leave_one_out' (RLOO):   R − mean of the *other* samples of the group.
    A group of one sample has no peers to compare with, so its advantage is 0: that is
    what R − mean gives, and the unbiased std and the leave-one-out mean are undefined
    for it. (verl instead uses baseline 0 and std 1, i.e. A = R: a signal no other
    sample in the batch is measured against.)
    """
    if estimator not in get_args(Advantage):
        raise ValueError(f"unknown advantage estimator {estimator!r}")
    rewards = rewards.float()
    advantages = torch.zeros_like(rewards)
    members: dict[Hashable, list[int]] = {}
    for index, key in enumerate(group_ids):
        members.setdefault(key, []).append(index)
    for indices in members.values():
        size = len(indices)
        if size == 1:
            continue
        idx = torch.tensor(indices)
        group = rewards[idx]
        if estimator == "group_norm":
            advantages[idx] = (group - group.mean()) / (group.std(unbiased=True) + eps)
        elif estimator == "group_mean":
            advantages[idx] = group - group.mean()
        else:  # leave_one_out
            advantages[idx] = group - (group.sum() - group) / (size - 1)
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


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: KLEstimator) -> torch.Tensor:
    """Per-token estimate of KL(π_θ ‖ π_ref) from the sampled tokens' log-probs
    (algorithms.md §0.3), with d = log π_θ − log π_ref:

    - 'k1':  d                      unbiased, can be negative per token
    - 'k2':  d² / 2                 biased, low variance
    - 'k3':  exp(−d) − 1 + d        unbiased and non-negative (GRPO's)
    - 'low_var_kl': k3 clamped to [−10, 10] (verl, slime)
    Both [B, T] → [B, T].
    """
    d = logprobs - ref_logprobs
    if estimator == "k1":
        return d
    if estimator == "k2":
        return d.square() / 2
    k3 = torch.exp(-d) - 1 + d
    if estimator == "k3":
        return k3
    if estimator == "low_var_kl":
        return k3.clamp(-10.0, 10.0)
    raise ValueError(f"unknown KL estimator {estimator!r}")


def masked_sequence_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over each row's masked tokens: [B, T] → [B] (0 for a row with none)."""
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp(min=1.0)


def log_importance_ratio(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor, level: RatioLevel
) -> torch.Tensor:
    """log r for every token, [B, T].

    - 'token' (PPO, GRPO): log r_t = log π_θ(y_t) − log π_old(y_t).
    - 'sequence' (GSPO, in its GSPO-token form as verl and slime write it):
          log s_t = log π_θ(y_t) − sg[log π_θ(y_t)] + sg[mean_t(log π_θ − log π_old)]
      Its value is the same for every token of a sequence, the length-normalised
      sequence ratio log s_i = (1/|y_i|) Σ_t log r_t; its gradient is that of log π_θ(y_t),
      so with a per-sequence mean over tokens the loss's gradient is exactly that of the
      paper's sequence-level objective (tested).
    """
    token_log_ratio = logprobs - old_logprobs
    if level == "token":
        return token_log_ratio
    if level == "sequence":
        sequence_log_ratio = masked_sequence_mean(token_log_ratio, mask).detach()
        return logprobs - logprobs.detach() + sequence_log_ratio[:, None]
    raise ValueError(f"unknown ratio level {level!r}")


@dataclass
class PPOTerms:
    """Per-token pieces of the clipped surrogate, all [B, T]."""

    loss: torch.Tensor  # ℓ_t = −min(r·A, clip(r, 1−ε_low, 1+ε_high)·A), dual-clipped if asked
    ratio: torch.Tensor  # r_t
    clipped_low: torch.Tensor  # bool: A < 0 and r < 1 − ε_low (the lower clip binds)
    clipped_high: torch.Tensor  # bool: A > 0 and r > 1 + ε_high (the upper clip binds)
    clipped_dual: torch.Tensor  # bool: A < 0 and the dual clip's cap c·|A| binds
    out_of_region: torch.Tensor  # bool: r outside [1 − ε_low, 1 + ε_high], whatever A's sign


def ppo_clipped(
    log_ratio: torch.Tensor,
    advantages: torch.Tensor,
    clip_eps_low: float,
    clip_eps_high: float,
    dual_clip_c: float = 0.0,
) -> PPOTerms:
    """The PPO clipped token surrogate (algorithms.md §0.1), to be minimised.

    log_ratio (with grad): [B, T], from `log_importance_ratio`; advantages: [B] (one per
    sequence, broadcast over its tokens) or [B, T]. "Clipped" means the branch min()
    picks is the clipped one with a different value, i.e. the token's gradient is cut
    off. With dual_clip_c = c > 1, a token with A < 0 has its loss capped at c·|A|
    (verl's clip_ratio_c): a huge ratio on a bad token can no longer blow the loss up.
    """
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    ratio = torch.exp(log_ratio)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1 - clip_eps_low, 1 + clip_eps_high) * advantages
    loss = -torch.minimum(unclipped, clipped)
    dual = torch.zeros_like(loss, dtype=torch.bool)
    if dual_clip_c:
        cap = -dual_clip_c * advantages  # = c·|A| where A < 0
        dual = (advantages < 0) & (loss > cap)
        loss = torch.where(dual, cap.expand_as(loss), loss)
    with torch.no_grad():
        low = (advantages < 0) & (ratio < 1 - clip_eps_low)
        high = (advantages > 0) & (ratio > 1 + clip_eps_high)
        region = (ratio < 1 - clip_eps_low) | (ratio > 1 + clip_eps_high)
    return PPOTerms(
        loss=loss, ratio=ratio, clipped_low=low, clipped_high=high, clipped_dual=dual.detach(), out_of_region=region
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
