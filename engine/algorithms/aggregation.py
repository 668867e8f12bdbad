"""Loss aggregation modes (algorithms.md §0.2), registered in engine.algorithms.AGGREGATIONS:
how per-token values [B, T] reduce to one scalar.

With L_i = Σ_t m_it·v_it and n_i = Σ_t m_it:
- 'token-mean':               Σ_i L_i / N_tokens
- 'seq-mean-token-mean':      Σ_i (L_i / n_i) / N_seqs
- 'seq-mean-token-sum':       Σ_i L_i / N_seqs
- 'seq-mean-token-sum-norm':  Σ_i L_i / (N_seqs · norm_len), norm_len a constant for the
  run (max_new_tokens), which is verl's mean over sequences of L_i / max_len and
  Dr.GRPO's constant normaliser.

N_seqs and N_tokens are the *whole (mini-)batch's* counts, so summing a mode's result
over micro-batches gives exactly the loss of the (mini-)batch. A sequence with no
trained token counts in N_seqs and adds 0.
"""

from dataclasses import dataclass

import torch

from engine.algorithms import AGGREGATIONS


@dataclass(frozen=True)
class Counts:
    """What a (mini-)batch's loss is normalised by."""

    num_seqs: int
    num_tokens: int | float
    norm_len: int | None = None  # seq-mean-token-sum-norm's constant


def token_mean(per_seq: torch.Tensor, mask: torch.Tensor, counts: Counts) -> torch.Tensor:
    return per_seq.sum() / max(float(counts.num_tokens), 1.0)


def seq_mean_token_mean(per_seq: torch.Tensor, mask: torch.Tensor, counts: Counts) -> torch.Tensor:
    return (per_seq / mask.sum(dim=-1).clamp(min=1.0)).sum() / counts.num_seqs


def seq_mean_token_sum(per_seq: torch.Tensor, mask: torch.Tensor, counts: Counts) -> torch.Tensor:
    return per_seq.sum() / counts.num_seqs


def seq_mean_token_sum_norm(per_seq: torch.Tensor, mask: torch.Tensor, counts: Counts) -> torch.Tensor:
    if counts.norm_len is None:
        raise ValueError("seq-mean-token-sum-norm needs norm_len (a constant such as max_new_tokens)")
    return per_seq.sum() / (counts.num_seqs * counts.norm_len)


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str, counts: Counts | None = None) -> torch.Tensor:
    """Reduce per-token `values` [B, T] under `mask` [B, T] by `mode`; `counts` default to
    this batch's own (pass the whole batch's when `values` is one micro-batch of it)."""
    if mode not in AGGREGATIONS:
        raise ValueError(AGGREGATIONS.unknown_message(mode))
    mask = mask.to(values.dtype)
    if counts is None:
        counts = Counts(num_seqs=values.shape[0], num_tokens=mask.sum())
    per_seq = (values * mask).sum(dim=-1)  # L_i, [B]
    return AGGREGATIONS.load(mode)(per_seq, mask, counts)
