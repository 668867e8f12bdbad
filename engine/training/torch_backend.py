"""The plain-PyTorch training backend: the policy on one device (the CPU or a GPU), AdamW
with a linear warm-up, and the frozen reference for a KL term.

One optimiser step (`optimizer_step`) forwards and backwards a mini-batch in
micro-batches of at most `training.micro_batch_tokens` padded tokens (sequences sorted
by length so padding stays small); the policy loss normalises by the mini-batch's
counts, so the sum over micro-batches is the mini-batch's loss and memory stays bounded.
"""

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from engine.algorithms.policy_loss import LOSS_STATISTICS, token_logprobs
from engine.models import load_model, load_model_weights, load_policy
from engine.rollout.types import Rollout
from engine.spec import RunSpec
from engine.training.batching import micro_batches
from engine.training.collate import collate, pad


class UpdateStatistics:
    """Sums over one rollout batch's optimiser steps, reported as actor/* and clip_ratio/*."""

    def __init__(self, lr: float):
        self.lr = lr  # the learning rate the batch's first step used
        self.steps = 0
        self.trained_tokens = 0  # prompt + response tokens of every training forward pass
        self.sums = dict.fromkeys(("grad_norm", *LOSS_STATISTICS), 0.0)

    def metrics(self) -> dict[str, float]:
        sums, steps, tokens = self.sums, max(self.steps, 1), max(self.sums["tokens"], 1.0)
        # A policy loss's own per-token sums (the decoupled loss's off_policy/*), as means.
        own = {name: total / tokens for name, total in sums.items() if "/" in name}
        return own | {
            "actor/pg_loss": sums["pg_loss"] / steps,
            "actor/entropy": sums["entropy"] / tokens,
            "actor/grad_norm": sums["grad_norm"] / steps,
            "actor/lr": self.lr,
            "actor/ppo_kl": sums["ppo_kl"] / tokens,
            "clip_ratio/low_mean": sums["low"] / tokens,
            "clip_ratio/high_mean": sums["high"] / tokens,
            "clip_ratio/dual_mean": sums["dual"] / tokens,
            "clip_ratio/region_mean": sums["region"] / tokens,
        }


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of `model`'s weights for the reference: eval mode, no gradients."""
    reference = copy.deepcopy(model).eval().requires_grad_(False)
    for parameter in reference.parameters():
        parameter.grad = None
    return reference


class TorchTrainingBackend:
    def __init__(self, spec: RunSpec, needs_reference: bool):
        training = spec.training
        self.spec = spec
        self.model, self.tokenizer = load_policy(spec.model)
        self.device = self.model.device
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
        # Adam's first updates are ≈ lr·sign(gradient) for every weight, however noisy the
        # gradient: on a small model that alone can wreck a good policy in one step, so
        # the learning rate ramps up linearly over the first warmup_steps updates.
        warmup = training.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda done: min(1.0, (done + 1) / warmup) if warmup else 1.0
        )
        # The frozen reference for a KL term: `model.reference`, or the policy as it starts.
        self.reference = None
        if needs_reference:
            if spec.model.reference is not None:
                self.reference = load_model(spec.model.reference, spec.model)
            else:
                self.reference = frozen_copy(self.model)
            self.reference.eval().requires_grad_(False)
        self.version = 0  # optimiser steps so far: the version of the weights
        self.reference_resets = 0  # algorithm.reference_reset_every: resets so far

    # ----------------------------------------------------------------- log-probs
    @torch.no_grad()
    def logprobs(self, rollouts: Sequence[Rollout], reference: bool = False) -> list[torch.Tensor]:
        """Each rollout's response-token log-probs ([len(response)] on the CPU) under the
        policy, or the reference, computed in micro-batches as the update computes them."""
        model = self.reference if reference else self.model
        by_rollout: dict[int, torch.Tensor] = {}
        for batch in micro_batches(rollouts, self.spec.training.micro_batch_tokens):
            input_ids = pad(batch, self.tokenizer.pad_token_id, self.device)
            logprobs = token_logprobs(
                model(input_ids=input_ids).logits[:, :-1], input_ids[:, 1:], self.spec.rollout.temperature
            ).cpu()
            for row, item in enumerate(batch):
                by_rollout[id(item)] = logprobs[row, item.response_positions]
        return [by_rollout[id(item)] for item in rollouts]

    def embedding_grad_norms(self, rollouts: Sequence[Rollout]) -> list[float]:
        """Each rollout's ‖∇_φ(−log π(y|x))‖₂, φ the input embedding matrix (tied to the
        output head where the model ties them), the response's log-probs summed at the
        rollout temperature: CurES's per-pre-rollout gradient norms (docs/algorithms.md
        §1(b) step 3). One forward and backward pass per rollout, in eval mode (no
        dropout, no random draw); torch.autograd.grad returns the gradient without
        writing any parameter's .grad, so the weights, their gradients and the
        optimiser's state are as they were."""
        embedding = self.model.get_input_embeddings().weight
        was_training = self.model.training
        self.model.eval()
        norms = []
        try:
            for item in rollouts:
                input_ids = pad([item], self.tokenizer.pad_token_id, self.device)
                logprobs = token_logprobs(
                    self.model(input_ids=input_ids).logits[:, :-1], input_ids[:, 1:], self.spec.rollout.temperature
                )
                (gradient,) = torch.autograd.grad(-logprobs[0, item.response_positions].sum(), embedding)
                norms.append(float(torch.linalg.vector_norm(gradient.float())))
        finally:
            self.model.train(was_training)
        return norms

    # ----------------------------------------------------------------- updates
    def begin_batch(self) -> UpdateStatistics:
        """Statistics for the optimiser steps of one rollout batch."""
        self.model.train()
        return UpdateStatistics(lr=float(self.optimizer.param_groups[0]["lr"]))

    def optimizer_step(self, mini_batch: Sequence[Rollout], loss, statistics: UpdateStatistics) -> None:
        """One optimiser step on `mini_batch` with the policy loss `loss`
        (engine.algorithms.POLICY_LOSSES), its gradient accumulated over micro-batches
        and clipped to `training.grad_clip`; adds to `statistics`."""
        training = self.spec.training
        self.optimizer.zero_grad(set_to_none=True)
        num_tokens = sum(len(item.token_ids) - item.trained_from for item in mini_batch)
        for micro_batch in micro_batches(mini_batch, training.micro_batch_tokens):
            batch = collate(micro_batch, self.tokenizer.pad_token_id, self.device, self.reference is not None)
            # Right padding under a causal mask never touches a real token's output, so no
            # attention mask is needed; padded positions are masked out of the loss.
            logits = self.model(input_ids=batch.input_ids).logits
            # logits at position t predict token t + 1.
            value, sums = loss(logits[:, :-1], batch.input_ids[:, 1:], batch, len(mini_batch), num_tokens)
            value.backward()
            for name, amount in sums.items():
                statistics.sums[name] = statistics.sums.get(name, 0.0) + amount
            statistics.trained_tokens += sum(len(item.prompt_ids) + len(item.token_ids) for item in micro_batch)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), training.grad_clip)
        statistics.sums["grad_norm"] += float(grad_norm)
        self.optimizer.step()
        statistics.steps += 1
        self.version += 1

    def end_batch(self) -> None:
        """The learning-rate schedule advances once per rollout batch: warm-up counts steps."""
        self.scheduler.step()

    def reset_reference(self) -> None:
        """ProRL's reference reset (docs/algorithms.md §0.3, item 4): π_ref becomes a copy
        of the current policy, and Adam's moments and step counts are zeroed, exactly a
        fresh optimiser's state; the learning-rate schedule carries on."""
        self.reference = frozen_copy(self.model)
        for state in self.optimizer.state.values():
            for value in state.values():
                if torch.is_tensor(value):
                    value.zero_()
        self.reference_resets += 1

    # ----------------------------------------------------------------- weights
    def weights(self) -> Mapping[str, torch.Tensor]:
        """The policy's current weights (its own tensors, not a copy): version `version`."""
        return self.model.state_dict()

    def save_model(self, folder: Path) -> None:
        """The policy and its tokenizer as a model folder any spec can name as `model.path`."""
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)

    def load_model(self, folder: Path) -> None:
        load_model_weights(self.model, folder)

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """The optimiser, schedule and version; after a reference reset the reference's
        weights too (before one it is the start policy or `model.reference`, rebuilt as is)."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "version": self.version,
            "reference_resets": self.reference_resets,
        }
        if self.reference_resets:
            state["reference"] = self.reference.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.version = state["version"]
        self.reference_resets = state.get("reference_resets", 0)
        if "reference" in state:  # a reset policy: the policy's architecture, the saved weights
            self.reference = frozen_copy(self.model)
            self.reference.load_state_dict(state["reference"])
        self._apply_spec_hyperparameters()

    def _apply_spec_hyperparameters(self) -> None:
        """A fork may change the learning rate or weight decay: the spec's values win over
        the checkpoint's (the warm-up position carries over). With unchanged values this
        touches nothing, so a plain resume stays exact."""
        training = self.spec.training
        for group, base_lr in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
            if base_lr != training.lr:
                group["lr"] = group["lr"] * training.lr / base_lr
                group["initial_lr"] = training.lr
            group["weight_decay"] = training.weight_decay
        self.scheduler.base_lrs = [training.lr for _ in self.scheduler.base_lrs]
