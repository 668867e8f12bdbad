"""DeepSpeed ZeRO behind the training-backend interface (`backends: {training: deepspeed,
zero_stage: 0-3}`), on GPUs with NCCL and on the CPU with gloo.

It is the torch backend with DeepSpeed's engine in the optimiser's place: the same
log-probs, loss and statistics (engine.training.torch_backend), and:

- precision follows `model.dtype`: bfloat16 turns on DeepSpeed's bf16 mode (bf16 weights
  for the forward pass, fp32 master weights in the optimiser), float32 trains in fp32;
- one optimiser step accumulates gradients over the mini-batch's token-budget
  micro-batches (engine.training.batching), however many there are: DeepSpeed's own
  accumulation counts a fixed number, so each backward says itself whether it is the
  step's last (`set_gradient_accumulation_boundary`); the policy loss already divides by
  the mini-batch's counts, so DeepSpeed must not scale it again (`scale_wrt_gas=False`);
- the optimiser is torch's AdamW handed to DeepSpeed (no native Adam op to compile: the
  CPU's cold start drops from minutes to seconds) and the warm-up schedule steps once per
  rollout batch, as in the torch backend;
- a checkpoint's `model/` folder holds the Hugging Face model (what a spec or vLLM loads)
  and, beside it, `deepspeed/` holds DeepSpeed's own checkpoint (module, optimiser and
  fp32 master partitions), from which `load_model` resumes.

One process is rank 0 of a world of one; `backends.data_parallel: N` runs N of these as
ranks in child processes behind a coordinator (engine.training.data_parallel), each on its
shard of every mini-batch.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from engine.rollout.types import Rollout
from engine.spec import RunSpec, SpecError
from engine.training.batching import micro_batches
from engine.training.collate import collate
from engine.training.torch_backend import TorchTrainingBackend, UpdateStatistics

DEEPSPEED_DIR = "deepspeed"  # beside the checkpoint's model folder
TAG = "state"


def _single_process_environment() -> None:
    """What deepspeed.initialize reads to start a world of one (else it looks for MPI)."""
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    for name, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):
        os.environ.setdefault(name, value)
    if "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(probe.getsockname()[1])


def _forget_destroyed_groups() -> None:
    """DeepSpeed caches process groups (a clone of the world) across engines; an earlier
    run's in-process vLLM engine destroys the world at its shutdown without DeepSpeed
    knowing, and the next initialise then fails on the dead clone ("Group ... is not
    registered"). Drop the caches when the clone is no longer registered, as DeepSpeed's
    own destroy_process_group does."""
    from deepspeed.utils import groups

    world = groups._WORLD_GROUP
    if world is not None and world not in torch.distributed.distributed_c10d._world.pg_group_ranks:
        groups._release_process_group_references(None)


class DeepSpeedTrainingBackend(TorchTrainingBackend):
    def __init__(self, spec: RunSpec, needs_reference: bool):
        super().__init__(spec, needs_reference)
        _single_process_environment()
        import deepspeed

        if os.environ["WORLD_SIZE"] == "1" or not torch.cuda.is_available():
            # The shared-memory all-reduce op speeds up CPU ranks on one host, at the price
            # of a native build at the first initialise (about 3 minutes on 2 cores); alone
            # it is of no use, and gloo's all-reduce serves the CPU's few ranks.
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False

        _forget_destroyed_groups()
        self.zero_stage = spec.backends.zero_stage
        if spec.algorithm.reference_reset_every is not None:
            # The moments live in DeepSpeed's own (possibly partitioned) optimiser state.
            raise SpecError(
                [("algorithm.reference_reset_every", "the deepspeed backend cannot reset its optimiser: use backends.training torch")]
            )
        curriculum = spec.curriculum
        if self.zero_stage == 3 and curriculum.strategy == "cures" and curriculum.gradient_norms == "embedding":
            # ZeRO-3 shards the embedding matrix across ranks: embedding_grad_norms (inherited,
            # which differentiates the module's own whole weights) has no whole matrix to use.
            raise SpecError(
                [("curriculum.gradient_norms", "embedding needs whole weights; with backends.zero_stage 3 set it to unit")]
            )
        training = spec.training
        config = {
            "train_micro_batch_size_per_gpu": 1,  # rows are the loss's business, not DeepSpeed's
            "gradient_accumulation_steps": 1,
            "gradient_clipping": training.grad_clip,
            "zero_optimization": {"stage": self.zero_stage},
            "bf16": {"enabled": spec.model.dtype == "bfloat16"},
            "zero_allow_untested_optimizer": True,
            "steps_per_print": 2**31 - 1,
        }
        if spec.model.dtype == "float16":
            raise ValueError("the deepspeed backend trains in bfloat16 or float32 (model.dtype), not float16")
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=self.model, optimizer=self.optimizer, config=config, dist_init_required=None
        )
        # DeepSpeed wraps the optimiser; the schedule keeps driving the torch one's groups.

    def optimizer_step(self, mini_batch: Sequence[Rollout], loss, statistics: UpdateStatistics) -> None:
        """TorchTrainingBackend.optimizer_step through DeepSpeed's engine."""
        num_tokens = sum(len(item.token_ids) - item.trained_from for item in mini_batch)
        parts = [(part, 1.0) for part in micro_batches(mini_batch, self.spec.training.micro_batch_tokens)]
        sums, trained_tokens, grad_norm = self.accumulate_and_step(
            parts, loss, len(mini_batch), num_tokens, self.reference is not None
        )
        for name, amount in sums.items():
            statistics.sums[name] = statistics.sums.get(name, 0.0) + amount
        statistics.trained_tokens += trained_tokens
        statistics.sums["grad_norm"] += grad_norm
        statistics.steps += 1

    def accumulate_and_step(
        self,
        parts: Sequence[tuple[Sequence[Rollout], float]],
        loss,
        num_rollouts: int,
        num_tokens: int,
        with_reference: bool,
    ) -> tuple[dict[str, float], int, float]:
        """One optimiser step over micro-batches `parts`, each with its weight (1, or 0
        for a rank's filler: engine.training.data_parallel), the loss normalised by the
        whole mini-batch's `num_rollouts` and `num_tokens`. DeepSpeed averages gradients
        over the ranks, so each rank's loss (the sum over its shard of the mini-batch's
        loss) is scaled by the world size: the averaged gradient is the mini-batch's.
        Returns this rank's loss sums, its trained tokens and the global gradient norm."""
        engine = self.engine
        scale = float(engine.dp_world_size)
        sums: dict[str, float] = {}
        trained_tokens = 0
        for index, (micro_batch, weight) in enumerate(parts):
            engine.set_gradient_accumulation_boundary(index == len(parts) - 1)
            batch = collate(micro_batch, self.tokenizer.pad_token_id, self.device, with_reference)
            logits = engine(input_ids=batch.input_ids).logits.float()
            value, micro_sums = loss(logits[:, :-1], batch.input_ids[:, 1:], batch, num_rollouts, num_tokens)
            engine.backward(value * (weight * scale), scale_wrt_gas=False)  # × 1.0 alone is exact
            if weight:
                for name, amount in micro_sums.items():
                    sums[name] = sums.get(name, 0.0) + amount
                trained_tokens += sum(len(item.prompt_ids) + len(item.token_ids) for item in micro_batch)
        if self.zero_stage == 0 and not engine.bfloat16_enabled():
            # DeepSpeed's plain fp32 path clips without keeping the norm: measure it first
            # (the gradients are already averaged over the ranks at the boundary's backward).
            grads = [p.grad for p in self.model.parameters() if p.grad is not None]
            grad_norm = float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads])))
        engine.step()
        if self.zero_stage or engine.bfloat16_enabled():
            grad_norm = float(engine.get_global_grad_norm())
        self.version += 1
        return sums, trained_tokens, grad_norm

    # ----------------------------------------------------------------- weights
    def weights(self) -> Mapping[str, torch.Tensor]:
        """Stages 0-2 keep whole weights in the module (its own tensors); stage 3 shards
        them, so they are gathered into copies."""
        if self.zero_stage < 3:
            return self.model.state_dict()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(self.model.parameters()), modifier_rank=None):
            return {name: tensor.detach().clone() for name, tensor in self.model.state_dict().items()}

    def save_model(self, folder: Path) -> None:
        """The Hugging Face folder (rank 0 writes it), and DeepSpeed's checkpoint beside it
        (every rank writes its own partitions). Every rank calls this: stage 3 gathers."""
        weights = dict(self.weights())
        if self.engine.global_rank == 0:
            self.model.save_pretrained(folder, state_dict=weights)
            self.tokenizer.save_pretrained(folder)
        self.engine.save_checkpoint(str(Path(folder).parent / DEEPSPEED_DIR), tag=TAG)

    def load_model(self, folder: Path) -> None:
        """Resume from DeepSpeed's checkpoint beside `folder` (module, optimiser, master weights)."""
        saved = Path(folder).parent / DEEPSPEED_DIR
        if not (saved / TAG).is_dir():
            raise FileNotFoundError(f"{saved / TAG} is missing: the deepspeed backend resumes from its own checkpoint")
        self.engine.load_checkpoint(str(saved), tag=TAG, load_module_strict=True)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The optimiser lives in DeepSpeed's checkpoint; the schedule and version here."""
        return {"scheduler": self.scheduler.state_dict(), "version": self.version}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scheduler.load_state_dict(state["scheduler"])
        self.version = state["version"]
        self._apply_spec_hyperparameters()
