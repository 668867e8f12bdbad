"""The synchronous GRPO-family trainer: one object that samples, scores and updates.

One `step()` is a plain loop with named stages, top to bottom:

    1. prompts    next `prompts_per_step` train prompts in a seeded order, those the
                  curriculum admits at this step (engine.curriculum)
    2. generate   `n` completions of each (engine.generation, KV cache)
    3. reward     the task's checker scores each completion; with dynamic sampling
                  (DAPO), rounds 1-3 repeat until enough groups have mixed rewards;
                  overlong shaping adjusts the rewards
    4. log-probs  π_old recomputed when the update takes several optimiser steps; π_ref
                  when a KL term is on (with the KL in the reward, it adjusts the rewards)
    5. advantage  per group of completions of one prompt (engine.losses)
    6. update     epochs × mini-batches optimiser steps, micro-batched by tokens
    7. report     Metrics / LengthHistogram / PromptResults / Span events

The algorithm (engine.algorithms: advantage estimator, aggregation, ratio level, clip
range, KL and entropy terms, dynamic sampling, overlong shaping) comes from the resolved
spec; the trainer only wires the parts together. It runs the same in
the driver process or inside a Ray actor (engine.orchestration).
"""

import copy
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from engine.algorithms import fill_batch, overlong_buffer_len, overlong_penalty
from engine.checkpoint import (
    CheckpointInfo,
    generator_states,
    global_rng_state,
    load_checkpoint,
    restore_generator_states,
    restore_global_rng_state,
    save_checkpoint,
)
from engine.curriculum import DifficultyPacing
from engine.evaluation import mean_pass_at_k
from engine.events import Event, LengthHistogram, Metrics, PromptResult, PromptResults, Span, now
from engine.generation import Completion, SamplingParams, generate
from engine.losses import (
    aggregate,
    entropy_from_logits,
    group_advantages,
    kl_estimate,
    log_importance_ratio,
    ppo_clipped,
    token_logprobs,
)
from engine.models import encode_prompts, load_model, load_policy
from engine.spec import RunSpec
from engine.tasks import Problem, resolve_task

# The train prompts a run cycles through (in a seeded order, reshuffled each pass).
TRAIN_POOL_SIZE = 20_000
# Seed of the held-out prompts: the same for every run, so runs compare on one test set.
EVAL_SEED = 0
LENGTH_BINS = 32
# A trainer is one worker on one device (a GPU, or the CPU): perf/*_per_gpu divide by it.
DEVICES_PER_TRAINER = 1

T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def length_bin_edges(max_new_tokens: int, bins: int = LENGTH_BINS) -> list[int]:
    """Fixed integer bin edges for a run's response lengths: `bins` equal widths from 0
    to at least max_new_tokens (numpy closes the last bin, so a truncated response,
    max_new_tokens long, lands in it)."""
    width = max(1, -(-max_new_tokens // bins))  # ceil
    return list(range(0, max_new_tokens + width, width))


@dataclass
class Rollout:
    """One scored completion, ready for the update."""

    group: int  # its prompt group: the samples of one prompt drawn in one step share it
    problem: Problem
    completion: Completion
    reward: float  # the task's verdict (1.0 = correct)
    shaping: float = 0.0  # added to the reward for advantages: overlong penalty, KL in the reward
    advantage: float = 0.0
    old_logprobs: torch.Tensor | None = None  # π_old per response token, when the trainer recomputed it
    ref_logprobs: torch.Tensor | None = None  # π_ref per response token, when a KL term is on

    @property
    def response_positions(self) -> slice:
        """Where the response's log-probs sit in a row of shifted logits (position t
        predicts token t + 1, so the first response token is predicted at the prompt's
        last position)."""
        start = len(self.completion.prompt_ids) - 1
        return slice(start, start + len(self.completion.token_ids))

    def policy_logprobs(self) -> torch.Tensor:
        """π_old's log-prob of each response token: the trainer's recomputation when it
        made one, else the sampler's (the same weights, the same convention)."""
        if self.old_logprobs is not None:
            return self.old_logprobs
        return torch.tensor(self.completion.logprobs)


@dataclass
class Collated:
    """One micro-batch as tensors on the model's device."""

    input_ids: torch.Tensor  # [B, L] prompt + response, right-padded with the pad id
    mask: torch.Tensor  # [B, L − 1] 1.0 where position t predicts a generated token
    old_logprobs: torch.Tensor  # [B, L − 1] π_old, aligned with mask
    ref_logprobs: torch.Tensor | None  # [B, L − 1] π_ref, when a KL term is on
    advantages: torch.Tensor  # [B]


@dataclass
class UpdateResult:
    metrics: dict[str, float]  # actor/*, clip_ratio/*
    trained_tokens: int  # prompt + response tokens of every training forward pass


class Trainer:
    """Holds the policy, optimiser and data stream of one run.

    `step()` and `evaluate()` return events instead of emitting them, so the same
    object works in process or as a Ray actor whose results the driver forwards.
    """

    def __init__(self, spec: RunSpec, worker: str = "trainer"):
        self.spec = spec
        seed_everything(spec.seed)
        # Ray sets OMP_NUM_THREADS to the actor's CPUs; in process we ask for the same.
        torch.set_num_threads(max(1, min(spec.resources.cpus, os.cpu_count() or 1)))
        self.model, self.tokenizer = load_policy(spec.model)
        self.device = self.model.device
        self.worker = f"{worker}:{self.device.type}"
        self.task = resolve_task(spec.dataset)
        self.algorithm = spec.algorithm
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=spec.training.lr, weight_decay=spec.training.weight_decay
        )
        # Adam's first updates are ≈ lr·sign(gradient) for every weight, however noisy the
        # gradient: on a small model that alone can wreck a good policy in one step, so
        # the learning rate ramps up linearly over the first warmup_steps updates.
        warmup = spec.training.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda done: min(1.0, (done + 1) / warmup) if warmup else 1.0
        )
        # The frozen reference for a KL term: `model.reference`, or the policy as it starts.
        self.reference = None
        if self.algorithm.kl_placement != "off":
            if spec.model.reference is not None:
                self.reference = load_model(spec.model.reference, spec.model)
            else:
                self.reference = copy.deepcopy(self.model)
            self.reference.eval().requires_grad_(False)

        self.train_pool = self.task.problems("train", TRAIN_POOL_SIZE, seed=spec.seed)
        self.eval_problems = self.task.problems("test", spec.dataset.eval_size, seed=EVAL_SEED)
        self.curriculum = DifficultyPacing(
            spec.curriculum.strategy,
            [problem.difficulty for problem in self.train_pool],
            **spec.curriculum.model_dump(exclude={"strategy"}, exclude_none=True),
        )
        self._order_rng = random.Random(spec.seed)
        self._order: list[int] = []
        # Generators live on the model's device: torch.multinomial on CUDA needs a CUDA one.
        self._sampling_rng = torch.Generator(device=self.device).manual_seed(spec.seed)
        self.step_count = 0
        self.bin_edges = length_bin_edges(spec.rollout.max_new_tokens)

    # ----------------------------------------------------------------- data
    def next_prompts(self, count: int) -> list[Problem]:
        """The next `count` train prompts the curriculum admits at this step: passes over
        the pool, each in a fresh seeded order. A prompt the curriculum does not admit yet
        is passed over and stays in the pass for a later step; a new pass begins when the
        current one holds no admissible prompt. With `uniform` every prompt is admissible,
        so this is the plain seeded pass."""
        threshold = self.curriculum.threshold(self.step_count)
        batch = []
        while len(batch) < count:
            position = self._last_admissible(threshold)
            if position is None:
                self._order = list(range(len(self.train_pool)))
                self._order_rng.shuffle(self._order)
                continue
            batch.append(self.train_pool[self._order.pop(position)])
        return batch

    def _last_admissible(self, threshold: float) -> int | None:
        """Position in the pass of the next prompt to draw (passes are drawn from the end)."""
        for position in range(len(self._order) - 1, -1, -1):
            if self.curriculum.admits(self.train_pool[self._order[position]].difficulty, threshold):
                return position
        return None

    def sample(
        self, problems: list[Problem], params: SamplingParams, generator: torch.Generator
    ) -> tuple[list[Rollout], list[str]]:
        """Generate len(problems) × params.n rollouts (grouped by prompt) and decode them.
        Prompts are formatted by the one function training and evaluation share
        (engine.models.encode_prompts: the chat template per `model.chat_template`)."""
        prompt_ids = encode_prompts(self.tokenizer, [p.prompt for p in problems], self.spec.model.chat_template)
        completions = generate(self.model, self.tokenizer, prompt_ids, params, generator)
        texts = self.tokenizer.batch_decode([c.token_ids for c in completions], skip_special_tokens=True)
        return [
            Rollout(group=c.prompt_index, problem=problems[c.prompt_index], completion=c, reward=0.0)
            for c in completions
        ], texts

    def score(self, rollouts: list[Rollout], texts: list[str]) -> None:
        """Set each rollout's reward: the task's verdict on its decoded text."""
        for item, text in zip(rollouts, texts, strict=True):
            item.reward = self.task.score(item.problem, text)

    # ----------------------------------------------------------------- step
    def step(self) -> list[Event]:
        """One step of the configured algorithm; returns its events (see the module docstring)."""
        algo, rollout = self.algorithm, self.spec.rollout
        self.step_count += 1
        step = self.step_count
        t_start = now()

        # 1-3. prompts, generation and reward, in rounds when dynamic sampling asks for more
        params = SamplingParams(
            n=rollout.n, temperature=rollout.temperature, top_p=rollout.top_p, max_new_tokens=rollout.max_new_tokens
        )
        generated: list[list[Rollout]] = []  # every group sampled this step, trained on or not
        spans: list[Span] = []

        def generate_groups(count: int) -> list[list[Rollout]]:
            t_round = now()
            rollouts, texts = self.sample(self.next_prompts(count), params, self._sampling_rng)
            t_sampled = now()
            self.score(rollouts, texts)
            spans.append(Span(step=step, worker=self.worker, phase="generate", start=t_round, end=t_sampled))
            spans.append(Span(step=step, worker=self.worker, phase="reward", start=t_sampled, end=now()))
            for item in rollouts:  # group ids stay unique across rounds
                item.group += len(generated)
            groups = group_rollouts(rollouts)
            generated.extend(groups)
            return groups

        algorithm_metrics: dict[str, float] = {}
        if algo.dynamic_sampling:
            filled = fill_batch(
                generate_groups,
                lambda group: [item.reward for item in group],
                rollout.prompts_per_step,
                algo.oversample,
                algo.max_gen_rounds,
            )
            groups = filled.groups
            algorithm_metrics = {"dapo/keep_rate": filled.keep_rate, "dapo/gen_rounds": float(filled.rounds)}
        else:
            groups = generate_groups(rollout.prompts_per_step)
        batch = [item for group in groups for item in group]
        t_generated = now()
        algorithm_metrics.update(self._shape_overlong(batch))
        t_shaped = now()

        # 4. log-probs of the old policy (when the update takes several optimiser steps)
        # and of the reference (when a KL term is on)
        if self.updates_per_batch > 1:
            for item, logprobs in zip(batch, self._response_logprobs(self.model, batch)):
                item.old_logprobs = logprobs
        t_old = now()
        if self.reference is not None:
            algorithm_metrics["kl"] = self._attach_reference(batch)
        t_ref = now()

        # 5. advantages, keyed by group (groups may differ in size)
        rewards = torch.tensor([item.reward + item.shaping for item in batch])
        advantages = group_advantages(rewards, [item.group for item in batch], algo.advantage)
        for item, advantage in zip(batch, advantages.tolist()):
            item.advantage = advantage
        t_adv = now()

        # 6. update
        update = self.update(batch)
        t_end = now()

        # 7. report
        timings = {
            "gen": sum(s.end - s.start for s in spans if s.phase == "generate"),
            "reward": sum(s.end - s.start for s in spans if s.phase == "reward") + (t_shaped - t_generated),
            "old_log_prob": t_old - t_shaped,
            "ref": t_ref - t_old,
            "adv": t_adv - t_ref,
            "update_actor": t_end - t_adv,
            "step": t_end - t_start,
        }
        every_rollout = [item for group in generated for item in group]
        values = self._step_metrics(every_rollout, rewards, advantages, update, timings)
        values.update(algorithm_metrics)
        values.update(self.curriculum.metrics(step))
        return [
            Metrics(step=step, values=values),
            self._length_histogram(step, every_rollout),
            PromptResults(step=step, split="train", results=prompt_results(every_rollout)),
            *spans,
            Span(step=step, worker=self.worker, phase="train", start=t_generated, end=t_end),
        ]

    @property
    def updates_per_batch(self) -> int:
        """Optimiser steps per rollout batch: from the second on, π_θ is not π_old."""
        return self.spec.training.mini_batches * self.spec.training.epochs

    def _shape_overlong(self, batch: list[Rollout]) -> dict[str, float]:
        """DAPO's overlong reward shaping: a penalty for using the last part of the length
        budget, added to each rollout's shaping. Returns its metrics (none when off)."""
        max_len = self.spec.rollout.max_new_tokens
        buffer_len = overlong_buffer_len(max_len, self.algorithm.overlong_buffer_fraction)
        if buffer_len == 0:
            return {}
        penalties = []
        for item in batch:
            penalty = overlong_penalty(
                len(item.completion.token_ids), max_len, buffer_len, self.algorithm.overlong_penalty_factor
            )
            item.shaping += penalty
            penalties.append(penalty)
        lengths = np.array([len(item.completion.token_ids) for item in batch])
        return {
            "overlong/penalty_mean": float(np.mean(penalties)),
            "overlong/buffer_ratio": float(np.mean((lengths > max_len - buffer_len) & (lengths < max_len))),
            "overlong/truncated_ratio": float(np.mean([item.completion.finish_reason == "length" for item in batch])),
        }

    def _attach_reference(self, batch: list[Rollout]) -> float:
        """Reference log-probs for every rollout; with the KL in the reward, also its
        penalty −β·Σ_t KL_t(π_old ‖ π_ref) on each rollout's shaping. Returns the mean
        per-token KL estimate between the sampling policy and the reference."""
        algo = self.algorithm
        total, tokens = 0.0, 0
        for item, ref_logprobs in zip(batch, self._response_logprobs(self.reference, batch)):
            item.ref_logprobs = ref_logprobs
            kl = kl_estimate(item.policy_logprobs(), ref_logprobs, algo.kl_estimator)
            if algo.kl_placement == "reward":
                item.shaping -= algo.kl_coef * float(kl.sum())
            total, tokens = total + float(kl.sum()), tokens + len(kl)
        return total / max(tokens, 1)

    @torch.no_grad()
    def _response_logprobs(self, model: torch.nn.Module, rollouts: list[Rollout]) -> list[torch.Tensor]:
        """Each rollout's response-token log-probs under `model` (on the CPU), computed in
        micro-batches as the update computes them."""
        by_rollout: dict[int, torch.Tensor] = {}
        for batch in micro_batches(rollouts, self.spec.training.micro_batch_tokens):
            input_ids = self._pad(batch)
            logprobs = token_logprobs(
                model(input_ids=input_ids).logits[:, :-1], input_ids[:, 1:], self.spec.rollout.temperature
            ).cpu()
            for row, item in enumerate(batch):
                by_rollout[id(item)] = logprobs[row, item.response_positions]
        return [by_rollout[id(item)] for item in rollouts]

    def update(self, rollouts: list[Rollout]) -> UpdateResult:
        """`training.epochs` passes over the batch, each cut into `training.mini_batches`
        mini-batches of whole prompt groups, one optimiser step per mini-batch (the
        groups keep the batch's order, the prompts' seeded random one). From the second
        optimiser step on, the policy differs from the one that sampled, and the PPO
        ratio against `old_logprobs` is what keeps it close.

        Within a mini-batch, gradients accumulate over micro-batches of at most
        `training.micro_batch_tokens` padded tokens (sequences sorted by length so padding
        stays small); `aggregate` normalises by the mini-batch's counts, so the sum over
        micro-batches is the mini-batch's loss and memory stays bounded. The learning-rate
        schedule advances once per call: warm-up counts training steps."""
        training = self.spec.training
        self.model.train()
        lr = float(self.optimizer.param_groups[0]["lr"])
        sums: dict[str, float] = dict.fromkeys(
            ["pg_loss", "grad_norm", "entropy", "ppo_kl", "low", "high", "dual", "region", "tokens"], 0.0
        )
        trained_tokens = 0
        mini_batches = split_evenly(group_rollouts(rollouts), training.mini_batches)
        for _ in range(training.epochs):
            for groups in mini_batches:
                mini_batch = [item for group in groups for item in group]
                self.optimizer.zero_grad(set_to_none=True)
                num_tokens = sum(len(item.completion.token_ids) for item in mini_batch)
                for micro_batch in micro_batches(mini_batch, training.micro_batch_tokens):
                    self._accumulate_gradient(micro_batch, len(mini_batch), num_tokens, sums)
                    trained_tokens += sum(
                        len(item.completion.prompt_ids) + len(item.completion.token_ids) for item in micro_batch
                    )
                sums["grad_norm"] += float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), training.grad_clip))
                self.optimizer.step()
        self.scheduler.step()
        steps, tokens = self.updates_per_batch, max(sums["tokens"], 1.0)
        metrics = {
            "actor/pg_loss": sums["pg_loss"] / steps,
            "actor/entropy": sums["entropy"] / tokens,
            "actor/grad_norm": sums["grad_norm"] / steps,
            "actor/lr": lr,
            "actor/ppo_kl": sums["ppo_kl"] / tokens,
            "clip_ratio/low_mean": sums["low"] / tokens,
            "clip_ratio/high_mean": sums["high"] / tokens,
            "clip_ratio/dual_mean": sums["dual"] / tokens,
            "clip_ratio/region_mean": sums["region"] / tokens,
        }
        return UpdateResult(metrics=metrics, trained_tokens=trained_tokens)

    def _accumulate_gradient(
        self, micro_batch: list[Rollout], num_seqs: int, num_tokens: int, sums: dict[str, float]
    ) -> None:
        """Forward and backward one micro-batch of a mini-batch of `num_seqs` sequences and
        `num_tokens` response tokens; adds its statistics to `sums` (token sums, and the
        loss as its share of the mini-batch loss)."""
        spec, algo = self.spec, self.algorithm
        batch = self._collate(micro_batch)
        mask = batch.mask
        # Right padding under a causal mask never touches a real token's output, so no
        # attention mask is needed; padded positions are masked out of the loss.
        logits = self.model(input_ids=batch.input_ids).logits
        # logits at position t predict token t + 1.
        logits, targets = logits[:, :-1], batch.input_ids[:, 1:]
        logprobs = token_logprobs(logits, targets, spec.rollout.temperature)
        log_ratio = log_importance_ratio(logprobs, batch.old_logprobs, mask, algo.ratio_level)
        terms = ppo_clipped(log_ratio, batch.advantages, algo.clip_eps_low, algo.clip_eps_high, algo.dual_clip_c)

        def agg(values: torch.Tensor) -> torch.Tensor:
            return aggregate(values, mask, algo.aggregation, num_seqs, num_tokens, spec.rollout.max_new_tokens)

        pg_loss = agg(terms.loss)
        loss = pg_loss
        entropy = entropy_from_logits(logits if algo.entropy_coef else logits.detach(), spec.rollout.temperature)
        if algo.entropy_coef:
            loss = loss - algo.entropy_coef * agg(entropy)
        if algo.kl_placement == "loss":
            loss = loss + algo.kl_coef * agg(kl_estimate(logprobs, batch.ref_logprobs, algo.kl_estimator))
        loss.backward()

        trained = mask > 0
        sums["pg_loss"] += float(pg_loss.detach())
        sums["entropy"] += float((entropy.detach() * mask).sum())
        sums["ppo_kl"] += float(((batch.old_logprobs - logprobs.detach()) * mask).sum())
        sums["low"] += float((terms.clipped_low & trained).sum())
        sums["high"] += float((terms.clipped_high & trained).sum())
        sums["dual"] += float((terms.clipped_dual & trained).sum())
        sums["region"] += float((terms.out_of_region & trained).sum())
        sums["tokens"] += float(mask.sum())

    def _pad(self, batch: list[Rollout]) -> torch.Tensor:
        """Right-padded prompt + response rows, [B, L], on the model's device."""
        pad = self.tokenizer.pad_token_id
        width = max(len(r.completion.prompt_ids) + len(r.completion.token_ids) for r in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        for row, item in enumerate(batch):
            input_ids[row, : len(item.completion.prompt_ids) + len(item.completion.token_ids)] = torch.tensor(
                item.completion.prompt_ids + item.completion.token_ids
            )
        return input_ids.to(self.device)

    def _collate(self, batch: list[Rollout]) -> Collated:
        """The tensors one micro-batch trains on (see `Collated`)."""
        input_ids = self._pad(batch)
        shape = (len(batch), input_ids.shape[1] - 1)
        mask, old = torch.zeros(shape), torch.zeros(shape)
        ref = torch.zeros(shape) if self.reference is not None else None
        for row, item in enumerate(batch):
            span = item.response_positions
            mask[row, span] = 1.0
            old[row, span] = item.policy_logprobs()
            if ref is not None:
                ref[row, span] = item.ref_logprobs
        return Collated(
            input_ids=input_ids,
            mask=mask.to(self.device),
            old_logprobs=old.to(self.device),
            ref_logprobs=ref.to(self.device) if ref is not None else None,
            advantages=torch.tensor([item.advantage for item in batch], device=self.device),
        )

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, step: int) -> list[Event]:
        """Held-out scores on `dataset.eval_size` test prompts, `training.eval_samples`
        samples each: 'val/acc/mean@1' (the mean accuracy of a single sample) and
        'val/pass@k' for every k of `training.eval_pass_k` (engine.evaluation).

        Decoding: the run's own sampling settings (temperature, top_p), so the scores are
        those of the policy being trained — the quantity RL optimises — rather than of its
        argmax. Greedy decoding would hide most of the early gains RL makes by sharpening
        the distribution, and a sampled score is what avg@k / mean@k numbers in the
        literature report. The random stream is re-seeded identically at every evaluation
        (common random numbers), so two evaluations of the same weights agree, differences
        between evaluations come from the weights, not the dice, and evaluating never
        moves the training stream (a resumed run stays exact).
        """
        rollout, training = self.spec.rollout, self.spec.training
        t_start = now()
        params = SamplingParams(
            n=training.eval_samples,
            temperature=rollout.temperature,
            top_p=rollout.top_p,
            max_new_tokens=rollout.max_new_tokens,
        )
        generator = torch.Generator(device=self.device).manual_seed(self.spec.seed + 1_000_003)
        rollouts, texts = self.sample(self.eval_problems, params, generator)
        self.score(rollouts, texts)
        t_end = now()
        correct = [0] * len(self.eval_problems)
        for item in rollouts:
            correct[item.group] += int(item.reward >= 1.0)
        counts = [(training.eval_samples, right) for right in correct]
        lengths = [len(item.completion.token_ids) for item in rollouts]
        values = {
            "val/acc/mean@1": float(np.mean([item.reward for item in rollouts])),
            **{f"val/pass@{k}": mean_pass_at_k(counts, k) for k in training.eval_pass_k},
            "val/response_length/mean": float(np.mean(lengths)),
            "timing_s/eval": t_end - t_start,
        }
        return [
            Metrics(step=step, values=values),
            PromptResults(step=step, split="test", results=prompt_results(rollouts)),
            Span(step=step, worker=self.worker, phase="eval", start=t_start, end=t_end),
        ]

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything besides the weights that the next step depends on (engine.checkpoint
        saves the weights as a model folder): the step counter, optimiser, LR scheduler,
        the prompt order, every random generator the trainer holds and the global ones.
        A fresh Trainer of the same spec given this (and the weights) continues bit for
        bit as this one would."""
        return {
            "step": self.step_count,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "prompt_order": list(self._order),
            "generators": generator_states(self),
            "global_rng": global_rng_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step_count = state["step"]
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self._order = list(state["prompt_order"])
        restore_generator_states(self, state["generators"])
        restore_global_rng_state(state["global_rng"])
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

    def save_checkpoint(self, run_dir: str, step: int, metrics: dict[str, float]) -> str:
        """engine.checkpoint.save_checkpoint, run where the trainer lives (a Ray actor too)."""
        return str(save_checkpoint(self, Path(run_dir), step, metrics))

    def load_checkpoint(self, folder: str) -> CheckpointInfo:
        return load_checkpoint(self, Path(folder))

    # ----------------------------------------------------------------- reporting
    def _step_metrics(
        self,
        generated: list[Rollout],
        rewards: torch.Tensor,
        advantages: torch.Tensor,
        update: UpdateResult,
        timings: dict[str, float],
    ) -> dict[str, float]:
        """The step's scalars (docs/metrics.md). What the policy did (lengths, accuracy,
        difficulty, throughput) counts every rollout generated this step; reward and
        advantages are those of the batch trained on (shaped, and after dynamic
        sampling's filter, when the algorithm has them)."""
        lengths = np.array([len(item.completion.token_ids) for item in generated], dtype=float)
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
        groups = [[item.reward for item in group] for group in group_rollouts(generated)]
        pass_rates = np.array([np.mean(g) for g in groups])
        all_correct = float(np.mean([min(g) >= 1.0 for g in groups]))
        all_wrong = float(np.mean([max(g) <= 0.0 for g in groups]))
        processed_tokens = float(lengths.sum()) + update.trained_tokens
        step_time = max(timings["step"], 1e-9)
        values = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std(unbiased=False)),
            "acc/mean": float(np.mean([item.reward >= 1.0 for item in generated])),
            "rollout/response_length/mean": float(lengths.mean()),
            "rollout/response_length/p50": float(p50),
            "rollout/response_length/p90": float(p90),
            "rollout/response_length/p99": float(p99),
            "rollout/response_length/max": float(lengths.max()),
            "rollout/clip_ratio": float(np.mean([item.completion.finish_reason == "length" for item in generated])),
            "rollout/tail_ratio": float(lengths.max() / max(p50, 1.0)),
            "advantages/abs_mean": float(advantages.abs().mean()),
            "advantages/std": float(advantages.std(unbiased=False)),
            "difficulty/frac_all_correct": all_correct,
            "difficulty/frac_all_wrong": all_wrong,
            "difficulty/frac_mixed": 1.0 - all_correct - all_wrong,
            "difficulty/pass_rate/p10": float(np.percentile(pass_rates, 10)),
            "difficulty/pass_rate/p50": float(np.percentile(pass_rates, 50)),
            "difficulty/pass_rate/p90": float(np.percentile(pass_rates, 90)),
            # NeMo-RL's definition: generated + trained tokens over step time, per device.
            "perf/throughput": processed_tokens / step_time,
            "perf/tokens_per_sec_per_gpu": processed_tokens / step_time / DEVICES_PER_TRAINER,
            "perf/generated_tokens": float(lengths.sum()),
            "perf/trained_tokens": float(update.trained_tokens),
            # Generation and training share one worker here, so each role sits idle while
            # the other runs; this is the waste asynchronous orchestration recovers.
            "rollout/idle_ratio": 1.0 - timings["gen"] / step_time,
            "trainer/idle_ratio": 1.0 - (timings["old_log_prob"] + timings["ref"] + timings["update_actor"]) / step_time,
        }
        values.update({f"timing_s/{name}": seconds for name, seconds in timings.items()})
        values.update(update.metrics)
        return values

    def _length_histogram(self, step: int, rollouts: list[Rollout]) -> LengthHistogram:
        lengths = [len(item.completion.token_ids) for item in rollouts]
        counts, _ = np.histogram(lengths, bins=self.bin_edges)
        return LengthHistogram(step=step, bin_edges=self.bin_edges, counts=[int(c) for c in counts])


def prompt_results(rollouts: list[Rollout]) -> list[PromptResult]:
    """Per-prompt attempts, successes and mean length; a prompt drawn twice in one batch
    (possible for short chains) is merged under its id."""
    merged: dict[str, tuple[Problem, int, int, int]] = {}
    for item in rollouts:
        problem, attempts, successes, tokens = merged.get(item.problem.id, (item.problem, 0, 0, 0))
        merged[item.problem.id] = (
            problem,
            attempts + 1,
            successes + int(item.reward >= 1.0),
            tokens + len(item.completion.token_ids),
        )
    return [
        PromptResult(
            prompt_id=pid,
            difficulty=problem.difficulty,
            attempts=attempts,
            successes=successes,
            mean_length=tokens / attempts,
        )
        for pid, (problem, attempts, successes, tokens) in merged.items()
    ]


def group_rollouts(rollouts: list[Rollout]) -> list[list[Rollout]]:
    """Rollouts by `group`, the groups in order of first appearance."""
    groups: dict[int, list[Rollout]] = {}
    for item in rollouts:
        groups.setdefault(item.group, []).append(item)
    return list(groups.values())


def split_evenly(items: list[T], parts: int) -> list[list[T]]:
    """`parts` consecutive slices of `items` whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    slices, start = [], 0
    for part in range(parts):
        end = start + size + (1 if part < extra else 0)
        slices.append(items[start:end])
        start = end
    return slices


def micro_batches(rollouts: list[Rollout], max_tokens: int) -> list[list[Rollout]]:
    """Split rollouts, sorted by total length, into batches whose padded size
    (rows × longest row) stays within max_tokens (a longer single row goes alone)."""
    ordered = sorted(rollouts, key=lambda r: len(r.completion.prompt_ids) + len(r.completion.token_ids))
    widths = [len(r.completion.prompt_ids) + len(r.completion.token_ids) for r in ordered]
    return pack_by_token_budget(ordered, widths, max_tokens)


def pack_by_token_budget(items: list[T], widths: list[int], max_tokens: int) -> list[list[T]]:
    """Cut `items`, already sorted by ascending width, into consecutive batches whose
    padded size (rows × widest row) stays within max_tokens; an item wider than the
    budget goes alone. The sort is the caller's, so it decides what "width" orders by."""
    batches: list[list[T]] = [[]]
    for item, width in zip(items, widths, strict=True):
        if batches[-1] and width * (len(batches[-1]) + 1) > max_tokens:
            batches.append([])
        batches[-1].append(item)
    return [batch for batch in batches if batch]
