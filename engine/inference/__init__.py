"""Generation backends behind one interface (engine.inference.interface: submit, step,
abort, resume, load_weights), registered by name in GENERATION_BACKENDS (the spec's
`backends.generation`) as dotted paths, so the spec stays torch-free.

- `torch`: continuous batching on a plain transformers model, CPU or CUDA
  (engine.inference.torch_backend). vLLM will be the next entry.

engine.inference.sampling holds the token sampler every backend shares; the collector
(engine.rollout.collector) owns one backend for the whole run.
"""

from engine.registry import Registry

GENERATION_BACKENDS: Registry = Registry("generation backend")
GENERATION_BACKENDS.register("torch", "engine.inference.torch_backend:TorchBackend")
