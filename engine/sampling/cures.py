"""CurES (arXiv 2510.01037; docs/algorithms.md §1): which prompts a step samples, and
how many rollouts each gets, from a Beta posterior per prompt (torch-free).

The run's train pool is cut into chunks of `chunk_prompts` prompts (drawn in the
run's seeded passes), each trained on for `chunk_steps` steps, as the authors' code
iterates over data chunks. At the first step of a chunk the sampler asks for
`pre_rollouts` rollouts of every prompt of the chunk (stage 0, never trained on),
through `probe`; then, per prompt x with A_x correct of T_x attempts:

    p̂_x = (A_x + 1) / (T_x + 2)                          posterior mean of Beta(A + 1, T − A + 1)
    w_x = exp(weight_scale · sqrt(p̂_x (1 − p̂_x)) / (A_x + 1)),   q(x) = w_x / Σ w
                                                          (the code's T_x = (A_x + 1) / 0.01)
    σ_x² = a·b²·E[g_c²] + a²·b·E[g_w²] − a²·b²·(E[g_c] − E[g_w])²,  a = A_x / T_x, b = 1 − a
                                                          the spread of x's gradient

where g = ‖∇_φ(−log π(y|x))‖₂ is a pre-rollout's gradient norm over the embedding matrix
φ only (the code's act_params = "embed_tokens"), measured through the training backend
(`gradient_norms`), split into x's correct {g_c} and wrong {g_w} pre-rollouts (an empty
set counts as [0]). With `gradient_norms: unit` every g is 1 and σ_x² = a(1 − a): the
same shape (peaked at a = 1/2, zero at 0 and 1) without a backward pass per pre-rollout.

Each step draws `prompts` prompts of the chunk with probabilities q, without
replacement, and shares a budget of prompts × rollout.n rollouts (GRPO's samples per
step, so runs compare at equal cost) among them in proportion to σ_x, in whole units
of `allocation_unit` rollouts (the code repeats a prompt n_x times at rollout.n = 4);
largest remainders round, so the units add up exactly. A prompt with σ_x = 0 (all its
attempts right, or all wrong) gets none: it is pruned. With `online_update` every
verified training rollout of a chunk prompt adds to its A_x and T_x, so a moves; the
norm moments stay those of its pre-rollouts (training rollouts are not probed).

Where this differs from the code: the budget is the step's, shared over the drawn
prompts (the code normalises σ over a whole shard of the chunk); a = A_x / T_x follows
the online counts (the code's online update is disabled in its scripts).
"""

import math
import random
from collections.abc import Sequence
from typing import Any, ClassVar

from engine.checkpoint import as_tuples
from engine.problems import Problem
from engine.sampling.base import GradientNorms, PlanItem, Probe
from engine.sampling.passes import UniformSampler


def posterior_mean(successes: int, attempts: int) -> float:
    """p̂ = (A + 1) / (T + 2): the mean of Beta(A + 1, T − A + 1), the uniform prior's posterior."""
    return (successes + 1) / (attempts + 2)


def sampling_weight(successes: int, attempts: int, weight_scale: float) -> float:
    """w = exp(weight_scale · sqrt(p̂ (1 − p̂)) / (A + 1)): the code's temperature T = (A + 1) / 0.01."""
    p = posterior_mean(successes, attempts)
    return math.exp(weight_scale * math.sqrt(p * (1 - p)) / (successes + 1))


# Sums of one prompt's pre-rollout gradient norms: Σg_c, Σg_c², #correct, Σg_w, Σg_w², #wrong.
NormMoments = tuple[float, float, int, float, float, int]
# Every g is 1 (`gradient_norms: unit`): E[g] = E[g²] = 1 on both sides.
UNIT_NORMS: NormMoments = (1.0, 1.0, 1, 1.0, 1.0, 1)


def norm_moments(correct: Sequence[bool], norms: Sequence[float]) -> NormMoments:
    """The sums the spread reads, from each pre-rollout's verdict and gradient norm."""
    right = [g for ok, g in zip(correct, norms, strict=True) if ok]
    wrong = [g for ok, g in zip(correct, norms, strict=True) if not ok]
    return (sum(right), sum(g * g for g in right), len(right), sum(wrong), sum(g * g for g in wrong), len(wrong))


def gradient_spread(successes: int, attempts: int, moments: NormMoments = UNIT_NORMS) -> float:
    """σ = sqrt(a·b²·E[g_c²] + a²·b·E[g_w²] − a²·b²·(E[g_c] − E[g_w])²), a = A / T, b = 1 − a;
    an empty side's E[g] and E[g²] are 0 (the code's [0]). Unit norms give sqrt(a(1 − a))."""
    if attempts == 0:
        return 0.0
    a = successes / attempts
    b = 1 - a
    sum_c, squares_c, count_c, sum_w, squares_w, count_w = moments
    mean_c, square_c = (sum_c / count_c, squares_c / count_c) if count_c else (0.0, 0.0)
    mean_w, square_w = (sum_w / count_w, squares_w / count_w) if count_w else (0.0, 0.0)
    variance = a * b * b * square_c + a * a * b * square_w - a * a * b * b * (mean_c - mean_w) ** 2
    return math.sqrt(max(variance, 0.0))


def allocate(spreads: Sequence[float], budget: int, unit: int) -> list[int]:
    """Rollouts per prompt: budget // unit units shared in proportion to `spreads`, rounded by
    largest remainder (ties to the earlier prompt), times `unit`. All zeros when every spread is 0."""
    total = sum(spreads)
    units = budget // unit
    if total <= 0 or units == 0:
        return [0] * len(spreads)
    shares = [units * spread / total for spread in spreads]
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (-(shares[i] - counts[i]), i))
    for i in by_remainder[: units - sum(counts)]:
        counts[i] += 1
    return [count * unit for count in counts]


def weighted_draw(rng: random.Random, weights: Sequence[float], count: int) -> list[int]:
    """`count` distinct indices, each drawn with probability ∝ its weight among those left
    (Efraimidis–Spirakis: the largest keys log(u) / w), in drawing order."""
    keys = [math.log(1.0 - rng.random()) / weight for weight in weights]
    return sorted(range(len(weights)), key=lambda i: -keys[i])[:count]


def normalised_entropy(weights: Sequence[float]) -> float:
    """H(q) / log |q| for q ∝ weights: 1.0 is uniform (and a single prompt)."""
    if len(weights) < 2:
        return 1.0
    total = sum(weights)
    entropy = -sum(w / total * math.log(w / total) for w in weights if w > 0)
    return entropy / math.log(len(weights))


class CuresSampler:
    description: ClassVar[str] = (
        "CurES: pre-rollouts estimate each prompt's Beta posterior; prompts drawn with posterior weights, "
        "rollouts allocated in proportion to each prompt's gradient spread (from its pre-rollouts' embedding-"
        "gradient norms) under the step's budget, zero-spread prompts pruned"
    )
    parameters: ClassVar[dict[str, Any]] = {
        "pre_rollouts": 4,
        "chunk_prompts": 128,
        "chunk_steps": 10,
        "weight_scale": 0.01,
        "allocation_unit": 4,
        "online_update": True,
        "gradient_norms": "embedding",
    }

    def __init__(
        self,
        pool: Sequence[Problem],
        n: int,
        seed: int,
        pre_rollouts: int,
        chunk_prompts: int,
        chunk_steps: int,
        weight_scale: float,
        allocation_unit: int,
        online_update: bool,
        gradient_norms: str,
        **common: Any,
    ):
        self.n = n
        self.pre_rollouts = pre_rollouts
        self.chunk_prompts = chunk_prompts
        self.chunk_steps = chunk_steps
        self.weight_scale = weight_scale
        self.allocation_unit = allocation_unit
        self.online_update = online_update
        self.gradient_norms = gradient_norms
        self._passes = UniformSampler(pool, n, seed)  # which prompts make up each chunk
        self._draw_rng = random.Random(seed + 1)  # each step's weighted draw from the chunk
        self.chunk: list[Problem] = []
        self.counts: dict[str, list[int]] = {}  # prompt id -> [A, T] of the current chunk
        self.moments: dict[str, NormMoments] = {}  # prompt id -> its pre-rollouts' norm sums (embedding)
        self._metrics: dict[str, float] = {}  # the last plan's, reported by metrics()
        self._probe_tokens = 0  # pre-rollout tokens of the current step
        self._norm_mean = 0.0  # the mean pre-rollout gradient norm of the current chunk

    # ------------------------------------------------------------------ the step
    def probe(self, step: int, collect: Probe, gradient_norms: GradientNorms) -> None:
        """At a chunk's first step: the next chunk of the pool, pre-rolled `pre_rollouts`
        times each, and (embedding) each pre-rollout's gradient norm measured."""
        self._probe_tokens = 0
        if (step - 1) % self.chunk_steps != 0 and self.chunk:
            return
        self.chunk = [item.problem for item in self._passes.next(step, self.chunk_prompts)]
        self.counts = {problem.id: [0, 0] for problem in self.chunk}
        groups = collect([PlanItem(problem, self.pre_rollouts) for problem in self.chunk])
        norms: list[float] = []
        if self.gradient_norms == "embedding":
            norms = gradient_norms([item for group in groups for item in group.rollouts])
        self.moments = {}
        for group in groups:
            self._add(group.rollouts)
            self._probe_tokens += sum(item.length for item in group.rollouts)
            if norms:
                mine, norms = norms[: len(group.rollouts)], norms[len(group.rollouts) :]
                self.moments[group.problem.id] = norm_moments([item.correct for item in group.rollouts], mine)
        grads = list(self.moments.values())
        self._norm_mean = sum(m[0] + m[3] for m in grads) / max(sum(m[2] + m[5] for m in grads), 1)

    def next(self, step: int, prompts: int) -> list[PlanItem]:
        weights = [sampling_weight(*self._counts(problem), self.weight_scale) for problem in self.chunk]
        drawn = [self.chunk[i] for i in weighted_draw(self._draw_rng, weights, prompts)]
        spreads = [gradient_spread(*self._counts(p), self.moments.get(p.id, UNIT_NORMS)) for p in drawn]
        rollouts = allocate(spreads, prompts * self.n, self.allocation_unit)
        plan = [PlanItem(problem, n) for problem, n in zip(drawn, rollouts) if n > 0]
        if not plan:  # every drawn prompt is pruned: train on them as GRPO would (all zero advantages)
            plan = [PlanItem(problem, self.n) for problem in drawn]
        kept = [item.n for item in plan]
        self._metrics = {
            "cures/weight_entropy": normalised_entropy(weights),
            "cures/rollouts_per_prompt/min": float(min(kept)),
            "cures/rollouts_per_prompt/mean": sum(kept) / len(kept),
            "cures/rollouts_per_prompt/max": float(max(kept)),
            "cures/pruned_share": sum(n == 0 for n in rollouts) / len(drawn),
            "cures/posterior_mean": sum(posterior_mean(*self._counts(p)) for p in drawn) / len(drawn),
            "cures/spread_mean": sum(spreads) / len(spreads),
        }
        if self.gradient_norms == "embedding":
            self._metrics["cures/embedding_grad_norm"] = self._norm_mean
        return plan

    def observe(self, step: int, rollouts: Sequence[Any]) -> None:
        if self.online_update:
            self._add(rollouts)

    def metrics(self, step: int) -> dict[str, float]:
        return {**self._metrics, "cures/pre_rollout_tokens": float(self._probe_tokens)}

    def _counts(self, problem: Problem) -> tuple[int, int]:
        successes, attempts = self.counts.get(problem.id, (0, 0))
        return successes, attempts

    def _add(self, rollouts: Sequence[Any]) -> None:
        for item in rollouts:
            record = self.counts.get(item.problem.id)
            if record is not None:  # a prompt of the current chunk
                record[0] += int(item.correct)
                record[1] += 1

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {
            "passes": self._passes.state_dict(),
            "draw_rng": self._draw_rng.getstate(),
            "chunk": [problem.id for problem in self.chunk],
            "counts": {prompt_id: list(record) for prompt_id, record in self.counts.items()},
            "moments": {prompt_id: list(sums) for prompt_id, sums in self.moments.items()},
            "norm_mean": self._norm_mean,
            "metrics": dict(self._metrics),
            "probe_tokens": self._probe_tokens,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._passes.load_state_dict(state["passes"])
        self._draw_rng.setstate(as_tuples(state["draw_rng"]))
        by_id = {problem.id: problem for problem in self._passes.pool}
        self.chunk = [by_id[prompt_id] for prompt_id in state["chunk"]]
        self.counts = {prompt_id: list(record) for prompt_id, record in state["counts"].items()}
        self.moments = {prompt_id: tuple(sums) for prompt_id, sums in state["moments"].items()}
        self._norm_mean = state["norm_mean"]
        self._metrics = dict(state["metrics"])
        self._probe_tokens = state["probe_tokens"]
