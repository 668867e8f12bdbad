"""Picking the next token from logits, and the log-prob every backend reports for it.

Log-prob convention (the trainer recomputes log-probs the same way, see
`engine.algorithms.policy_loss.token_logprobs`): for a sampled token y_t,

    logprob_t = log_softmax(logits_t / T)[y_t]

with T the sampling temperature (T = 1 for greedy decoding). Top-p truncation is *not*
folded in: with top_p < 1 the numbers are the temperature-scaled distribution before the
nucleus cut (as verl and vLLM report them), which equals the sampling distribution
exactly when top_p = 1, the default.
"""

import torch


def sample_next(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick one token per row.

    logits: [B, V] (any float dtype). Returns (tokens [B] long, logprobs [B] float32)
    where logprobs follow the module's convention.
    """
    logits = logits.float()
    if temperature == 0:
        tokens = logits.argmax(dim=-1)
        return tokens, torch.log_softmax(logits, dim=-1).gather(-1, tokens[:, None])[:, 0]
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    probs = logprobs.exp()
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p: a token stays when the
        # mass strictly before it is below top_p (so the most likely token always stays).
        keep_sorted = (sorted_probs.cumsum(dim=-1) - sorted_probs) < top_p
        keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
        probs = probs * keep
    tokens = draw(probs, generator)
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


def draw(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row with probability proportional to `weights` [B, V] (≥ 0).

    Inverse-CDF sampling: a uniform draw in [0, row total) and the first index whose
    running sum exceeds it (`right=True`, so zero-weight tokens are never picked). Exact
    like torch.multinomial, and an order of magnitude faster on CPU, where multinomial
    took most of a small model's decode step.
    """
    cumulative = weights.cumsum(dim=-1)
    uniform = torch.rand((weights.shape[0], 1), generator=generator, device=weights.device, dtype=cumulative.dtype)
    picks = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True)
    return picks[:, 0].clamp(max=weights.shape[-1] - 1)


def sample_rows(
    logits: torch.Tensor, settings: list[tuple[float, float]], generator: torch.Generator | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`sample_next` where each row has its own (temperature, top_p): rows that share
    settings are sampled together (in a batch of one request's samples, that is all of
    them), in order of first appearance so the random stream is used reproducibly."""
    groups: dict[tuple[float, float], list[int]] = {}
    for row, setting in enumerate(settings):
        groups.setdefault(setting, []).append(row)
    if len(groups) == 1:
        ((temperature, top_p),) = groups
        return sample_next(logits, temperature, top_p, generator)
    tokens = torch.empty(len(settings), dtype=torch.long, device=logits.device)
    logprobs = torch.empty(len(settings), dtype=torch.float32, device=logits.device)
    for (temperature, top_p), rows in groups.items():
        index = torch.tensor(rows, device=logits.device)
        tokens[index], logprobs[index] = sample_next(logits[index], temperature, top_p, generator)
    return tokens, logprobs
