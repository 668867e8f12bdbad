"""The synchronous recipe: every step samples with the current policy, then trains on
what it sampled (GRPO, Dr.GRPO, DAPO, GSPO, RLOO; any curriculum).

One `step()`, top to bottom:

    0. probe        rollouts a sampler needs before it plans, never trained on (CurES's
                    pre-rollouts of a new chunk); most samplers ask for none
    1. plan         the sampler picks the step's prompts and rollouts per prompt
    2. collect      the rollout strategy has the collector generate and verify them
                    (DAPO's dynamic sampling asks the sampler for more as it refills)
    3. log-probs    π_old when the update takes several optimiser steps; π_ref when a KL
                    term is on
    4. shape        reward shaping: DAPO's overlong penalty, the KL in the reward (after
                    the log-probs, which it reads)
    5. advantages   per group of one prompt's rollouts (groups may differ in size)
    6. updates      epochs × mini-batches optimiser steps with the algorithm's policy loss
    7. push weights the collector's backend gets the new weights, stamped with the
                    version (optimiser steps so far) every later token carries
    8. observe      the difficulty store and the sampler learn from every verified rollout
    9. telemetry    Metrics, LengthHistogram, PromptResults, DifficultyUpdates,
                    SampleRecords and the step's Spans

Colocated (resources.rollout_workers 0, the default), generation and training share one
device: the collector's backend decodes with the training backend's own model, so
pushing weights moves only the version. Split (rollout_workers k ≥ 1), the step's
rollouts come from k rollout workers (engine.rollout.workers: Ray actors under executor
ray, each with its own copy of the policy and resources.rollout_cpus/rollout_gpus;
threads in process), which the strategies reach through a PooledCollector; the trainer
waits meanwhile (its `wait` spans), pushes the weights to every worker with their
version (through Ray's object store; `timing_s/worker_sync` is the slowest worker's
pause-load-resume) and evaluates on its own model. With one worker a
split run reports what the colocated run does (tests/engine/test_sync_split.py).

The recipe returns events instead of emitting them, so the same object works in process
or as a Ray actor whose results the driver forwards (engine.orchestration).
"""

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.algorithms import POLICY_LOSSES, REWARD_SHAPERS
from engine.algorithms.advantages import group_advantages
from engine.algorithms.kl import kl_estimate
from engine.checkpoint import CheckpointInfo, global_rng_state, read_state, restore_global_rng_state, write_checkpoint
from engine.events import DifficultyUpdates, Event, Metrics, PromptResults, SampleRecords
from engine.evaluation import evaluate
from engine.problems import Problem
from engine.rollout import ROLLOUT_STRATEGIES
from engine.rollout.collector import build_collector
from engine.rollout.types import Group, Rollout, RolloutBatch
from engine.rollout.workers import PooledCollector, WorkerPool
from engine.sampling import SAMPLERS
from engine.sampling.base import PlanItem
from engine.sampling.difficulty import DifficultyStore, outcomes_of
from engine.spec import RunSpec
from engine.tasks import resolve_task
from engine.telemetry import (
    Timeline,
    UpdateResult,
    length_bin_edges,
    length_histogram,
    prompt_results,
    sample_records,
    sampled_prompts,
    step_metrics,
)
from engine.training import TRAINING_BACKENDS
from engine.training.batching import split_evenly

# The train prompts a run cycles through (in a seeded order, reshuffled each pass).
TRAIN_POOL_SIZE = 20_000
# Seed of the held-out prompts: the same for every run, so runs compare on one test set.
EVAL_SEED = 0
TRAINER = "trainer"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class SyncRecipe:
    def __init__(self, spec: RunSpec):
        self.spec = spec
        seed_everything(spec.seed)
        # Ray sets OMP_NUM_THREADS to the actor's CPUs; in process we ask for the same.
        torch.set_num_threads(max(1, min(spec.resources.cpus, os.cpu_count() or 1)))
        algorithm, rollout = spec.algorithm, spec.rollout
        self.loss = POLICY_LOSSES.load(algorithm.policy_loss)(algorithm, rollout.temperature, rollout.max_new_tokens)
        self.training = TRAINING_BACKENDS.load(spec.backends.training)(spec, needs_reference=self.loss.needs_reference)
        self.task = resolve_task(spec.dataset)
        # Colocated: the collector's backend decodes with the training backend's own model.
        self.collector = build_collector(spec, self.training.model, self.training.tokenizer, self.task)
        self.eval_problems: list[Problem] = self.task.problems(
            spec.training.eval_split, spec.dataset.eval_size, seed=EVAL_SEED
        )
        curriculum = spec.curriculum
        self.difficulty = DifficultyStore(curriculum.prior_alpha, curriculum.prior_beta)
        self.sampler = SAMPLERS.load(curriculum.strategy)(
            self.task.problems("train", TRAIN_POOL_SIZE, seed=spec.seed),
            n=rollout.n,
            seed=spec.seed,
            **curriculum.strategy_parameters(),
        )
        self.strategy = ROLLOUT_STRATEGIES.load(rollout.strategy)(spec)
        self.shapers = [REWARD_SHAPERS.load(name)(spec) for name in active_shapers(spec)]
        self.step_count = 0
        self.probed: list[Group] = []  # the step's probe groups, observed with its batch
        self.bin_edges = length_bin_edges(rollout.max_new_tokens)
        # Split: the rollout workers generate (built last, so the trainer's random state
        # is the colocated run's); the trainer's own collector only evaluates.
        self.workers = WorkerPool(spec) if spec.resources.rollout_workers else None
        self.rollout = self.collector if self.workers is None else PooledCollector(self.workers, TRAINER)
        if self.workers is not None:
            self.collector.worker = TRAINER

    @property
    def updates_per_batch(self) -> int:
        """Optimiser steps per rollout batch: from the second on, π_θ is not π_old."""
        return self.spec.training.mini_batches * self.spec.training.epochs

    # ----------------------------------------------------------------- the step
    def step(self) -> list[Event]:
        """One step of the configured algorithm; returns its events (module docstring)."""
        self.step_count += 1
        timeline = Timeline(self.step_count)
        return self.learn(self.step_count, self.collect(self.step_count, timeline), timeline)

    def collect(self, step: int, timeline: Timeline) -> RolloutBatch:
        """0-2. probe, plan and collect: the batch the step trains on (the async recipe's
        comes from its rollout workers instead)."""
        self.probed = []

        def probe(plan: list[PlanItem]) -> list[Group]:
            groups = self.rollout.collect(plan, first_group=0, timeline=timeline)
            self.probed.extend(groups)
            return groups

        self.sampler.probe(step, probe, self.training.embedding_grad_norms)
        plan = self.sampler.next(step, self.spec.rollout.prompts_per_step)
        return self.strategy.collect(step, plan, lambda count: self.sampler.next(step, count), self.rollout, timeline)

    def push_weights(self, timeline: Timeline) -> None:
        """7. the generation backend gets the new weights and their version; split, every
        rollout worker too (and the step's timeline their spans)."""
        with timeline.phase(TRAINER, "sync", "sync"):
            self.collector.load_weights(self.training.weights(), self.training.version)
            if self.workers is not None:
                self.workers.update_weights(self.training.weights(), self.training.version)
        if self.workers is not None:
            self.workers.spans_into(timeline)

    def rollout_workers(self) -> list[str]:
        """The workers that generate, as the step's spans name them."""
        return [self.collector.worker] if self.workers is None else list(self.workers.names)

    def learn(self, step: int, batch: RolloutBatch, timeline: Timeline) -> list[Event]:
        """3-9: log-probs, shaping, advantages, updates, weight push, observe, telemetry."""
        spec = self.spec
        rollouts = batch.rollouts  # [N] the groups trained on, flattened
        metrics = dict(batch.metrics)

        # 3. log-probs: π_old is the behaviour policy only while every token was sampled
        # with the weights the update starts from (never so for APRIL's resumed tokens)
        with timeline.phase(TRAINER, "train", "old_log_prob"):
            if self.updates_per_batch > 1 or sampled_before(rollouts, self.training.version):
                for item, logprobs in zip(rollouts, self.training.logprobs(rollouts)):
                    item.old_logprobs = logprobs
        with timeline.phase(TRAINER, "train", "ref"):
            if self.training.reference is not None:
                for item, logprobs in zip(rollouts, self.training.logprobs(rollouts, reference=True)):
                    item.ref_logprobs = logprobs
                metrics["kl"] = mean_reference_kl(rollouts, spec.algorithm.kl_estimator)

        # 4. shape
        with timeline.phase(TRAINER, "train", "reward"):
            for shaper in self.shapers:
                metrics.update(shaper(rollouts))

        # 5. advantages; groups dynamic sampling only topped the batch up with get none
        with timeline.phase(TRAINER, "train", "adv"):
            rewards = torch.tensor([item.reward + item.shaping for item in rollouts])  # [N]
            advantages = group_advantages(rewards, [item.group for item in rollouts], spec.algorithm.advantage)
            trainable = torch.tensor([group.trainable for group in batch.groups for _ in group.rollouts])
            advantages = torch.where(trainable, advantages, torch.zeros_like(advantages))  # [N]
            for item, advantage in zip(rollouts, advantages.tolist()):
                item.advantage = advantage

        # 6. updates: epochs × mini-batches of whole groups, in the batch's order
        with timeline.phase(TRAINER, "train", "update_actor"):
            statistics = self.training.begin_batch()
            mini_batches = split_evenly(batch.groups, spec.training.mini_batches)
            for _ in range(spec.training.epochs):
                for groups in mini_batches:
                    mini_batch = [item for group in groups for item in group.rollouts]
                    self.training.optimizer_step(mini_batch, self.loss, statistics)
            self.training.end_batch()
            every = spec.algorithm.reference_reset_every
            if every is not None:
                if step % every == 0:  # ProRL: the next step's KL is measured from here
                    self.training.reset_reference()
                metrics["actor/reference_resets"] = float(self.training.reference_resets)

        # 7. push weights
        self.push_weights(timeline)
        if self.workers is not None:
            metrics["timing_s/worker_sync"] = self.workers.sync_seconds

        # 8. observe every verified rollout, trained on or not (the sampler saw its probe's)
        generated = batch.generated_rollouts
        observed = self.probed + batch.generated
        self.difficulty.allocate(step, [(group.problem.id, len(group.rollouts)) for group in observed])
        self.difficulty.observe(step, outcomes_of([item for group in observed for item in group.rollouts]))
        self.sampler.observe(step, generated)
        self.probed = []

        # 9. telemetry
        workers = self.rollout_workers()
        spans = timeline.close([*workers, TRAINER])
        update = UpdateResult(metrics=statistics.metrics(), trained_tokens=statistics.trained_tokens)
        metrics.update(
            step_metrics(
                batch.generated,
                rewards,
                advantages,
                update,
                dict(timeline.seconds),
                rollout_busy=sum(timeline.busy(worker) for worker in workers) / len(workers),
                trainer_busy=timeline.busy(TRAINER),
                # perf/*_per_gpu divide by the trainer's devices: one per data-parallel
                # rank (deepspeed; the torch backend trains on one device, a GPU or the CPU).
                devices=self.spec.backends.data_parallel or 1,
            )
        )
        metrics.update(self.sampler.metrics(step))
        return [
            Metrics(step=step, values=metrics),
            length_histogram(step, generated, self.bin_edges),
            PromptResults(step=step, split="train", results=prompt_results(generated)),
            DifficultyUpdates(step=step, prompts=self.difficulty.changes()),
            SampleRecords(
                step=step,
                samples=sample_records(generated, spec.telemetry.samples_per_prompt),
                prompts=sampled_prompts(generated),
            ),
            *spans,
        ]

    # ----------------------------------------------------------------- evaluation
    def evaluate(self, step: int) -> list[Event]:
        return evaluate(self.spec, self.collector, self.eval_problems, step)

    # ----------------------------------------------------------------- checkpoints
    def parts(self) -> dict[str, Any]:
        """The stateful parts, by the names their states have in a checkpoint."""
        return {
            "sampler": self.sampler,
            "strategy": self.strategy,
            "collector": self.collector,
            "training": self.training,
            "difficulty": self.difficulty,
        } | ({"rollout": self.rollout} if self.workers is not None else {})

    def state_dict(self) -> dict[str, Any]:
        """Everything besides the weights that the next step depends on: the step
        counter, the global random states and each part's own state. A fresh recipe of
        the same spec given this (and the weights) continues bit for bit."""
        return {
            "step": self.step_count,
            "global_rng": global_rng_state(),
            **{name: part.state_dict() for name, part in self.parts().items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step_count = state["step"]
        for name, part in self.parts().items():
            part.load_state_dict(state[name])
        restore_global_rng_state(state["global_rng"])
        self.collector.load_weights(self.training.weights(), self.training.version)
        if self.workers is not None:
            self.workers.update_weights(self.training.weights(), self.training.version)

    def write_checkpoint(self, run_dir: str, step: int, metrics: dict[str, float]) -> str:
        """engine.checkpoint.write_checkpoint, run where the recipe lives (a Ray actor too):
        the written, not yet published, folder."""
        return str(write_checkpoint(Path(run_dir), step, metrics, self.training.save_model, self.state_dict()))

    def close(self) -> None:
        """Stop what the run holds beyond this process's memory, when it ends: its rollout
        workers (split or async), the vLLM engine (its shutdown destroys torch.distributed's
        world) and DeepSpeed's data-parallel rank processes."""
        if self.workers is not None:
            self.workers.close()
        for part in (self.collector.backend, self.training):
            getattr(part, "close", lambda: None)()

    def load_checkpoint(self, folder: str) -> CheckpointInfo:
        info, model_folder, state = read_state(Path(folder))
        self.training.load_model(model_folder)
        self.load_state_dict(state)
        return info



def active_shapers(spec: RunSpec) -> list[str]:
    """The reward shapers the algorithm turns on, in the order they add up."""
    algorithm = spec.algorithm
    names = []
    if algorithm.overlong_buffer_fraction > 0:
        names.append("overlong")
    if algorithm.kl_placement == "reward":
        names.append("kl_penalty")
    return names


def sampled_before(rollouts: list[Rollout], version: int) -> bool:
    """Whether any token was sampled by weights older than `version`."""
    return any(v < version for item in rollouts for v in item.versions)


def mean_reference_kl(rollouts: list[Rollout], estimator: str) -> float:
    """The mean per-token KL estimate between the sampling policy and the reference."""
    total, tokens = 0.0, 0
    for item in rollouts:
        kl = kl_estimate(item.policy_logprobs(), item.ref_logprobs, estimator)
        total, tokens = total + float(kl.sum()), tokens + len(kl)
    return total / max(tokens, 1)
