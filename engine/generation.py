"""Sample completions of prompts in one call, on a backend made for the call.

For one-off sampling outside a run (the warm start's evaluation, benchmarks): `generate`
tokenizes the prompts, submits one request per prompt (its `n` samples share one
prefill) to a fresh `TorchBackend` (continuous batching, engine.inference.torch_backend)
and returns token ids, the log-prob of every sampled token and how each completion
ended, grouped by prompt. A run samples through its collector instead
(engine.rollout.collector), which keeps one backend for the whole run so weights,
versions, abort and resume reach it. The log-prob convention is
`engine.inference.sampling`'s: log_softmax(logits / T) of the sampled token, top-p ignored.
"""

from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from engine.events import SampleStatus
from engine.inference.interface import Request, SamplingParams, run_to_completion
from engine.inference.torch_backend import TorchBackend

__all__ = ["Completion", "SamplingParams", "generate", "stop_token_ids"]


@dataclass
class Completion:
    prompt_index: int  # position of the prompt in the `prompts` argument
    prompt_ids: list[int]  # the prompt's tokens, no padding
    token_ids: list[int]  # generated tokens; ends with a stop token when status == "completed"
    logprobs: list[float]  # one per generated token, see the module docstring
    status: SampleStatus  # completed (a stop token) or truncated (max_new_tokens)
    versions: list[int]  # policy version that sampled each token


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> tuple[int, ...]:
    """The tokens that end a response: the tokenizer's EOS and every end token of the
    model's generation config (chat models often have several, e.g. <|im_end|>)."""
    ids = [tokenizer.eos_token_id]
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids += configured if isinstance(configured, list) else [configured]
    return tuple(dict.fromkeys(token for token in ids if token is not None))


def generate(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str] | list[list[int]],
    params: SamplingParams,
    generator: torch.Generator | None = None,
    max_slots: int = 256,
) -> list[Completion]:
    """Sample `params.n` completions for each prompt (text, or token ids).

    Returns len(prompts) × n completions, prompt by prompt (those of prompt i are at
    i·n … i·n + n − 1). At most `max_slots` completions decode at once; a finished one's
    slot goes to the next waiting at the same step. Empty `params.stop_token_ids` means
    `stop_token_ids(model, tokenizer)`.
    """
    if not prompts:
        return []
    if not params.stop_token_ids:
        params = replace(params, stop_token_ids=stop_token_ids(model, tokenizer))
    # Text is encoded with the tokenizer's special tokens; the trainer passes token ids
    # already formatted by engine.models.encode_prompts (chat template or not).
    encoded: list[list[int]] = (
        tokenizer(prompts, add_special_tokens=True)["input_ids"] if isinstance(prompts[0], str) else prompts
    )
    backend = TorchBackend(model, max_slots=max_slots, generator=generator)
    for index, prompt_ids in enumerate(encoded):
        backend.submit(Request(str(index), prompt_ids, params))
    was_training = model.training
    try:
        samples = sorted(run_to_completion(backend), key=lambda s: (int(s.request_id), s.sample_index))
    finally:
        model.train(was_training)
    return [
        Completion(
            prompt_index=int(sample.request_id),
            prompt_ids=sample.prompt_ids,
            token_ids=sample.token_ids,
            logprobs=sample.logprobs,
            status=sample.status,
            versions=sample.versions,
        )
        for sample in samples
    ]
