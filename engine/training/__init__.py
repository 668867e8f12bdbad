"""Training backends, registered by name in TRAINING_BACKENDS (the spec's
`backends.training`) as dotted paths, so the spec stays torch-free. A training backend
owns the policy's weights and optimiser and offers (engine.training.torch_backend):

    logprobs(rollouts, reference=False)     response-token log-probs under π_θ (or π_ref)
    optimizer_step(mini_batch, loss)        one optimiser step on a mini-batch, its
                                            gradient accumulated over token-budget
                                            micro-batches (engine.training.batching)
    end_batch()                             the LR schedule advances once per rollout batch
    weights(), version                      current weights and their version (optimiser
                                            steps so far), for the generation backend
    state_dict() / load_state_dict(), save_model(folder) / load_model(folder)

- `torch`: plain PyTorch on one device (CPU or a GPU).
- `deepspeed`: DeepSpeed ZeRO 0-3 (engine.training.deepspeed_backend); gloo on the CPU;
  `backends.data_parallel` ranks, one per GPU on GPUs (engine.training.data_parallel).
"""

from engine.registry import Registry

TRAINING_BACKENDS: Registry = Registry("training backend")
TRAINING_BACKENDS.register("torch", "engine.training.torch_backend:TorchTrainingBackend")
TRAINING_BACKENDS.register("deepspeed", "engine.training.data_parallel:deepspeed_backend")
# The backends that train on more than one device (the platform refuses more GPUs for the others).
MULTI_DEVICE_BACKENDS = frozenset({"deepspeed"})
