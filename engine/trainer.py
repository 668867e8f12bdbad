"""The synchronous GRPO-family trainer: one object that samples, scores and updates.

One `step()` is a plain loop with named stages, top to bottom:

    1. prompts    next `prompts_per_step` train prompts in a seeded order
    2. generate   `n` completions of each (engine.generation, KV cache)
    3. reward     the task's checker scores each completion
    4. advantage  per group of completions of one prompt (engine.losses)
    5. update     one optimiser step over the whole batch, micro-batched by tokens
    6. report     Metrics / LengthHistogram / PromptResults / Span events

The algorithm (advantage estimator, aggregation, clip range, KL and entropy terms) comes
from the resolved spec; the trainer only wires the parts together. It runs the same in
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

from engine.checkpoint import (
    CheckpointInfo,
    generator_states,
    global_rng_state,
    load_checkpoint,
    restore_generator_states,
    restore_global_rng_state,
    save_checkpoint,
)
from engine.evaluation import mean_pass_at_k
from engine.events import Event, LengthHistogram, Metrics, PromptResult, PromptResults, Span, now
from engine.generation import Completion, SamplingParams, generate
from engine.losses import aggregate, entropy_from_logits, group_advantages, kl_k3, ppo_clipped, token_logprobs
from engine.models import encode_prompts, load_policy
from engine.spec import RunSpec
from engine.tasks import Problem, resolve_task

# The train prompts a run cycles through (in a seeded order, reshuffled each pass).
TRAIN_POOL_SIZE = 20_000
# Seed of the held-out prompts: the same for every run, so runs compare on one test set.
EVAL_SEED = 0
LENGTH_BINS = 32

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

    group: int  # index of its prompt in this step's batch
    problem: Problem
    completion: Completion
    reward: float
    advantage: float = 0.0


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
        self.reference = None
        if (self.algorithm.kl_coef or 0.0) > 0:
            self.reference = copy.deepcopy(self.model).eval().requires_grad_(False)

        self.train_pool = self.task.problems("train", TRAIN_POOL_SIZE, seed=spec.seed)
        self.eval_problems = self.task.problems("test", spec.dataset.eval_size, seed=EVAL_SEED)
        self._order_rng = random.Random(spec.seed)
        self._order: list[int] = []
        # Generators live on the model's device: torch.multinomial on CUDA needs a CUDA one.
        self._sampling_rng = torch.Generator(device=self.device).manual_seed(spec.seed)
        self.step_count = 0
        self.bin_edges = length_bin_edges(spec.rollout.max_new_tokens)

    # ----------------------------------------------------------------- data
    def next_prompts(self, count: int) -> list[Problem]:
        """The next `count` train prompts: passes over the pool, each in a fresh seeded order."""
        batch = []
        while len(batch) < count:
            if not self._order:
                self._order = list(range(len(self.train_pool)))
                self._order_rng.shuffle(self._order)
            batch.append(self.train_pool[self._order.pop()])
        return batch

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

    # ----------------------------------------------------------------- step
    def step(self) -> list[Event]:
        """One GRPO-family step; returns its events (see the module docstring)."""
        rollout = self.spec.rollout
        self.step_count += 1
        step = self.step_count
        t_start = now()

        # 1-2. prompts and generation
        problems = self.next_prompts(rollout.prompts_per_step)
        params = SamplingParams(
            n=rollout.n, temperature=rollout.temperature, top_p=rollout.top_p, max_new_tokens=rollout.max_new_tokens
        )
        rollouts, texts = self.sample(problems, params, self._sampling_rng)
        t_gen = now()

        # 3. reward
        for item, text in zip(rollouts, texts):
            item.reward = self.task.score(item.problem, text)
        t_reward = now()

        # 4. advantages, keyed by group (variable group sizes are fine)
        rewards = torch.tensor([item.reward for item in rollouts])
        advantages = group_advantages(rewards, [item.group for item in rollouts], self.algorithm.advantage)
        for item, advantage in zip(rollouts, advantages.tolist()):
            item.advantage = advantage
        t_adv = now()

        # 5. update
        update_stats = self.update(rollouts)
        t_end = now()

        # 6. report
        timings = {
            "gen": t_gen - t_start,
            "reward": t_reward - t_gen,
            "adv": t_adv - t_reward,
            "update_actor": t_end - t_adv,
            "step": t_end - t_start,
        }
        return [
            Metrics(step=step, values=self._step_metrics(rollouts, rewards, advantages, update_stats, timings)),
            self._length_histogram(step, rollouts),
            PromptResults(step=step, split="train", results=prompt_results(rollouts)),
            Span(step=step, worker=self.worker, phase="generate", start=t_start, end=t_gen),
            Span(step=step, worker=self.worker, phase="reward", start=t_gen, end=t_reward),
            Span(step=step, worker=self.worker, phase="train", start=t_adv, end=t_end),
        ]

    def update(self, rollouts: list[Rollout]) -> dict[str, float]:
        """One optimiser step on the batch. Gradients accumulate over micro-batches of at
        most `training.micro_batch_tokens` padded tokens (sequences sorted by length so
        padding stays small); `aggregate` normalises by whole-batch counts, so the sum
        over micro-batches is the full-batch loss and memory stays bounded."""
        spec, algo = self.spec, self.algorithm
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        num_seqs = len(rollouts)
        num_tokens = sum(len(r.completion.token_ids) for r in rollouts)
        sums = {"pg_loss": 0.0, "entropy": 0.0, "ppo_kl": 0.0, "kl": 0.0, "low": 0.0, "high": 0.0, "region": 0.0}
        trained_tokens = 0
        for batch in micro_batches(rollouts, spec.training.micro_batch_tokens):
            input_ids, mask, old_logprobs, advantages = self._collate(batch)
            # Right padding under a causal mask never touches a real token's output, so no
            # attention mask is needed; padded positions are masked out of the loss.
            logits = self.model(input_ids=input_ids).logits
            # logits at position t predict token t + 1.
            logits, targets = logits[:, :-1], input_ids[:, 1:]
            logprobs = token_logprobs(logits, targets, spec.rollout.temperature)
            terms = ppo_clipped(logprobs, old_logprobs, advantages, algo.clip_eps_low, algo.clip_eps_high)

            def agg(values: torch.Tensor) -> torch.Tensor:
                return aggregate(values, mask, algo.aggregation, num_seqs, num_tokens, spec.rollout.max_new_tokens)

            pg_loss = agg(terms.loss)
            loss = pg_loss
            entropy = entropy_from_logits(logits if algo.entropy_coef else logits.detach(), spec.rollout.temperature)
            if algo.entropy_coef:
                loss = loss - algo.entropy_coef * agg(entropy)
            if self.reference is not None:
                with torch.no_grad():
                    ref_logits = self.reference(input_ids=input_ids).logits[:, :-1]
                    ref_logprobs = token_logprobs(ref_logits, targets, spec.rollout.temperature)
                kl = kl_k3(logprobs, ref_logprobs)
                loss = loss + algo.kl_coef * agg(kl)
                sums["kl"] += float((kl.detach() * mask).sum())
            loss.backward()

            sums["pg_loss"] += float(pg_loss.detach())
            sums["entropy"] += float((entropy.detach() * mask).sum())
            sums["ppo_kl"] += float(((old_logprobs - logprobs.detach()) * mask).sum())
            sums["low"] += float((terms.clipped_low & (mask > 0)).sum())
            sums["high"] += float((terms.clipped_high & (mask > 0)).sum())
            sums["region"] += float((terms.out_of_region & (mask > 0)).sum())
            trained_tokens += sum(len(r.completion.prompt_ids) + len(r.completion.token_ids) for r in batch)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), spec.training.grad_clip)
        lr = float(self.optimizer.param_groups[0]["lr"])
        self.optimizer.step()
        self.scheduler.step()
        tokens = max(num_tokens, 1)
        stats = {
            "actor/pg_loss": sums["pg_loss"],
            "actor/entropy": sums["entropy"] / tokens,
            "actor/grad_norm": float(grad_norm),
            "actor/lr": lr,
            "actor/ppo_kl": sums["ppo_kl"] / tokens,
            "clip_ratio/low_mean": sums["low"] / tokens,
            "clip_ratio/high_mean": sums["high"] / tokens,
            "clip_ratio/region_mean": sums["region"] / tokens,
            "_trained_tokens": float(trained_tokens),
        }
        if self.reference is not None:
            stats["kl"] = sums["kl"] / tokens
        return stats

    def _collate(self, batch: list[Rollout]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Right-padded prompt + response rows.

        Returns input_ids [B, L] (padding = pad id), mask [B, L − 1] (1 where position t
        predicts a generated token), old_logprobs [B, L − 1] (the sampler's, aligned with
        mask) and advantages [B].
        """
        pad = self.tokenizer.pad_token_id
        width = max(len(r.completion.prompt_ids) + len(r.completion.token_ids) for r in batch)
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width - 1))
        old = torch.zeros((len(batch), width - 1))
        for row, item in enumerate(batch):
            prompt, response = item.completion.prompt_ids, item.completion.token_ids
            input_ids[row, : len(prompt) + len(response)] = torch.tensor(prompt + response)
            start = len(prompt) - 1  # position that predicts the first response token
            mask[row, start : start + len(response)] = 1.0
            old[row, start : start + len(response)] = torch.tensor(item.completion.logprobs)
        advantages = torch.tensor([item.advantage for item in batch])
        return input_ids.to(self.device), mask.to(self.device), old.to(self.device), advantages.to(self.device)

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
        for item, text in zip(rollouts, texts):
            item.reward = self.task.score(item.problem, text)
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
        rollouts: list[Rollout],
        rewards: torch.Tensor,
        advantages: torch.Tensor,
        update_stats: dict[str, float],
        timings: dict[str, float],
    ) -> dict[str, float]:
        lengths = np.array([len(item.completion.token_ids) for item in rollouts], dtype=float)
        p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
        groups: dict[int, list[float]] = {}
        for item in rollouts:
            groups.setdefault(item.group, []).append(item.reward)
        pass_rates = np.array([np.mean(g) for g in groups.values()])
        all_correct = float(np.mean([min(g) >= 1.0 for g in groups.values()]))
        all_wrong = float(np.mean([max(g) <= 0.0 for g in groups.values()]))
        generated = float(lengths.sum())
        trained = update_stats.pop("_trained_tokens")
        step_time = max(timings["step"], 1e-9)
        values = {
            "reward/mean": float(rewards.mean()),
            "reward/std": float(rewards.std(unbiased=False)),
            "acc/mean": float(np.mean([item.reward >= 1.0 for item in rollouts])),
            "rollout/response_length/mean": float(lengths.mean()),
            "rollout/response_length/p50": float(p50),
            "rollout/response_length/p90": float(p90),
            "rollout/response_length/p99": float(p99),
            "rollout/response_length/max": float(lengths.max()),
            "rollout/clip_ratio": float(np.mean([item.completion.finish_reason == "length" for item in rollouts])),
            "rollout/tail_ratio": float(lengths.max() / max(p50, 1.0)),
            "advantages/abs_mean": float(advantages.abs().mean()),
            "difficulty/frac_all_correct": all_correct,
            "difficulty/frac_all_wrong": all_wrong,
            "difficulty/frac_mixed": 1.0 - all_correct - all_wrong,
            "difficulty/pass_rate/p10": float(np.percentile(pass_rates, 10)),
            "difficulty/pass_rate/p50": float(np.percentile(pass_rates, 50)),
            "difficulty/pass_rate/p90": float(np.percentile(pass_rates, 90)),
            "perf/tokens_per_sec": (generated + trained) / step_time,
            "perf/generated_tokens": generated,
            # Generation and training share one worker here, so each role sits idle while
            # the other runs; this is the waste asynchronous orchestration recovers.
            "rollout/idle_ratio": 1.0 - timings["gen"] / step_time,
            "trainer/idle_ratio": 1.0 - timings["update_actor"] / step_time,
        }
        values.update({f"timing_s/{name}": seconds for name, seconds in timings.items()})
        values.update(update_stats)
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
