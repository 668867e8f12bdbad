"""Rollouts as the tensors a forward pass reads."""

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.rollout.types import Rollout


@dataclass
class Collated:
    """One micro-batch as tensors on the model's device."""

    input_ids: torch.Tensor  # [B, L] prompt + response, right-padded with the pad id
    mask: torch.Tensor  # [B, L − 1] 1.0 where position t predicts a generated token
    old_logprobs: torch.Tensor  # [B, L − 1] π_old, aligned with mask
    behaviour_logprobs: torch.Tensor  # [B, L − 1] what the generation backend sampled with (per token's version)
    ref_logprobs: torch.Tensor | None  # [B, L − 1] π_ref, when a KL term is on
    advantages: torch.Tensor  # [B]


def pad(rollouts: Sequence[Rollout], pad_id: int, device: torch.device) -> torch.Tensor:
    """Right-padded prompt + response rows, [B, L], on `device`."""
    width = max(len(r.prompt_ids) + len(r.token_ids) for r in rollouts)
    input_ids = torch.full((len(rollouts), width), pad_id, dtype=torch.long)
    for row, item in enumerate(rollouts):
        input_ids[row, : len(item.prompt_ids) + len(item.token_ids)] = torch.tensor(item.prompt_ids + item.token_ids)
    return input_ids.to(device)


def collate(rollouts: Sequence[Rollout], pad_id: int, device: torch.device, with_reference: bool) -> Collated:
    input_ids = pad(rollouts, pad_id, device)
    shape = (len(rollouts), input_ids.shape[1] - 1)
    mask, old, behaviour = torch.zeros(shape), torch.zeros(shape), torch.zeros(shape)
    ref = torch.zeros(shape) if with_reference else None
    for row, item in enumerate(rollouts):
        span = item.response_positions
        # APRIL's mask-stale-prefix leaves a resumed sample's first tokens out of the loss.
        mask[row, span.start + item.trained_from : span.stop] = 1.0
        old[row, span] = item.policy_logprobs()
        behaviour[row, span] = torch.tensor(item.logprobs)
        if ref is not None:
            ref[row, span] = item.ref_logprobs
    return Collated(
        input_ids=input_ids,
        mask=mask.to(device),
        old_logprobs=old.to(device),
        behaviour_logprobs=behaviour.to(device),
        ref_logprobs=ref.to(device) if ref is not None else None,
        advantages=torch.tensor([item.advantage for item in rollouts], device=device),
    )
