"""The algorithm registry: each algorithm is a configuration of shared loss parts.

Torch-free on purpose: the platform lists and validates algorithms from here, and the
loss code (`engine.losses`) interprets the configuration. See docs/algorithms.md §0.
"""

from dataclasses import dataclass
from typing import Literal

from engine.registry import Registry

Advantage = Literal["group_norm", "group_mean", "leave_one_out"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


@dataclass(frozen=True)
class AlgorithmDefaults:
    """Defaults a run spec starts from; every field can be overridden per run."""

    description: str
    advantage: Advantage
    aggregation: Aggregation
    clip_eps_low: float
    clip_eps_high: float
    kl_coef: float
    entropy_coef: float


ALGORITHMS: Registry[AlgorithmDefaults] = Registry("algorithm")

ALGORITHMS.register(
    "grpo",
    AlgorithmDefaults(
        description="GRPO (DeepSeekMath): group-normalised advantages, PPO clip, per-sequence mean loss",
        advantage="group_norm",
        aggregation="seq-mean-token-mean",
        clip_eps_low=0.2,
        clip_eps_high=0.2,
        kl_coef=0.0,
        entropy_coef=0.0,
    ),
)
