"""Held-out evaluation: the run's collector samples the test prompts; pass@k from several
samples per prompt (the estimator is torch-free).

pass@k is the chance that at least one of k samples is correct. Drawing n ≥ k samples of
a prompt and counting c correct ones, the unbiased estimator (Chen et al. 2021, the
Codex paper) is

    pass@k = 1 − C(n − c, k) / C(n, k)

averaged over prompts. The binomials overflow for large n, so it is computed as the
equal product 1 − Π_{i = n−c+1}^{n} (1 − k / i); when fewer than k samples are wrong
every draw of k contains a correct one and pass@k is exactly 1.
"""

from collections.abc import Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engine.events import Event
    from engine.problems import Problem
    from engine.rollout.collector import Collector
    from engine.spec import RunSpec

# Evaluation's random stream: the run's seed shifted, so it never shares the training one.
EVAL_STREAM_OFFSET = 1_000_003


def pass_at_k(samples: int, correct: int, k: int) -> float:
    """Unbiased pass@k of one prompt with `correct` of `samples` samples right."""
    if not 0 <= correct <= samples or not 1 <= k <= samples:
        raise ValueError(f"pass@k needs 0 ≤ correct ≤ samples and 1 ≤ k ≤ samples, got {correct}, {samples}, {k}")
    if samples - correct < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(samples - correct + 1, samples + 1)))


def mean_pass_at_k(counts: Iterable[tuple[int, int]], k: int) -> float:
    """pass@k averaged over prompts given (samples, correct) per prompt."""
    return float(np.mean([pass_at_k(samples, correct, k) for samples, correct in counts]))


def evaluate(spec: "RunSpec", collector: "Collector", problems: "list[Problem]", step: int) -> "list[Event]":
    """Held-out scores on `problems` (the run's `dataset.eval_size` test prompts),
    `training.eval_samples` samples each, collected by the run's own collector:
    'val/acc/mean@1' (the mean accuracy of a single sample) and 'val/pass@k' for every k
    of `training.eval_pass_k`, with the per-prompt results and sample records.

    Decoding: the run's own sampling settings (temperature, top_p), so the scores are
    those of the policy being trained — the quantity RL optimises — rather than of its
    argmax. Greedy decoding would hide most of the early gains RL makes by sharpening the
    distribution, and a sampled score is what avg@k / mean@k numbers in the literature
    report. The random stream is re-seeded identically at every evaluation (common
    random numbers), so two evaluations of the same weights agree, differences between
    evaluations come from the weights, not the dice, and evaluating never moves the
    training stream (a resumed run stays exact).
    """
    import torch

    from engine.events import Metrics, PromptResults, SampleRecords
    from engine.sampling.base import PlanItem
    from engine.telemetry import Timeline, prompt_results, sample_records, sampled_prompts

    training = spec.training
    timeline = Timeline(step)
    generator = torch.Generator(device=collector.generator.device).manual_seed(spec.seed + EVAL_STREAM_OFFSET)
    plan = [PlanItem(problem, training.eval_samples) for problem in problems]
    with timeline.phase(collector.worker, "eval"):
        groups = collector.collect(plan, first_group=0, timeline=Timeline(step), generator=generator)
    rollouts = [item for group in groups for item in group.rollouts]
    counts = [(training.eval_samples, sum(item.correct for item in group.rollouts)) for group in groups]
    values = {
        "val/acc/mean@1": float(np.mean([item.reward for item in rollouts])),
        **{f"val/pass@{k}": mean_pass_at_k(counts, k) for k in training.eval_pass_k},
        "val/response_length/mean": float(np.mean([item.length for item in rollouts])),
        "timing_s/eval": timeline.seconds["eval"],
    }
    return [
        Metrics(step=step, values=values),
        PromptResults(step=step, split="test", results=prompt_results(rollouts)),
        SampleRecords(
            step=step,
            split="test",
            samples=sample_records(rollouts, spec.telemetry.samples_per_prompt),
            prompts=sampled_prompts(rollouts),
        ),
        *timeline.spans,
    ]
