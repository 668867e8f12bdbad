"""How a rollout batch is cut for the update (torch-free): mini-batches of whole prompt
groups, and micro-batches under a padded-token budget."""

from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def split_evenly(items: Sequence[T], parts: int) -> list[list[T]]:
    """`parts` consecutive slices of `items` whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    slices, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        slices.append(list(items[start:end]))
        start = end
    return slices


def micro_batches(rollouts: Sequence[Any], max_tokens: int) -> list[list[Any]]:
    """Split rollouts (engine.rollout.types.Rollout), sorted by total length, into batches
    whose padded size (rows × longest row) stays within max_tokens (a longer single row
    goes alone)."""
    ordered = sorted(rollouts, key=lambda r: len(r.prompt_ids) + len(r.token_ids))
    widths = [len(r.prompt_ids) + len(r.token_ids) for r in ordered]
    return pack_by_token_budget(ordered, widths, max_tokens)


def pack_by_token_budget(items: Sequence[T], widths: Sequence[int], max_tokens: int) -> list[list[T]]:
    """Cut `items`, already sorted by ascending width, into consecutive batches whose
    padded size (rows × widest row) stays within max_tokens; an item wider than the
    budget goes alone. The sort is the caller's, so it decides what "width" orders by."""
    batches: list[list[T]] = [[]]
    for item, width in zip(items, widths, strict=True):
        if batches[-1] and width * (len(batches[-1]) + 1) > max_tokens:
            batches.append([])
        batches[-1].append(item)
    return [batch for batch in batches if batch]
