"""Generation backends: the interface (engine.inference.interface), the sampler every
backend shares (engine.inference.sampling) and continuous batching on plain torch
(engine.inference.torch_backend). engine.generation.generate is the one-call front end."""

from engine.inference.interface import (
    GenerationBackend,
    PartialResponse,
    Request,
    Sample,
    SampleStatus,
    SamplingParams,
    run_to_completion,
)
from engine.inference.torch_backend import BackendStats, TorchBackend

__all__ = [
    "BackendStats",
    "GenerationBackend",
    "PartialResponse",
    "Request",
    "Sample",
    "SampleStatus",
    "SamplingParams",
    "TorchBackend",
    "run_to_completion",
]
