"""Batched sampling with a KV cache: the CPU rollout backend.

One call takes prompts (text), samples `n` completions of each, and returns token ids,
the log-prob of every sampled token and why each completion ended. Prompts are left
padded so every row's next token sits in the last column; position ids count real
tokens only, so a padded row sees the same positions as it would alone.

Log-prob convention (the trainer recomputes log-probs the same way, see
`engine.losses.token_logprobs`): for a sampled token y_t,

    logprob_t = log_softmax(logits_t / T)[y_t]

with T the sampling temperature (T = 1 for greedy decoding). Top-p truncation is *not*
folded in: with top_p < 1 the numbers are the temperature-scaled distribution before the
nucleus cut (as verl and vLLM report them), which equals the sampling distribution
exactly when top_p = 1, the default. Continuous batching and vLLM come later behind the
same `generate` signature.
"""

import inspect
from dataclasses import dataclass
from typing import Literal

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # completions per prompt
    temperature: float = 1.0  # 0 → greedy (argmax) decoding
    top_p: float = 1.0
    max_new_tokens: int = 256
    max_batch: int = 256  # rows (prompts × n) decoded together; bounds KV-cache memory


@dataclass
class Completion:
    prompt_index: int  # position of the prompt in the `prompts` argument
    prompt_ids: list[int]  # the prompt's tokens, no padding
    token_ids: list[int]  # generated tokens; ends with EOS when finish_reason == "stop"
    logprobs: list[float]  # one per generated token, see the module docstring
    finish_reason: FinishReason


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
    tokens = torch.multinomial(probs, 1, generator=generator)[:, 0]
    return tokens, logprobs.gather(-1, tokens[:, None])[:, 0]


def _cache_argument(model: PreTrainedModel) -> str:
    """The keyword a model's forward takes its KV cache under: transformers 5 renamed
    `past_key_values` to `cache` (the old name still works there, with a warning)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


@torch.no_grad()
def _generate_chunk(
    model: PreTrainedModel,
    prompt_ids: list[list[int]],
    params: SamplingParams,
    eos_id: int,
    pad_id: int,
    generator: torch.Generator | None,
    use_cache: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Decode one batch of already repeated prompts.

    Returns tokens [B, T] (pad after a row stops), logprobs [B, T] (0 after a row stops)
    and lengths [B] (generated tokens per row, EOS included), T ≤ max_new_tokens.

    Rows that have stopped are dropped from the batch (and from the KV cache) once they
    make up an eighth of it: on a long-tailed task most rows stop early, and the few long
    ones then decode as a small, cheap batch instead of dragging finished rows along.
    """
    device = model.device
    cache_argument = _cache_argument(model)
    batch = len(prompt_ids)
    width = max(len(ids) for ids in prompt_ids)
    input_ids = torch.full((batch, width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, width), dtype=torch.long)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
    # Real tokens count from 0; pads get position 0 (they are masked anyway).
    position_ids = (attention_mask.cumsum(dim=-1) - 1).clamp(min=0)

    tokens = torch.full((batch, params.max_new_tokens), pad_id, dtype=torch.long)
    logprobs = torch.zeros((batch, params.max_new_tokens), dtype=torch.float32)
    lengths = torch.full((batch,), params.max_new_tokens, dtype=torch.long)

    rows = torch.arange(batch)  # output row of each row still in the decoding batch
    finished = torch.zeros(batch, dtype=torch.bool, device=device)  # stopped, not yet dropped
    cache = None
    step_ids, step_positions = input_ids, position_ids
    steps_done = 0
    for t in range(params.max_new_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=attention_mask,
            position_ids=step_positions,
            use_cache=use_cache,
            **{cache_argument: cache},
        )
        cache = getattr(out, cache_argument, None) if use_cache else None
        next_tokens, next_logprobs = sample_next(out.logits[:, -1, :], params.temperature, params.top_p, generator)
        next_tokens = next_tokens.masked_fill(finished, pad_id)
        live = (~finished).cpu()
        tokens[rows[live], t] = next_tokens.cpu()[live]
        logprobs[rows[live], t] = next_logprobs.cpu()[live]
        steps_done = t + 1

        just_stopped = ~finished & (next_tokens == eos_id)
        lengths[rows[just_stopped.cpu()]] = t + 1
        finished |= just_stopped
        if bool(finished.all()) or t + 1 == params.max_new_tokens:
            break

        next_positions = position_ids[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, torch.ones_like(next_positions)], dim=-1)
        position_ids = torch.cat([position_ids, next_positions], dim=-1)
        input_ids = torch.cat([input_ids, next_tokens[:, None]], dim=-1)
        if int(finished.sum()) * 8 >= len(rows):
            keep = (~finished).nonzero()[:, 0]
            rows, finished = rows[keep.cpu()], finished[keep]
            attention_mask, position_ids = attention_mask[keep], position_ids[keep]
            input_ids, next_positions = input_ids[keep], next_positions[keep]
            if cache is not None:
                cache.batch_select_indices(keep)
        if use_cache:
            step_ids, step_positions = input_ids[:, -1:], next_positions
        else:
            step_ids, step_positions = input_ids, position_ids
    return tokens[:, :steps_done], logprobs[:, :steps_done], lengths


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str] | list[list[int]],
    params: SamplingParams,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> list[Completion]:
    """Sample `params.n` completions for each prompt (text, or token ids).

    Returns len(prompts) × n completions, prompt by prompt (those of prompt i are at
    i·n … i·n + n − 1). Prompts are decoded in batches of at most `params.max_batch`
    rows (all n samples of a prompt in the same batch), taken in order of prompt length
    so that batches need little padding. `use_cache=False` recomputes the whole
    sequence at every step (tests only).
    """
    was_training = model.training
    model.eval()
    # Text is encoded with the tokenizer's special tokens; the trainer passes token ids
    # already formatted by engine.models.encode_prompts (chat template or not).
    encoded: list[list[int]] = (
        tokenizer(prompts, add_special_tokens=True)["input_ids"] if isinstance(prompts[0], str) else prompts
    )
    order = sorted(range(len(prompts)), key=lambda index: len(encoded[index]))
    per_chunk = max(1, params.max_batch // params.n)
    results: list[Completion | None] = [None] * (len(prompts) * params.n)
    try:
        for start in range(0, len(order), per_chunk):
            chunk = order[start : start + per_chunk]
            rows = [index for index in chunk for _ in range(params.n)]
            tokens, logprobs, lengths = _generate_chunk(
                model,
                [encoded[index] for index in rows],
                params,
                eos_id=tokenizer.eos_token_id,
                pad_id=tokenizer.pad_token_id,
                generator=generator,
                use_cache=use_cache,
            )
            for row, index in enumerate(rows):
                length = int(lengths[row])
                stopped = length > 0 and int(tokens[row, length - 1]) == tokenizer.eos_token_id
                slot = index * params.n + (row % params.n)
                results[slot] = Completion(
                    prompt_index=index,
                    prompt_ids=list(encoded[index]),
                    token_ids=tokens[row, :length].tolist(),
                    logprobs=logprobs[row, :length].tolist(),
                    finish_reason="stop" if stopped else "length",
                )
    finally:
        model.train(was_training)
    return [completion for completion in results if completion is not None]
