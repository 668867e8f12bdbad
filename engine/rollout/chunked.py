"""BroRL's memory-chunked steps (docs/algorithms.md §2): with `rollout.memory_budget_mb`
set, a step's generation and its training are each cut into chunks that fit the budget,
whatever rollout.n (torch-free: the model's shape comes from its config.json).

The budget holds what the step keeps throughout (its rollouts, the allocator's slack),
the generation backend's KV store (kept between steps, so it is there while training
runs) and training's activations; the last two share what is left half and half. For a
model of L layers, hidden size h, MLP size m, H attention heads, K key-value heads of
width d, vocabulary V, and b bytes per value:

    context     = max_new_tokens + PROMPT_ALLOWANCE            KV columns one sample reserves
    reserve     = RESERVE_BYTES + samples · context · STORED_BYTES_PER_TOKEN
    share       = (budget − reserve) / 2
    decode      = 2·L·K·d·b · context                          bytes of one decoding sample's KV
    slots       = min(MAX_SLOTS, share // decode)              samples decoded at once
    train_token = b · (L·(12·h + 6·m + 3·H·context) + 8·V)     activations and logits a trained
                                                               token keeps for the backward pass
    micro_batch_tokens = min(training.micro_batch_tokens, share // train_token)

so a group of n = 512 is decoded `slots` samples at a time (continuous batching refills a
slot as a sample ends) and trained in micro-batches of `micro_batch_tokens`. The
factors were measured on the CPU torch backends (tests/engine/test_brorl.py gives the
numbers); they hold for a Llama-shaped model under eager or SDPA attention.
"""

import json
import math
from dataclasses import dataclass
from typing import Any

from engine.assets import resolve_model_path

MIB = 2**20
# Prompt tokens a sample is assumed to add to max_new_tokens (the built-in task's
# prompts have at most 30); a longer prompt only lowers how many decode at once, since
# the backend's KV-token bound (kv_tokens) is what is enforced.
PROMPT_ALLOWANCE = 64
RESERVE_BYTES = 16 * MIB
STORED_BYTES_PER_TOKEN = 100  # a rollout's ids, log-probs and versions, per token
MAX_SLOTS = 256  # the torch backend's default: more slots stop paying on one device
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


@dataclass(frozen=True)
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, model_path: str) -> "ModelShape":
        config = json.loads((resolve_model_path(model_path) / "config.json").read_text())
        heads = config["num_attention_heads"]
        return cls(
            layers=config["num_hidden_layers"],
            hidden=config["hidden_size"],
            intermediate=config.get("intermediate_size", 4 * config["hidden_size"]),
            heads=heads,
            kv_heads=config.get("num_key_value_heads") or heads,
            head_dim=config.get("head_dim") or config["hidden_size"] // heads,
            vocab=config["vocab_size"],
        )


@dataclass(frozen=True)
class MemoryPlan:
    budget_bytes: int
    reserve_bytes: int
    context: int  # KV columns one sample reserves
    decode_bytes_per_sample: int
    train_bytes_per_token: int
    decode_slots: int  # samples decoded at once
    micro_batch_tokens: int  # padded tokens per training forward/backward

    @property
    def kv_tokens(self) -> int:
        """KV tokens the running samples may reserve: the backend's enforced bound."""
        return self.decode_slots * self.context

    def generation_chunks(self, n: int) -> int:
        """Chunks (of at most decode_slots samples) a group of n is decoded in."""
        return math.ceil(n / self.decode_slots)

    def backend_limits(self) -> dict[str, int]:
        """The generation backend's bounds (engine.inference.torch_backend.TorchBackend)."""
        return {"max_slots": self.decode_slots, "max_tokens": self.kv_tokens}


def plan_memory(
    budget_mb: int,
    shape: ModelShape,
    dtype: str,
    max_new_tokens: int,
    samples_per_step: int,
    micro_batch_tokens: int | None = None,
) -> MemoryPlan:
    """The chunk plan (module docstring), micro-batches no larger than `micro_batch_tokens`
    when given; a ValueError when the budget cannot hold one decoding sample and one
    trained sequence."""
    b = DTYPE_BYTES[dtype]
    context = max_new_tokens + PROMPT_ALLOWANCE
    budget = budget_mb * MIB
    reserve = RESERVE_BYTES + samples_per_step * context * STORED_BYTES_PER_TOKEN
    share = (budget - reserve) // 2
    decode = 2 * shape.layers * shape.kv_heads * shape.head_dim * b * context
    train_token = b * (shape.layers * (12 * shape.hidden + 6 * shape.intermediate + 3 * shape.heads * context) + 8 * shape.vocab)
    if share < max(decode, train_token * context):
        need = math.ceil((reserve + 2 * max(decode, train_token * context)) / MIB)
        raise ValueError(
            f"{budget_mb} MiB cannot hold one sample of {context} tokens being generated and trained "
            f"besides the step's {samples_per_step} rollouts: at least {need} MiB"
        )
    return MemoryPlan(
        budget_bytes=budget,
        reserve_bytes=reserve,
        context=context,
        decode_bytes_per_sample=decode,
        train_bytes_per_token=train_token,
        decode_slots=min(MAX_SLOTS, share // decode),
        micro_batch_tokens=min(micro_batch_tokens or share, share // train_token),
    )


def memory_plan(model: Any, rollout: Any, micro_batch_tokens: int | None = None) -> MemoryPlan | None:
    """The plan of a spec's model and rollout sections (engine.spec), or None when
    rollout.memory_budget_mb is unset. The spec cuts training.micro_batch_tokens to the
    plan's when it is parsed; the collector bounds its backend by it."""
    if rollout.memory_budget_mb is None:
        return None
    return plan_memory(
        rollout.memory_budget_mb,
        ModelShape.of(model.path),
        model.dtype,
        rollout.max_new_tokens,
        rollout.prompts_per_step * rollout.n,
        micro_batch_tokens,
    )
