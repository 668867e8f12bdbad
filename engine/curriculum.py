"""The curriculum registry: which train prompts a step may draw.

Torch-free on purpose, like engine.algorithms: the platform lists and validates the
strategies from here, and the trainer asks `DifficultyPacing` which prompts of its pool
are admissible at a step. The trainer's seeded pass over the pool is the same for every
strategy; a strategy only decides which prompts of that pass a step may take
(docs/algorithms.md, "Curriculum").

- `uniform`: every prompt, always (the trainer's plain seeded passes).
- `easy_to_hard`: difficulty pacing. At step s only prompts whose difficulty is at or
  below the q(s)-quantile of the pool's difficulties are admissible, q rising linearly
  from `start_quantile` at step 1 to 1.0 at step `ramp_steps` + 1. A prompt of unknown
  (NaN) difficulty counts as the hardest: it is admitted once q reaches 1.0, so a file
  whose difficulty column is only partly filled still trains on every row in the end.

CurES and DARS will be further strategies (docs/architecture.md).
"""

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from engine.registry import Registry


@dataclass(frozen=True)
class CurriculumStrategy:
    description: str
    # The spec fields (engine.spec.CurriculumSpec) this strategy reads, with their
    # defaults; a field it does not read must stay unset in a spec.
    parameters: dict[str, Any]


CURRICULA: Registry[CurriculumStrategy] = Registry("curriculum strategy")

CURRICULA.register(
    "uniform",
    CurriculumStrategy(
        description="every train prompt in the run's seeded order, whatever its difficulty", parameters={}
    ),
)
CURRICULA.register(
    "easy_to_hard",
    CurriculumStrategy(
        description="difficulty pacing: at step s only prompts at or below the q(s)-quantile of the pool's "
        "difficulties, q rising linearly from start_quantile to 1 over ramp_steps; "
        "unknown difficulty counts as hardest",
        parameters={"start_quantile": 0.3, "ramp_steps": 20},
    ),
)


def pacing_quantile(step: int, start_quantile: float, ramp_steps: int) -> float:
    """q(s): start_quantile at step 1 (and before), 1.0 from step ramp_steps + 1 on."""
    progress = min(1.0, max(0, step - 1) / ramp_steps)
    return start_quantile + (1.0 - start_quantile) * progress


class DifficultyPacing:
    """Which prompts of a pool a step admits. `uniform` admits everything; for
    `easy_to_hard` the threshold is the q-quantile of the pool's difficulties (the
    smallest difficulty d with at least a share q of the pool at or below d), so at
    least a share q is always admissible, the easiest prompts included."""

    def __init__(self, strategy: str, difficulties: Sequence[float], start_quantile: float = 1.0, ramp_steps: int = 1):
        if strategy not in CURRICULA:
            raise ValueError(CURRICULA.unknown_message(strategy))
        self.strategy = strategy
        self.start_quantile = start_quantile
        self.ramp_steps = ramp_steps
        self._ranked = sorted(math.inf if math.isnan(d) else d for d in difficulties)

    def quantile(self, step: int) -> float:
        if self.strategy == "uniform":
            return 1.0
        return pacing_quantile(step, self.start_quantile, self.ramp_steps)

    def threshold(self, step: int) -> float:
        """The hardest admissible difficulty at `step` (inf: every prompt, unknown ones too)."""
        quantile = self.quantile(step)
        if quantile >= 1.0 or not self._ranked:
            return math.inf
        rank = min(len(self._ranked), max(1, math.ceil(quantile * len(self._ranked))))
        return self._ranked[rank - 1]

    def admits(self, difficulty: float, threshold: float) -> bool:
        return threshold == math.inf or difficulty <= threshold  # NaN only passes an infinite threshold

    def metrics(self, step: int) -> dict[str, float]:
        """curriculum/difficulty_quantile (q) and curriculum/admission_rate (the share of
        the pool admissible at `step`; docs/metrics.md)."""
        admitted = bisect.bisect_right(self._ranked, self.threshold(step))
        return {
            "curriculum/difficulty_quantile": self.quantile(step),
            "curriculum/admission_rate": admitted / len(self._ranked) if self._ranked else 1.0,
        }
