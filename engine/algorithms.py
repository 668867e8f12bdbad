"""The algorithm registry: each algorithm is a configuration of shared loss parts.

Torch-free on purpose: the platform lists and validates algorithms from here, and the
loss code (`engine.losses`) interprets the configuration. The parts and the papers'
formulas are in the team brief (algorithms.md §0); docs/algorithms.md says what each
entry sets, where it departs from its paper and what it logs.

Also here, because they are plain arithmetic on rewards and lengths: the dynamic-sampling
filter and batch filler (DAPO) and the overlong reward shaping (DAPO).
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from engine.registry import Registry

Advantage = Literal["group_norm", "group_mean", "leave_one_out"]
Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
RatioLevel = Literal["token", "sequence"]
KLPlacement = Literal["loss", "reward", "off"]
KLEstimator = Literal["k1", "k2", "k3", "low_var_kl"]


@dataclass(frozen=True)
class AlgorithmDefaults:
    """Defaults a run spec starts from; every field but the description can be
    overridden per run (engine.spec.AlgorithmSpec documents each one)."""

    description: str
    advantage: Advantage
    aggregation: Aggregation
    ratio_level: RatioLevel
    clip_eps_low: float
    clip_eps_high: float
    dual_clip_c: float  # 0 = off
    kl_placement: KLPlacement
    kl_estimator: KLEstimator
    kl_coef: float
    entropy_coef: float
    dynamic_sampling: bool
    oversample: float
    max_gen_rounds: int
    overlong_buffer_fraction: float  # 0 = off
    overlong_penalty_factor: float


# What most entries share: no dual clip, no entropy bonus, no dynamic sampling, no
# overlong shaping. Each registration below spells out what makes the algorithm itself.
_PLAIN = dict(
    ratio_level="token",
    dual_clip_c=0.0,
    kl_estimator="k3",
    entropy_coef=0.0,
    dynamic_sampling=False,
    oversample=1.0,
    max_gen_rounds=1,
    overlong_buffer_fraction=0.0,
    overlong_penalty_factor=1.0,
)

ALGORITHMS: Registry[AlgorithmDefaults] = Registry("algorithm")

ALGORITHMS.register(
    "grpo",
    AlgorithmDefaults(
        description="GRPO (DeepSeekMath): group-normalised advantages, PPO clip 0.2, "
        "per-sequence mean loss, k3 KL to the reference in the loss (β 0.04)",
        **_PLAIN,
        advantage="group_norm",
        aggregation="seq-mean-token-mean",
        clip_eps_low=0.2,
        clip_eps_high=0.2,
        kl_placement="loss",
        kl_coef=0.04,
    ),
)
ALGORITHMS.register(
    "dr_grpo",
    AlgorithmDefaults(
        description="Dr.GRPO: GRPO without the length and std biases: R − mean advantages, "
        "token sum over a constant (max_new_tokens)",
        **_PLAIN,
        advantage="group_mean",
        aggregation="seq-mean-token-sum-norm",
        clip_eps_low=0.2,
        clip_eps_high=0.2,
        kl_placement="loss",
        kl_coef=0.04,
    ),
)
ALGORITHMS.register(
    "dapo",
    AlgorithmDefaults(
        description="DAPO: clip-higher (0.2/0.28), dynamic sampling of mixed groups, "
        "token-level loss, overlong reward shaping, no KL",
        **{
            **_PLAIN,
            "dynamic_sampling": True,
            # verl generates 3× the batch per round for models whose groups are mostly
            # all-right or all-wrong; on the built-in task about 95% of 16-sample groups
            # are mixed, so a quarter more than the groups still missing fills the batch
            # in one round on most steps (docs/algorithms.md).
            "oversample": 1.25,
            "max_gen_rounds": 10,
            # The paper's buffer is 4096 of 20480 tokens: a fifth of max_new_tokens.
            "overlong_buffer_fraction": 0.2,
            "overlong_penalty_factor": 1.0,
        },
        advantage="group_norm",
        aggregation="token-mean",
        clip_eps_low=0.2,
        clip_eps_high=0.28,
        kl_placement="off",
        kl_coef=0.0,
    ),
)
ALGORITHMS.register(
    "gspo",
    AlgorithmDefaults(
        description="GSPO (Qwen): sequence-level, length-normalised importance ratio "
        "(GSPO-token form), clip 3e-4/4e-4, no KL",
        **{**_PLAIN, "ratio_level": "sequence"},
        advantage="group_norm",
        aggregation="seq-mean-token-mean",
        clip_eps_low=3e-4,
        clip_eps_high=4e-4,
        kl_placement="off",
        kl_coef=0.0,
    ),
)
ALGORITHMS.register(
    "rloo",
    AlgorithmDefaults(
        description="RLOO: leave-one-out baseline, PPO surrogate (the paper's REINFORCE "
        "on one update per batch), k1 KL in the reward (β 0.05)",
        **{**_PLAIN, "kl_estimator": "k1"},
        advantage="leave_one_out",
        aggregation="seq-mean-token-mean",
        clip_eps_low=0.2,
        clip_eps_high=0.2,
        kl_placement="reward",
        kl_coef=0.05,
    ),
)


# ----------------------------------------------------------------- overlong shaping
def overlong_penalty(length: int, max_len: int, buffer_len: int, factor: float) -> float:
    """DAPO's soft overlong punishment, added to the task reward (verl's form):

        0                                        if length ≤ max_len − buffer_len
        −(length − (max_len − buffer_len)) / buffer_len · factor   in the buffer

    so a response that uses the whole budget (max_len, i.e. truncated) gets −factor.
    buffer_len = 0 turns shaping off.
    """
    if buffer_len <= 0:
        return 0.0
    expected = max_len - buffer_len
    return min(-(length - expected) / buffer_len * factor, 0.0)


def overlong_buffer_len(max_new_tokens: int, fraction: float) -> int:
    """The buffer in tokens: `fraction` of the length budget, rounded down."""
    return math.floor(max_new_tokens * fraction)


# ----------------------------------------------------------------- dynamic sampling
G = TypeVar("G")


def is_informative(scores: Sequence[float]) -> bool:
    """DAPO's filter: a group teaches something only when its samples disagree
    (0 < #correct < G); a zero-std group's advantages are all zero."""
    return max(scores) != min(scores)


@dataclass
class FilledBatch(Generic[G]):
    groups: list[G]  # exactly `batch_groups` groups: informative ones first
    generated: int  # groups generated over all rounds
    kept: int  # informative groups among them
    rounds: int  # generation rounds used

    @property
    def keep_rate(self) -> float:
        return self.kept / max(self.generated, 1)


def fill_batch(
    generate: Callable[[int], list[G]],
    scores_of: Callable[[G], Sequence[float]],
    batch_groups: int,
    oversample: float,
    max_rounds: int,
) -> FilledBatch[G]:
    """Dynamic sampling: generate rounds of groups, keep the informative ones, stop once
    `batch_groups` are kept or after `max_rounds`, and truncate to exactly the batch.

    Each round asks `generate(count)` for ceil(missing × oversample) new groups, where
    `missing` is how many informative groups the batch still lacks. When the rounds run
    out first, the batch is topped up with filtered-out groups (their advantages are
    zero, so they add nothing to the policy gradient) so that every step trains on the
    same number of groups; `keep_rate` reports how often that bites.
    """
    kept: list[G] = []
    dropped: list[G] = []
    generated = rounds = 0
    while len(kept) < batch_groups and rounds < max_rounds:
        fresh = generate(math.ceil((batch_groups - len(kept)) * oversample))
        rounds += 1
        generated += len(fresh)
        for group in fresh:
            (kept if is_informative(scores_of(group)) else dropped).append(group)
    batch = (kept + dropped)[:batch_groups]
    return FilledBatch(groups=batch, generated=generated, kept=len(kept), rounds=rounds)
