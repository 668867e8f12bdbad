"""Seeded passes over the train pool: the uniform sampler, and easy-to-hard pacing on top.

The run's train prompts are drawn in passes, each in a fresh seeded order. A sampler
with a curriculum only decides which prompts of the current pass a step may take: a
prompt not admissible yet is passed over and stays in the pass for a later step; a new
pass begins when the current one holds no admissible prompt (docs/algorithms.md,
"Curriculum"). Every prompt gets `rollout.n` rollouts.
"""

import bisect
import math
import random
from collections.abc import Sequence
from typing import Any, ClassVar

from engine.checkpoint import as_tuples
from engine.problems import Problem
from engine.sampling.base import GradientNorms, PlanItem, Probe


class UniformSampler:
    description: ClassVar[str] = "every train prompt in the run's seeded order, whatever its difficulty"
    parameters: ClassVar[dict[str, Any]] = {}

    def __init__(self, pool: Sequence[Problem], n: int, seed: int, **parameters: Any):
        self.pool = list(pool)
        self.n = n
        self._order_rng = random.Random(seed)  # the order of each pass
        self._order: list[int] = []  # what is left of the current pass, drawn from the end

    def threshold(self, step: int) -> float:
        """The hardest admissible difficulty at `step`: inf admits every prompt."""
        return math.inf

    def probe(self, step: int, collect: Probe, gradient_norms: GradientNorms) -> None:
        """A pass needs no rollouts before it plans."""

    def next(self, step: int, prompts: int) -> list[PlanItem]:
        threshold = self.threshold(step)
        plan = []
        while len(plan) < prompts:
            position = self._last_admissible(threshold)
            if position is None:
                self._order = list(range(len(self.pool)))
                self._order_rng.shuffle(self._order)
                continue
            plan.append(PlanItem(self.pool[self._order.pop(position)], self.n))
        return plan

    def _last_admissible(self, threshold: float) -> int | None:
        """Position in the pass of the next prompt to draw (passes are drawn from the end)."""
        for position in range(len(self._order) - 1, -1, -1):
            difficulty = self.pool[self._order[position]].difficulty
            if threshold == math.inf or difficulty <= threshold:  # NaN only passes an infinite threshold
                return position
        return None

    def observe(self, step: int, rollouts: Sequence[Any]) -> None:
        """A pass does not depend on outcomes."""

    def metrics(self, step: int) -> dict[str, float]:
        """Every prompt is admissible: the curriculum charts read 1 and 1, as for a paced
        run past its ramp (so runs compare on one chart)."""
        return {"curriculum/difficulty_quantile": 1.0, "curriculum/admission_rate": 1.0}

    def state_dict(self) -> dict[str, Any]:
        return {"order": list(self._order), "order_rng": self._order_rng.getstate()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._order = list(state["order"])
        self._order_rng.setstate(as_tuples(state["order_rng"]))


def pacing_quantile(step: int, start_quantile: float, ramp_steps: int) -> float:
    """q(s): start_quantile at step 1 (and before), 1.0 from step ramp_steps + 1 on."""
    progress = min(1.0, max(0, step - 1) / ramp_steps)
    return start_quantile + (1.0 - start_quantile) * progress


class EasyToHardSampler(UniformSampler):
    """Difficulty pacing: at step s only prompts whose difficulty is at or below the
    q(s)-quantile of the pool's difficulties (the smallest difficulty d with at least a
    share q of the pool at or below d, so the easiest prompts are always admissible), q
    rising linearly from `start_quantile` at step 1 to 1.0 at step `ramp_steps` + 1. A
    prompt of unknown (NaN) difficulty counts as the hardest: it is admitted once q
    reaches 1.0, so a file whose difficulty column is only partly filled still trains on
    every row in the end."""

    description: ClassVar[str] = (
        "difficulty pacing: at step s only prompts at or below the q(s)-quantile of the pool's "
        "difficulties, q rising linearly from start_quantile to 1 over ramp_steps; "
        "unknown difficulty counts as hardest"
    )
    parameters: ClassVar[dict[str, Any]] = {"start_quantile": 0.3, "ramp_steps": 20}

    def __init__(self, pool: Sequence[Problem], n: int, seed: int, start_quantile: float, ramp_steps: int, **common: Any):
        super().__init__(pool, n, seed)
        self.start_quantile = start_quantile
        self.ramp_steps = ramp_steps
        self._ranked = sorted(math.inf if math.isnan(p.difficulty) else p.difficulty for p in self.pool)

    def quantile(self, step: int) -> float:
        return pacing_quantile(step, self.start_quantile, self.ramp_steps)

    def threshold(self, step: int) -> float:
        quantile = self.quantile(step)
        if quantile >= 1.0 or not self._ranked:
            return math.inf
        rank = min(len(self._ranked), max(1, math.ceil(quantile * len(self._ranked))))
        return self._ranked[rank - 1]

    def metrics(self, step: int) -> dict[str, float]:
        """curriculum/difficulty_quantile (q) and curriculum/admission_rate (the share of
        the pool admissible at `step`; docs/metrics.md)."""
        admitted = bisect.bisect_right(self._ranked, self.threshold(step))
        return {
            "curriculum/difficulty_quantile": self.quantile(step),
            "curriculum/admission_rate": admitted / len(self._ranked) if self._ranked else 1.0,
        }

