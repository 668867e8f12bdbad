"""What every generation backend takes and returns: the plain-torch one here, vLLM later.

A backend holds requests and decodes them in the background of whoever drives it:

    backend.submit(Request("p0", prompt_ids, SamplingParams(n=8, max_new_tokens=256)))
    while backend.has_unfinished():
        for sample in backend.step():   # samples that ended during this step
            ...
    backend.load_weights(state_dict, version=3)   # tokens sampled from now on carry 3

A request with `n > 1` yields n samples (sample_index 0 … n − 1) that share one prefill
of the prompt. A request may resume an earlier, aborted sample: `resume_from` carries the
response tokens already generated with their log-probs and policy versions, and the new
sample continues after them (its `max_new_tokens` still bounds the whole response, so a
resumed sample ends where an uninterrupted one would).
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import torch

# SampleStatus — completed: ended with a stop token; truncated: reached max_new_tokens;
# aborted: taken out by abort() before either. One definition, shared with the events.
from engine.events import SampleStatus


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1  # samples per prompt, sharing one prefill
    temperature: float = 1.0  # 0 → greedy (argmax) decoding
    top_p: float = 1.0
    max_new_tokens: int = 256  # bounds the whole response, a resumed prefix included
    # A sample completes at the first of these it samples (the stop token is kept). Empty:
    # only max_new_tokens ends a sample. engine.generation.generate fills in the
    # tokenizer's and the model's end tokens when this is left empty.
    stop_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be at least 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be ≥ 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be at least 1, got {self.max_new_tokens}")


@dataclass(frozen=True)
class PartialResponse:
    """Response tokens generated before an abort, to resume from."""

    token_ids: list[int]
    logprobs: list[float]
    versions: list[int]  # policy version that sampled each token

    def __post_init__(self):
        if not len(self.token_ids) == len(self.logprobs) == len(self.versions):
            raise ValueError(
                "PartialResponse needs one log-prob and one version per token, got "
                f"{len(self.token_ids)} tokens, {len(self.logprobs)} log-probs, {len(self.versions)} versions"
            )


@dataclass(frozen=True)
class Request:
    request_id: str
    prompt_ids: list[int]
    params: SamplingParams
    resume_from: PartialResponse | None = None

    def __post_init__(self):
        if not self.prompt_ids:
            raise ValueError(f"request {self.request_id!r} has an empty prompt (it needs at least a BOS token)")
        if self.resume_from is not None and self.params.n != 1:
            raise ValueError(f"request {self.request_id!r} resumes one sample, so its params.n must be 1")


@dataclass
class Sample:
    """One sampled response, finished or (while decoding, or once aborted) partial."""

    request_id: str
    sample_index: int  # 0 … n − 1 within its request
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)  # log_softmax(logits / T)[token]
    versions: list[int] = field(default_factory=list)  # policy version per token
    status: SampleStatus | None = None  # None while it is still being generated


class GenerationBackend(Protocol):
    """The engine's view of an inference engine (TorchBackend, and vLLM on GPU nodes)."""

    # The random stream sampling draws from; the collector swaps in evaluation's own
    # between steps (a backend that seeds each request draws the seeds from it).
    generator: torch.Generator | None

    @property
    def version(self) -> int:
        """Policy version of the weights now loaded; every new token carries it."""
        ...

    def submit(self, request: Request) -> None:
        """Queue a request; its samples start when a slot is free."""
        ...

    def abort(self, request_id: str) -> list[Sample]:
        """Stop every unfinished sample of the request and return them (status aborted),
        with the tokens, log-probs and versions generated so far."""
        ...

    def step(self) -> list[Sample]:
        """Advance every running sample by one token (starting queued ones as slots
        free up); return the samples that finished."""
        ...

    def has_unfinished(self) -> bool: ...

    def load_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> None:
        """Replace the policy's weights; tokens sampled afterwards carry `version`.
        Samples in flight keep decoding (their earlier tokens keep their versions)."""
        ...


def run_to_completion(backend: GenerationBackend) -> list[Sample]:
    """Step until nothing is left; samples in the order they finished."""
    finished: list[Sample] = []
    while backend.has_unfinished():
        finished.extend(backend.step())
    return finished
