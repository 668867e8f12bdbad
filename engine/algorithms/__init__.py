"""Algorithms: registries of the shared parts, and the user-facing presets built from them.

Every algorithm is a configuration of parts (algorithms.md §0), each a registered
callable in its own module:

    ADVANTAGE_ESTIMATORS  engine.algorithms.advantages    group_norm, group_mean, leave_one_out
    RATIO_LEVELS          engine.algorithms.policy_loss   token (PPO), sequence (GSPO)
    POLICY_LOSSES         engine.algorithms.policy_loss   ppo (the clipped surrogate), decoupled_ppo
                                                          (AReaL: behaviour and proximal policies apart)
    AGGREGATIONS          engine.algorithms.aggregation   token-mean, seq-mean-token-mean, …
    KL_ESTIMATORS         engine.algorithms.kl            k1, k2, k3, low_var_kl
    REWARD_SHAPERS        engine.algorithms.shaping       overlong (DAPO), kl_penalty (KL in the reward)

The torch-needing parts are registered as dotted paths, so this package stays torch-free:
the spec and the platform list and validate names from here. `ALGORITHMS` holds the
presets users name (grpo, dr_grpo, dapo, gspo, rloo): a preset is a row of settings for
those parts, which a spec may override field by field. docs/algorithms.md says what each
preset sets, where it departs from its paper and what it logs.
"""

from dataclasses import dataclass
from typing import Literal

from engine.registry import Registry

ADVANTAGE_ESTIMATORS: Registry = Registry("advantage estimator")
for _name in ("group_norm", "group_mean", "leave_one_out"):
    ADVANTAGE_ESTIMATORS.register(_name, f"engine.algorithms.advantages:{_name}")

RATIO_LEVELS: Registry = Registry("ratio level")
RATIO_LEVELS.register("token", "engine.algorithms.policy_loss:token_log_ratio")
RATIO_LEVELS.register("sequence", "engine.algorithms.policy_loss:sequence_log_ratio")

POLICY_LOSSES: Registry = Registry("policy loss")
POLICY_LOSSES.register("ppo", "engine.algorithms.policy_loss:PPOLoss")
POLICY_LOSSES.register("decoupled_ppo", "engine.algorithms.policy_loss:DecoupledPPOLoss")

AGGREGATIONS: Registry = Registry("loss aggregation")
for _name, _function in [
    ("token-mean", "token_mean"),
    ("seq-mean-token-mean", "seq_mean_token_mean"),
    ("seq-mean-token-sum", "seq_mean_token_sum"),
    ("seq-mean-token-sum-norm", "seq_mean_token_sum_norm"),
]:
    AGGREGATIONS.register(_name, f"engine.algorithms.aggregation:{_function}")

KL_ESTIMATORS: Registry = Registry("KL estimator")
for _name in ("k1", "k2", "k3", "low_var_kl"):
    KL_ESTIMATORS.register(_name, f"engine.algorithms.kl:{_name}")

REWARD_SHAPERS: Registry = Registry("reward shaper")
REWARD_SHAPERS.register("overlong", "engine.algorithms.shaping:OverlongShaping")
REWARD_SHAPERS.register("kl_penalty", "engine.algorithms.shaping:KLPenalty")

# The spec's field types, built from the registries (one list of names, not two).
Advantage = Literal[tuple(ADVANTAGE_ESTIMATORS.names())]
Aggregation = Literal[tuple(AGGREGATIONS.names())]
RatioLevel = Literal[tuple(RATIO_LEVELS.names())]
PolicyLoss = Literal[tuple(POLICY_LOSSES.names())]
KLEstimator = Literal[tuple(KL_ESTIMATORS.names())]
# Where a KL term to the reference goes: the policy loss adds it ("loss"), the
# kl_penalty shaper subtracts it from the reward ("reward"), or nowhere.
KLPlacement = Literal["loss", "reward", "off"]


@dataclass(frozen=True)
class AlgorithmDefaults:
    """Defaults a run spec starts from; every field but the description can be
    overridden per run (engine.spec.AlgorithmSpec documents each one)."""

    description: str
    advantage: Advantage
    aggregation: Aggregation
    ratio_level: RatioLevel
    policy_loss: PolicyLoss
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
    policy_loss="ppo",
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
