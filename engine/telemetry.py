"""What a step reports: the busy/idle timeline, the step's scalars, the length histogram,
per-prompt results and the sample records for drill-down (metric names: docs/metrics.md).

A recipe opens a `Timeline` per step and wraps each stage in `timeline.phase(worker,
phase, label)`: the phase is what the busy/idle chart colours (engine.events.Phase), the
label what `timing_s/<label>` sums. Closing the timeline fills each worker's gaps in the
step with `idle` spans, so every worker's time in a step adds up to the step.
"""

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

try:  # nvidia-ml-py, the `gpu` extra; absent on CPU machines, where runs report no GPU metrics
    import pynvml
except ImportError:  # pragma: no cover - depends on the machine
    pynvml = None

from engine.events import LengthHistogram, Phase, PromptResult, PromptText, SampleRecord, Span, monotonic_now
from engine.rollout.types import Group, Rollout

LENGTH_BINS = 32
# A sample record keeps at most this much of the response text: enough to read a
# solution, bounded so a run's drill-down table stays small whatever max_new_tokens is.
SAMPLE_TEXT_CHARS = 4096
# Gaps shorter than this between a worker's spans are bookkeeping, not idle time.
MERGE_GAP_S = 1e-3


class Timeline:
    """The spans of one step (or evaluation), on the monotonic clock."""

    def __init__(self, step: int):
        self.step = step
        self.start = monotonic_now()
        self.spans: list[Span] = []
        self.seconds: dict[str, float] = defaultdict(float)  # by label

    @contextmanager
    def phase(self, worker: str, phase: Phase, label: str | None = None) -> Iterator[None]:
        begin = monotonic_now()
        try:
            yield
        finally:
            end = monotonic_now()
            self.spans.append(Span(step=self.step, worker=worker, phase=phase, start=begin, end=end))
            self.seconds[label or phase] += end - begin

    def close(self, workers: Sequence[str]) -> list[Span]:
        """Every span of the step, a worker's back-to-back spans of one phase merged (the
        trainer's log-prob, shaping, advantage and update stages are one `train` span),
        with `idle` spans filling each worker's gaps between the step's start and now, so
        each worker's spans tile the step exactly. A gap under MERGE_GAP_S is bookkeeping
        between two stages, not idle time: the span before it (or, at the step's start,
        the one after) absorbs it. The step's length goes into seconds['step']."""
        end = monotonic_now()
        self.seconds["step"] = end - self.start
        spans: list[Span] = []
        for worker in workers:
            mine: list[Span] = []
            cursor = self.start
            for span in sorted((s for s in self.spans if s.worker == worker), key=lambda s: s.start):
                gap = span.start - cursor
                if gap > MERGE_GAP_S:
                    mine.append(Span(step=self.step, worker=worker, phase="idle", start=cursor, end=span.start))
                elif gap > 0 and mine:
                    mine[-1] = mine[-1].model_copy(update={"end": span.start})
                elif gap > 0:
                    span = span.model_copy(update={"start": cursor})
                if mine and mine[-1].phase == span.phase:
                    mine[-1] = mine[-1].model_copy(update={"end": max(mine[-1].end, span.end)})
                else:
                    mine.append(span)
                cursor = max(cursor, span.end)
            if end - cursor > MERGE_GAP_S:
                mine.append(Span(step=self.step, worker=worker, phase="idle", start=cursor, end=end))
            elif mine:
                mine[-1] = mine[-1].model_copy(update={"end": end})
            spans += mine
        return sorted(spans, key=lambda s: (s.start, s.worker))

    def busy(self, worker: str) -> float:
        """Seconds `worker` spent in phases other than idle and wait."""
        return sum(s.end - s.start for s in self.spans if s.worker == worker and s.phase not in ("idle", "wait"))


class NvmlSampler:
    """GPU utilisation and memory of every NVIDIA GPU on the node, through NVML, as step
    metrics: `gpu/<i>/utilization` (percent of the last sample period the GPU was busy),
    `gpu/<i>/memory_used_mb` and `gpu/<i>/memory_total_mb` (MiB), i the NVML index.
    Nothing (an empty mapping) where nvidia-ml-py is not installed or NVML finds no GPU:
    the dashboard then says the run's nodes have none. NVML is initialised once, on the
    first sample; a failing read drops that GPU from the step rather than the step."""

    def __init__(self) -> None:
        self.handles: list | None = None

    def _open(self) -> list:
        if pynvml is None:
            return []
        try:
            pynvml.nvmlInit()
            return [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except pynvml.NVMLError:
            return []  # no driver, or no GPU

    def sample(self) -> dict[str, float]:
        if self.handles is None:
            self.handles = self._open()
        values: dict[str, float] = {}
        for index, handle in enumerate(self.handles):
            try:
                utilization = pynvml.nvmlDeviceGetUtilizationRates(handle)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            except pynvml.NVMLError:
                continue
            values[f"gpu/{index}/utilization"] = float(utilization.gpu)
            values[f"gpu/{index}/memory_used_mb"] = memory.used / 2**20
            values[f"gpu/{index}/memory_total_mb"] = memory.total / 2**20
        return values


NVML = NvmlSampler()  # one per process: the trainer's node


@dataclass
class UpdateResult:
    metrics: dict[str, float]  # actor/*, clip_ratio/*
    trained_tokens: int  # prompt + response tokens of every training forward pass


def length_bin_edges(max_new_tokens: int, bins: int = LENGTH_BINS) -> list[int]:
    """Fixed integer bin edges for a run's response lengths: `bins` equal widths from 0
    to at least max_new_tokens (numpy closes the last bin, so a truncated response,
    max_new_tokens long, lands in it)."""
    width = max(1, -(-max_new_tokens // bins))  # ceil
    return list(range(0, max_new_tokens + width, width))


def length_histogram(step: int, rollouts: Sequence[Rollout], bin_edges: list[int]) -> LengthHistogram:
    counts, _ = np.histogram([item.length for item in rollouts], bins=bin_edges)
    return LengthHistogram(step=step, bin_edges=bin_edges, counts=[int(c) for c in counts])


def prompt_results(rollouts: Sequence[Rollout]) -> list[PromptResult]:
    """Per-prompt attempts, successes and mean length; a prompt drawn twice in one batch
    (possible for short chains) is merged under its id."""
    merged: dict[str, list] = {}
    for item in rollouts:
        entry = merged.setdefault(item.problem.id, [item.problem, 0, 0, 0])
        entry[1] += 1
        entry[2] += int(item.correct)
        entry[3] += item.length
    return [
        PromptResult(
            prompt_id=pid, difficulty=problem.difficulty, attempts=attempts, successes=successes, mean_length=tokens / attempts
        )
        for pid, (problem, attempts, successes, tokens) in merged.items()
    ]


def sample_records(rollouts: Sequence[Rollout], per_prompt: int) -> list[SampleRecord]:
    """At most `per_prompt` (≥ 2) samples of each prompt: its first correct and its first
    wrong one where both exist, then the others in order, until the bound."""
    by_prompt: dict[str, list[Rollout]] = {}
    for item in rollouts:
        by_prompt.setdefault(item.problem.id, []).append(item)
    records = []
    for items in by_prompt.values():
        first_right = next((i for i, item in enumerate(items) if item.correct), None)
        first_wrong = next((i for i, item in enumerate(items) if not item.correct), None)
        chosen = {i for i in (first_right, first_wrong) if i is not None}
        chosen |= set([i for i in range(len(items)) if i not in chosen][: per_prompt - len(chosen)])
        records += [
            SampleRecord(
                prompt_id=item.problem.id,
                response=item.text[:SAMPLE_TEXT_CHARS],
                reward=item.reward,
                length=item.length,
                status=item.status,
                first_version=item.versions[0] if item.versions else -1,
                last_version=item.versions[-1] if item.versions else -1,
            )
            for item in (items[i] for i in sorted(chosen))
        ]
    return records


def sampled_prompts(rollouts: Sequence[Rollout]) -> list[PromptText]:
    """Each prompt of `rollouts` once, in first-seen order: the text the model was given
    and the reference answer, capped like a response (sample_records keeps at least one
    sample of every prompt, so these are exactly the prompts of its records)."""
    problems = {item.problem.id: item.problem for item in rollouts}
    return [
        PromptText(prompt_id=problem.id, prompt=problem.prompt[:SAMPLE_TEXT_CHARS], answer=problem.answer[:SAMPLE_TEXT_CHARS])
        for problem in problems.values()
    ]


def step_metrics(
    generated: Sequence[Group],
    rewards,
    advantages,
    update: UpdateResult,
    seconds: dict[str, float],
    rollout_busy: float,
    trainer_busy: float,
    devices: int,
) -> dict[str, float]:
    """The step's scalars (docs/metrics.md). What the policy did (lengths, accuracy,
    difficulty, throughput) counts every rollout generated this step; reward and
    advantages ([N] tensors) are those of the batch trained on (shaped, and after
    dynamic sampling's filter, when the algorithm has them)."""
    rollouts = [item for group in generated for item in group.rollouts]
    lengths = np.array([item.length for item in rollouts], dtype=float)
    p50, p90, p99 = np.percentile(lengths, [50, 90, 99])
    groups = [group.rewards for group in generated]
    pass_rates = np.array([np.mean(g) for g in groups])
    all_correct = float(np.mean([min(g) >= 1.0 for g in groups]))
    all_wrong = float(np.mean([max(g) <= 0.0 for g in groups]))
    processed_tokens = float(lengths.sum()) + update.trained_tokens
    step_time = max(seconds["step"], 1e-9)
    values = {
        "reward/mean": float(rewards.mean()),
        "reward/std": float(rewards.std(unbiased=False)),
        "acc/mean": float(np.mean([item.correct for item in rollouts])),
        "rollout/response_length/mean": float(lengths.mean()),
        "rollout/response_length/p50": float(p50),
        "rollout/response_length/p90": float(p90),
        "rollout/response_length/p99": float(p99),
        "rollout/response_length/max": float(lengths.max()),
        "rollout/clip_ratio": float(np.mean([item.status == "truncated" for item in rollouts])),
        "rollout/aborted_ratio": float(np.mean([item.status == "aborted" for item in rollouts])),
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
        "perf/tokens_per_sec_per_gpu": processed_tokens / step_time / devices,
        "perf/generated_tokens": float(lengths.sum()),
        "perf/trained_tokens": float(update.trained_tokens),
        "rollout/idle_ratio": 1.0 - rollout_busy / step_time,
        "trainer/idle_ratio": 1.0 - trainer_busy / step_time,
    }
    values.update({f"timing_s/{name}": value for name, value in seconds.items()})
    values.update(update.metrics)
    values.update(NVML.sample())
    return values
