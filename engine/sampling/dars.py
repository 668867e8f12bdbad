"""DARS (arXiv 2508.13755; docs/algorithms.md §5): extra rollouts for the prompts a first
round found hard, so that their cumulative advantage reaches the peak a p = 0.5 prompt
gets (torch-free).

A first round gives every prompt N = rollout.n rollouts; a prompt with first-round
accuracy acc < 0.5 gets Δn more in a second round (engine.rollout.dars collects both and
merges them into one group). With acc = 0 replaced by 0.5 / N, and S(acc) the group's
cumulative |advantage| per rollout,

    without std:  S = 2·acc·(1 − acc),     A_peak = 0.5·N
    with std:     S = 2·sqrt(acc·(1 − acc)), A_peak = N

    equal (ET):     Δn = min(ceil((A_peak − N·S) / S), N_max − N)
    hardness (HW):  Δn = min(ceil((2·(1 − acc)·A_peak − N·S) / S), N_max − N)

as the authors' `ray_dars_trainer.py` computes it (resampling_func 1 and 2). N_max
defaults to 4·N for equal and 8·N for hardness (the released 32 and 64 at N = 8).

DARS-B (breadth) is the same sampler with a large prompts_per_step trained by full-batch
updates over several epochs: training.mini_batches 1, training.epochs 2.
"""

import math
from typing import Any, ClassVar, Literal

from engine.sampling.passes import UniformSampler

Schedule = Literal["equal", "hardness"]
# N_max as a multiple of N when the spec leaves max_rollouts unset.
DEFAULT_MAX_FACTOR: dict[str, int] = {"equal": 4, "hardness": 8}


def max_total_rollouts(schedule: Schedule, n: int, max_rollouts: int | None) -> int:
    """N_max: the spec's, else 4·N (equal) or 8·N (hardness)."""
    return max_rollouts if max_rollouts is not None else DEFAULT_MAX_FACTOR[schedule] * n


def extra_rollouts(correct: int, n: int, schedule: Schedule, max_total: int, with_std: bool) -> int:
    """Δn for a prompt with `correct` of `n` first-round rollouts right."""
    acc = correct / n
    if acc >= 0.5:
        return 0
    acc = acc or 0.5 / n
    if with_std:
        spread, peak = 2 * math.sqrt(acc * (1 - acc)), float(n)
    else:
        spread, peak = 2 * acc * (1 - acc), 0.5 * n
    target = peak if schedule == "equal" else 2 * (1 - acc) * peak
    # The code's ceil of a float: a value a rounding error above an integer counts as it.
    needed = math.ceil(round((target - n * spread) / spread, 9))
    return max(0, min(needed, max_total - n))


class DarsSampler(UniformSampler):
    """The uniform passes, each prompt with rollout.n first-round rollouts; the second round
    is the `dars` rollout strategy's, which reads this sampler's parameters from the spec."""

    description: ClassVar[str] = (
        "DARS: a first round of n rollouts per prompt, then extra rollouts for prompts under 50% "
        "(schedule equal: up to the p = 0.5 advantage peak; hardness: weighted to harder prompts), "
        "merged into their groups; all-right and all-wrong groups filtered"
    )
    parameters: ClassVar[dict[str, Any]] = {
        "schedule": "equal",
        "max_rollouts": None,
        "schedule_std": False,
        "upper_threshold": 1.0,
    }
    # The collection the schedule needs: an unset rollout.strategy resolves to it.
    rollout_strategy: ClassVar[str] = "dars"
