"""The run spec: the one contract between the platform, the workers and the engine.

A spec is validated here (pydantic, no torch, no Django), resolved (algorithm defaults
filled in) and stored whole on the run, so any run can be reproduced or diffed. The
choices of every part come from the engine's registries (algorithms, samplers, rollout
strategies, recipes, generation and training backends), never from a second list.
"""

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from engine.algorithms import ALGORITHMS, Advantage, Aggregation, KLEstimator, KLPlacement, PolicyLoss, RatioLevel
from engine.assets import BUILTIN_PREFIX, check_model_folder, lookup_failure
from engine.data import AnswerFormat, DatasetError, DatasetFormat, check_template, detect_format
from engine.inference import GENERATION_BACKENDS
from engine.recipes import RECIPES
from engine.registry import Registry
from engine.rollout import ROLLOUT_STRATEGIES
from engine.problems import EvalSplit
from engine.rollout.chunked import memory_plan
from engine.sampling import SAMPLERS
from engine.tasks import BUILTIN_TASKS
from engine.training import TRAINING_BACKENDS
from engine.verifiers import DEFAULT_FILE_VERIFIER, VERIFIERS


class SpecError(ValueError):
    """A spec that cannot run. `problems` holds (field path, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("invalid run spec: " + "; ".join(f"{loc}: {msg}" for loc, msg in problems))


def registered(registry: Registry, name: str) -> str:
    """`name` when `registry` holds it, else the registry's message listing the choices."""
    if name not in registry:
        raise ValueError(registry.unknown_message(name))
    return name


class _Strict(BaseModel):
    # A misspelt key must fail loudly instead of silently running with a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    path: str = Field(
        f"{BUILTIN_PREFIX}arith-tiny",
        description="'builtin:<name>' or a local folder holding a Hugging Face causal LM "
        "(config.json, safetensors weights, tokenizer); never fetched from a hub",
    )
    reference: str | None = Field(
        None, description="the frozen reference model for a KL term, same forms as path; unset = the policy's start"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    chat_template: Literal["auto", "on", "off"] = Field(
        "auto",
        description="wrap each prompt in the tokenizer's chat template as a user message: "
        "'auto' when the tokenizer has one, 'on' always (an error without one), 'off' never",
    )

    @field_validator("path", "reference")
    @classmethod
    def _model_folder_is_complete(cls, path: str | None) -> str | None:
        if path is not None:
            check_model_folder(path)
        return path


class DatasetColumns(_Strict):
    """Which column of a dataset file holds each part of a row (engine.data.ColumnMapping)."""

    prompt: str = "prompt"
    answer: str = "answer"
    id: str | None = None
    difficulty: str | None = None
    split: str | None = Field(None, description="values train or test (validation, val, eval, dev mean test)")


def path_exists(path: Path, refuse: bool = False) -> bool:
    """Whether `path` exists. A path the operating system cannot even look up (a name
    longer than the file system allows, a NUL byte) does not exist; with `refuse` it is
    a ValueError saying why, so the spec names the field instead of raising OSError."""
    try:
        return path.exists()
    except (OSError, ValueError) as exc:
        if refuse:
            raise ValueError(lookup_failure(exc)) from None
        return False


def _needs_path(info: ValidationInfo) -> None:
    # "path" is absent from info.data when the path itself was invalid: say nothing more.
    if "path" in info.data and info.data["path"] is None:
        raise ValueError("only for a dataset file: set dataset.path")


class DatasetSpec(_Strict):
    """A built-in task (`name`), or a dataset file (`path`) read by engine.data."""

    # path comes first: the other fields' checks depend on it (validated in this order).
    path: str | None = Field(
        None, description="a JSONL, CSV or Parquet file or a datasets.save_to_disk folder; unset: the task `name`"
    )
    name: str = Field("arith", description="a built-in task; with a path, a label (default: the file's stem)")
    eval_size: int = Field(256, ge=1, le=100_000, description="held-out prompts used for evaluation")
    format: DatasetFormat | None = Field(None, validate_default=True, description="unset: from the file's suffix")
    columns: DatasetColumns = DatasetColumns()
    answer_format: AnswerFormat = Field(
        "plain", description="plain: as written; gsm8k: after the last ####; boxed: the last \\boxed{}"
    )
    template: str | None = Field(None, description="text around each prompt: one {prompt}, other braces doubled")
    verifier: str | None = Field(
        None, description=f"unset: the built-in task's own checker, or '{DEFAULT_FILE_VERIFIER}' for a file"
    )

    @model_validator(mode="before")
    @classmethod
    def _resolve_file_defaults(cls, data: Any) -> Any:
        """A file's name, format and verifier are filled in, so a stored spec is complete."""
        if not isinstance(data, dict) or not isinstance(data.get("path"), str):
            return data
        path = Path(data["path"])
        resolved = {"name": path.stem, "verifier": DEFAULT_FILE_VERIFIER}
        if path_exists(path):
            try:
                resolved["format"] = detect_format(path)
            except DatasetError:
                pass  # the format check below names the problem
        return resolved | {key: value for key, value in data.items() if value is not None}

    @field_validator("path")
    @classmethod
    def _path_exists(cls, path: str | None) -> str | None:
        if path is not None and not path_exists(Path(path), refuse=True):
            raise ValueError(f"no such file or folder: {path}")
        return path

    @field_validator("name")
    @classmethod
    def _dataset_exists(cls, name: str, info: ValidationInfo) -> str:
        if "path" in info.data and info.data["path"] is None and name not in BUILTIN_TASKS:
            raise ValueError(BUILTIN_TASKS.unknown_message(name))
        return name

    @field_validator("format")
    @classmethod
    def _format_known(cls, format: str | None, info: ValidationInfo) -> str | None:
        if format is not None:
            _needs_path(info)
        elif info.data.get("path") is not None:
            detect_format(Path(info.data["path"]))  # raises DatasetError (a ValueError) naming the file
        return format

    @field_validator("columns", "answer_format")
    @classmethod
    def _file_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value != cls.model_fields[info.field_name].default:  # a stored spec repeats the defaults
            _needs_path(info)
        return value

    @field_validator("template")
    @classmethod
    def _template_valid(cls, template: str | None, info: ValidationInfo) -> str | None:
        if template is not None:
            _needs_path(info)
            check_template(template)
        return template

    @field_validator("verifier")
    @classmethod
    def _verifier_known(cls, verifier: str | None, info: ValidationInfo) -> str | None:
        if verifier is not None:
            if "path" in info.data and info.data["path"] is None:
                raise ValueError("a built-in task scores with its own checker; a verifier needs dataset.path")
            if verifier not in VERIFIERS:
                raise ValueError(VERIFIERS.unknown_message(verifier))
        return verifier


# AReaL's decoupled loss: tokens whose behaviour importance weight is above 5 leave the
# loss (`behav_imp_weight_cap`, the old default; the example configs' rejection bound).
DECOUPLED_DEFAULTS = {"behav_weight_cap": 5.0, "behav_weight_action": "mask"}


class AlgorithmSpec(_Strict):
    """Unset fields take the named algorithm's defaults when the spec is parsed."""

    name: str = "grpo"
    advantage: Advantage | None = Field(
        None, description="group_norm (R − mean)/std, group_mean R − mean, leave_one_out R − mean of the others"
    )
    aggregation: Aggregation | None = Field(
        None, description="how per-token losses reduce to one number (seq-mean-token-sum-norm divides by max_new_tokens)"
    )
    ratio_level: RatioLevel | None = Field(
        None, description="importance ratio per token (PPO) or per sequence, length-normalised (GSPO)"
    )
    policy_loss: PolicyLoss | None = Field(
        None,
        description="ppo: the clipped surrogate on that ratio; decoupled_ppo: AReaL's, the trust region around the "
        "proximal policy (recomputed at the step's start) and each token importance-weighted from the policy "
        "that sampled it",
    )
    clip_eps_low: float | None = Field(None, ge=0, le=10, description="PPO clip: ratio floor 1 − eps_low")
    clip_eps_high: float | None = Field(None, ge=0, le=10, description="PPO clip: ratio ceiling 1 + eps_high")
    dual_clip_c: float | None = Field(
        None, ge=0, description="cap a negative-advantage token's loss at c·|A| (c > 1); 0 = off"
    )
    kl_placement: KLPlacement | None = Field(
        None, description="KL to the reference model: in the loss, subtracted from the reward, or off"
    )
    kl_estimator: KLEstimator | None = Field(None, description="per-token KL estimate: k1, k2, k3 or low_var_kl")
    kl_coef: float | None = Field(None, ge=0, description="β; must be > 0 exactly when kl_placement is not off")
    entropy_coef: float | None = Field(None, ge=0, description="entropy bonus subtracted from the loss")
    dynamic_sampling: bool | None = Field(
        None, description="DAPO: keep only prompt groups whose rewards differ, generating more rounds to fill the batch"
    )
    oversample: float | None = Field(
        None, ge=1, le=100, description="dynamic sampling: groups generated per round, as a multiple of those missing"
    )
    max_gen_rounds: int | None = Field(None, ge=1, le=1000, description="dynamic sampling: generation rounds at most")
    overlong_buffer_fraction: float | None = Field(
        None, ge=0, lt=1, description="DAPO overlong shaping: the last fraction of max_new_tokens is penalised; 0 = off"
    )
    overlong_penalty_factor: float | None = Field(
        None, ge=0, description="DAPO overlong shaping: the penalty at max_new_tokens"
    )
    behav_weight_cap: float | None = Field(
        None,
        ge=1,
        le=1e6,
        description="decoupled_ppo: tokens whose weight π_prox/π_behav exceeds this are masked (or clamped to it); "
        f"unset: {DECOUPLED_DEFAULTS['behav_weight_cap']}",
    )
    behav_weight_action: Literal["mask", "clamp"] | None = Field(
        None, description="decoupled_ppo: what happens to a token above behav_weight_cap: mask (AReaL's default) or clamp"
    )
    reference_reset_every: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="ProRL's reference reset: every this many steps the KL reference becomes the current policy and "
        "the optimiser's moments are zeroed; unset: never",
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        name = data.get("name", "grpo")
        if name not in ALGORITHMS:
            raise ValueError(ALGORITHMS.unknown_message(name))
        defaults = vars(ALGORITHMS.get(name))
        resolved = {key: defaults[key] for key in cls.model_fields if key in defaults}
        # Unknown keys pass through so that extra="forbid" names them.
        resolved.update({key: value for key, value in data.items() if value is not None})
        if resolved.get("policy_loss") == "decoupled_ppo":
            resolved = DECOUPLED_DEFAULTS | resolved
        return resolved

    @field_validator("reference_reset_every")
    @classmethod
    def _reset_needs_a_reference(cls, every: int | None, info: ValidationInfo) -> int | None:
        if every is not None and info.data.get("kl_placement") == "off":
            raise ValueError("resets the KL reference, and kl_placement is off: set kl_placement to loss or reward")
        return every

    @field_validator("behav_weight_cap", "behav_weight_action")
    @classmethod
    def _decoupled_only(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None and info.data.get("policy_loss") not in (None, "decoupled_ppo"):
            raise ValueError(f"only the decoupled_ppo policy loss reads {info.field_name}; leave it unset")
        return value

    @field_validator("kl_coef")
    @classmethod
    def _kl_coef_matches_placement(cls, kl_coef: float, info: ValidationInfo) -> float:
        placement = info.data.get("kl_placement")
        if placement == "off" and kl_coef:
            raise ValueError(f"{kl_coef} has no effect with kl_placement 'off': set kl_placement to loss or reward")
        if placement in ("loss", "reward") and not kl_coef:
            raise ValueError(f"kl_placement is {placement!r}, so kl_coef must be above 0 (or set kl_placement: off)")
        return kl_coef

    @field_validator("dual_clip_c")
    @classmethod
    def _dual_clip_above_one(cls, dual_clip_c: float) -> float:
        if dual_clip_c and dual_clip_c <= 1:
            raise ValueError(f"must be 0 (off) or above 1, got {dual_clip_c}")
        return dual_clip_c


class CurriculumSpec(_Strict):
    """Which train prompts a step draws and how many rollouts each gets (engine.sampling).
    A strategy's parameters take its defaults when the spec is parsed; a parameter it
    does not read stays unset. The prior of the difficulty store applies to every one."""

    strategy: str = Field(
        "uniform",
        description="uniform: every prompt; easy_to_hard: difficulty pacing; cures: posterior-weighted prompts "
        "and rollouts allocated by gradient spread; dars: extra rollouts for hard prompts in a second round",
    )
    start_quantile: float | None = Field(
        None, gt=0, le=1, description="easy_to_hard: the share of the pool (by difficulty) admissible at step 1"
    )
    ramp_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="easy_to_hard: steps over which the admissible share rises to 1"
    )
    # CurES (engine.sampling.cures; defaults from the authors' code)
    pre_rollouts: int | None = Field(
        None, ge=1, le=4096, description="cures: rollouts of every chunk prompt before it trains (n_min; 4)"
    )
    chunk_prompts: int | None = Field(
        None, ge=1, le=1_000_000, description="cures: prompts pre-rolled together, then trained on for chunk_steps"
    )
    chunk_steps: int | None = Field(None, ge=1, le=1_000_000, description="cures: steps spent on each chunk (10)")
    weight_scale: float | None = Field(
        None,
        ge=0,
        le=10_000,
        description="cures: prompt weight exp(weight_scale·sqrt(p̂(1−p̂))/(A+1)); the released 0.01 is "
        "nearly uniform, larger values favour p̂ near 1/2",
    )
    allocation_unit: int | None = Field(
        None, ge=1, le=4096, description="cures: rollouts are allocated in whole units of this many (4)"
    )
    online_update: bool | None = Field(
        None, description="cures: every verified training rollout also updates its prompt's posterior"
    )
    gradient_norms: Literal["embedding", "unit"] | None = Field(
        None,
        description="cures: the gradient norms g in each prompt's spread: embedding (the code's: ‖∇(−log π)‖ over "
        "the embedding matrix, one backward pass per pre-rollout) or unit (every g = 1, spread sqrt(a(1−a)))",
    )
    # DARS (engine.sampling.dars; defaults from the authors' code)
    schedule: Literal["equal", "hardness"] | None = Field(
        None,
        description="dars: extra rollouts up to the p = 0.5 advantage peak (equal) or weighted to harder "
        "prompts (hardness)",
    )
    max_rollouts: int | None = Field(
        None, ge=2, le=65_536, description="dars: N_max, rollouts per prompt over both rounds; unset: 4·n (equal), 8·n (hardness)"
    )
    schedule_std: bool | None = Field(
        None, description="dars: the schedule of std-normalised advantages (S = 2·sqrt(p(1−p))); false: R − mean"
    )
    upper_threshold: float | None = Field(
        None, gt=0, le=1, description="dars: merged groups train only with 0 < accuracy < this (1.0)"
    )
    prior_alpha: float = Field(
        1.0, gt=0, le=1e6, description="difficulty store: α₀ of each prompt's Beta prior over its pass rate"
    )
    prior_beta: float = Field(
        1.0, gt=0, le=1e6, description="difficulty store: β₀ of each prompt's Beta prior over its pass rate"
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict) or data.get("strategy", "uniform") not in SAMPLERS:
            return data  # the strategy check below names an unknown one
        defaults = SAMPLERS.get(data.get("strategy", "uniform")).parameters
        return defaults | {key: value for key, value in data.items() if value is not None}

    @field_validator("strategy")
    @classmethod
    def _strategy_known(cls, strategy: str) -> str:
        return registered(SAMPLERS, strategy)

    @field_validator(
        "start_quantile",
        "ramp_steps",
        "pre_rollouts",
        "chunk_prompts",
        "chunk_steps",
        "weight_scale",
        "allocation_unit",
        "online_update",
        "gradient_norms",
        "schedule",
        "max_rollouts",
        "schedule_std",
        "upper_threshold",
    )
    @classmethod
    def _read_by_the_strategy(cls, value: Any, info: ValidationInfo) -> Any:
        strategy = info.data.get("strategy")
        if value is not None and strategy in SAMPLERS and info.field_name not in SAMPLERS.get(strategy).parameters:
            raise ValueError(f"strategy {strategy!r} does not use {info.field_name}; leave it unset")
        return value

    def strategy_parameters(self) -> dict[str, Any]:
        """The strategy's own parameters, as its sampler takes them."""
        return {name: getattr(self, name) for name in SAMPLERS.get(self.strategy).parameters}


# The defaults are the live demo: on a 2-core CPU with the built-in model a step takes
# about 1 s, and held-out accuracy climbs from about 0.55-0.6 to about 0.8 within 30
# steps (seeds 0-2). n = 16 is a little steadier at 1.5 s a step.
class RolloutSpec(_Strict):
    prompts_per_step: int = Field(16, ge=1, le=100_000)
    n: int = Field(
        8, ge=2, le=4096, description="samples per prompt (the group size); advantages compare them, so at least 2"
    )
    temperature: float = Field(1.0, gt=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1, le=1_000_000)
    samples_per_step: int | None = Field(
        None,
        ge=2,
        le=10_000_000,
        description="rollouts per step held fixed while n varies (BroRL's equal budget): prompts_per_step "
        "becomes samples_per_step / n; unset: prompts_per_step × n",
    )
    memory_budget_mb: int | None = Field(
        None,
        ge=1,
        le=10_000_000,
        description="working memory a step's generation and training may each use (MiB): samples decode and "
        "train in chunks that fit, whatever n; unset: the backend's slots and training.micro_batch_tokens",
    )

    @model_validator(mode="before")
    @classmethod
    def _prompts_from_samples(cls, data: Any) -> Any:
        """samples_per_step fixes prompts_per_step; a spec naming both must agree."""
        if not isinstance(data, dict) or not isinstance(data.get("samples_per_step"), int):
            return data
        samples, n = data["samples_per_step"], data.get("n", cls.model_fields["n"].default)
        if not isinstance(n, int) or n < 1:
            return data  # n's own check names it
        if samples % n:
            raise ValueError(f"samples_per_step ({samples}) must be a multiple of n ({n}): whole prompt groups")
        prompts = data.get("prompts_per_step")
        if prompts is not None and prompts != samples // n:
            raise ValueError(
                f"samples_per_step {samples} with n {n} means prompts_per_step {samples // n}, not {prompts}: "
                "leave prompts_per_step unset"
            )
        return data | {"prompts_per_step": samples // n}
    strategy: str | None = Field(
        None,
        description="how a step's groups are collected: plain, dynamic_sampling (DAPO's refill), or april "
        "(over-sample, stop at the batch, resume the aborted tail next step); "
        "unset: dynamic_sampling when the algorithm asks for it, else plain",
    )
    over_sampling: int | None = Field(
        None,
        validate_default=True,
        ge=1,
        le=1_000_000,
        description="april: prompt groups submitted per round, at least prompts_per_step; unset: twice it (the paper's)",
    )
    stale_prefix: Literal["train", "mask"] | None = Field(
        None,
        validate_default=True,
        description="april: a resumed sample's tokens from earlier policies are trained as on-policy (train, the "
        "paper's) or left out of the loss (mask); importance-weighting them is algorithm.policy_loss decoupled_ppo",
    )

    @field_validator("strategy")
    @classmethod
    def _strategy_known(cls, strategy: str | None) -> str | None:
        return strategy if strategy is None else registered(ROLLOUT_STRATEGIES, strategy)

    @field_validator("over_sampling", "stale_prefix")
    @classmethod
    def _april_fields(cls, value: Any, info: ValidationInfo) -> Any:
        """Read by strategy april only; there, unset means the paper's (twice the batch,
        stale tokens trained as on-policy)."""
        if info.data.get("strategy") != "april":
            if value is not None:
                raise ValueError("read only by rollout.strategy april; leave it unset")
            return value
        batch = info.data.get("prompts_per_step")
        if info.field_name == "stale_prefix":
            return value or "train"
        if value is None:
            return None if batch is None else 2 * batch
        if batch is not None and value < batch:
            raise ValueError(
                f"{value} is below prompts_per_step ({batch}): APRIL submits at least the groups a step trains on"
            )
        return value


class TrainingSpec(_Strict):
    steps: int = Field(60, ge=1, le=1_000_000)
    lr: float = Field(3e-4, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(
        10, ge=0, le=1_000_000, description="linear learning-rate warm-up; keeps Adam's first, sign-like steps small"
    )
    micro_batch_tokens: int = Field(
        8192,
        ge=64,
        le=10_000_000,
        description="padded tokens per forward/backward pass; bounds memory (cut to rollout.memory_budget_mb's plan)",
    )
    mini_batches: int = Field(
        1, ge=1, le=4096, description="optimiser steps per rollout batch, each on an equal share of its prompt groups"
    )
    epochs: int = Field(1, ge=1, le=100, description="passes over each rollout batch")
    eval_every: int = Field(5, ge=0, description="steps between evaluations; 0 = only before and after")
    eval_samples: int = Field(
        1, ge=1, le=4096, description="completions sampled per held-out prompt; at least the largest eval_pass_k"
    )
    eval_pass_k: list[int] = Field(
        [1], min_length=1, description="k values reported as val/pass@k (unbiased estimator over eval_samples)"
    )
    eval_split: EvalSplit = Field(
        "test",
        description="held-out prompts: test, or hard (built-in arith only: held-out chains of 9 to 12 operations, "
        "where pass@k is not at its ceiling)",
    )
    checkpoint_every: int = Field(
        0,
        ge=0,
        description="steps between checkpoints; 0 = none along the way. A run given a run directory "
        "always checkpoints its last step (and the step it stopped after when cancelled)",
    )

    @field_validator("eval_pass_k")
    @classmethod
    def _positive_distinct_ks(cls, ks: list[int]) -> list[int]:
        if any(k < 1 for k in ks):
            raise ValueError(f"every k must be at least 1, got {ks}")
        return sorted(set(ks))

    @model_validator(mode="after")
    def _enough_samples_for_pass_k(self) -> "TrainingSpec":
        if max(self.eval_pass_k) > self.eval_samples:
            raise ValueError(
                f"eval_pass_k {max(self.eval_pass_k)} needs eval_samples ≥ {max(self.eval_pass_k)}, got {self.eval_samples}"
            )
        return self


class ResourcesSpec(_Strict):
    executor: Literal["ray", "inprocess"] = Field(
        "ray", description="'ray': the trainer runs in a Ray actor; 'inprocess': in the driver"
    )
    gpus: int = Field(0, ge=0, le=1024)
    cpus: int = Field(2, ge=1, le=1024, description="CPU cores for the trainer (also its torch threads)")
    rollout_workers: int = Field(
        0,
        ge=0,
        le=256,
        description="rollout workers, each with its own copy of the policy and generation backend (Ray actors "
        "under executor ray, threads in process), weights pushed to them after every update; 0 = colocated: the "
        "trainer's model generates (mode sync only; mode async needs at least 1)",
    )
    rollout_cpus: int = Field(1, ge=1, le=1024, description="CPU cores of each rollout worker")
    rollout_gpus: int = Field(0, ge=0, le=1024, description="GPUs of each rollout worker")
    placement: Literal["colocated", "split"] = Field(
        "colocated",
        description="executor ray: 'split' puts the trainer and each rollout worker on different Ray nodes (a "
        "STRICT_SPREAD placement group); 'colocated' lets Ray place them anywhere, one node included",
    )

    @model_validator(mode="after")
    def _split_needs_rollout_workers_on_ray(self) -> "ResourcesSpec":
        if self.placement == "split" and (self.executor != "ray" or self.rollout_workers < 1):
            raise ValueError("placement 'split' needs executor 'ray' and at least one rollout worker")
        return self

    def bundles(self) -> list[dict[str, float]]:
        """Ray placement-group bundles: the trainer's, then one per rollout worker."""
        trainer = {"CPU": self.cpus, "GPU": self.gpus}
        worker = {"CPU": self.rollout_cpus, "GPU": self.rollout_gpus}
        return [{k: v for k, v in bundle.items() if v} for bundle in [trainer] + [worker] * self.rollout_workers]


class BackendsSpec(_Strict):
    generation: str = Field("torch", description="the generation backend: torch (continuous batching) or vllm")
    training: str = Field("torch", description="the training backend: torch (one device) or deepspeed (ZeRO)")
    # Options of one backend each: unset (null) under the other backends, so a stored,
    # resolved spec parses back to itself; the chosen backend's are filled in.
    kv_cache_gb: float | None = Field(None, gt=0, le=4096, description="vllm: GiB of KV cache the engine reserves; default 1")
    tensor_parallel_size: int | None = Field(None, ge=1, le=64, description="vllm: GPUs one generation engine spans; default 1")
    zero_stage: int | None = Field(
        None, ge=0, le=3, description="deepspeed: ZeRO stage 0-3 (what is sharded across ranks); default 0"
    )
    data_parallel: int | None = Field(
        None,
        ge=1,
        le=1024,
        description="deepspeed: trainer ranks, each a process training on its shard of every mini-batch "
        "(gradients averaged); on GPUs one per GPU, resources.gpus; on the CPU default 1",
    )

    # (option, its backend, the section field naming the backend, its default)
    OPTIONS: ClassVar[tuple[tuple[str, str, str, Any], ...]] = (
        ("kv_cache_gb", "vllm", "generation", 1.0),
        ("tensor_parallel_size", "vllm", "generation", 1),
        ("zero_stage", "deepspeed", "training", 0),
        ("data_parallel", "deepspeed", "training", None),  # resolved from resources.gpus (RunSpec)
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_the_chosen_backends_options(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        chosen = {"generation": data.get("generation", "torch"), "training": data.get("training", "torch")}
        filled = {name: default for name, backend, side, default in cls.OPTIONS if chosen[side] == backend}
        return filled | {key: value for key, value in data.items() if value is not None}

    @model_validator(mode="after")
    def _options_of_the_chosen_backends(self) -> "BackendsSpec":
        """An option of a backend the spec does not use would silently do nothing."""
        for name, backend, side, _ in self.OPTIONS:
            if getattr(self, name) is not None and getattr(self, side) != backend:
                raise ValueError(f"{name} applies to the {backend} backend only")
        if self.zero_stage == 3 and self.generation == "torch":
            # The torch generation backend decodes with the trainer's own module, whose
            # weights ZeRO-3 shards away between forward passes.
            raise ValueError("zero_stage 3 needs generation: vllm (torch generation shares the sharded module)")
        return self

    def generation_options(self) -> dict[str, Any]:
        """What the generation backend's constructor takes from the spec besides the model."""
        if self.generation == "vllm":
            return {"kv_cache_gb": self.kv_cache_gb, "tensor_parallel_size": self.tensor_parallel_size}
        return {}

    @field_validator("generation")
    @classmethod
    def _generation_known(cls, name: str) -> str:
        return registered(GENERATION_BACKENDS, name)

    @field_validator("training")
    @classmethod
    def _training_known(cls, name: str) -> str:
        return registered(TRAINING_BACKENDS, name)


class OrchestrationSpec(_Strict):
    mode: str = Field(
        "sync",
        description="the recipe: sync (sample with the current policy, then train) or async (AReaL: rollout "
        "workers generate continuously, the trainer takes a batch whenever one is ready)",
    )
    max_staleness: int | None = Field(
        None,
        validate_default=True,
        ge=0,
        le=1_000_000,
        description="async: η, how many policy versions a trained group may lag behind (0 = synchronous); unset: 2",
    )
    max_concurrent_groups: int | None = Field(
        None,
        ge=1,
        le=1_000_000,
        description="async: prompt groups in flight at most, over all rollout workers; unset: only η bounds them",
    )

    @field_validator("mode")
    @classmethod
    def _mode_known(cls, mode: str) -> str:
        return registered(RECIPES, mode)

    @field_validator("max_staleness", "max_concurrent_groups")
    @classmethod
    def _async_fields(cls, value: Any, info: ValidationInfo) -> Any:
        """Read by mode async only; there, an unset η is 2 (AReaL's example; its docs
        recommend 2-8)."""
        if info.data.get("mode") != "async":
            if value is not None:
                raise ValueError("read only by orchestration.mode async; leave it unset")
            return value
        return 2 if value is None and info.field_name == "max_staleness" else value


class TelemetrySpec(_Strict):
    samples_per_prompt: int = Field(
        4,
        ge=2,
        le=64,
        description="sample records kept per prompt and step for drill-down, one right and one wrong where both exist",
    )


class RunSpec(_Strict):
    name: str = Field("", max_length=200)
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec = DatasetSpec()
    algorithm: AlgorithmSpec = AlgorithmSpec()
    curriculum: CurriculumSpec = CurriculumSpec()
    # Validated even when absent, so an unset strategy is resolved from the algorithm.
    rollout: RolloutSpec = Field(RolloutSpec(), validate_default=True)
    training: TrainingSpec = Field(TrainingSpec(), validate_default=True)  # the budget may cut it
    resources: ResourcesSpec = ResourcesSpec()
    backends: BackendsSpec = BackendsSpec()
    orchestration: OrchestrationSpec = Field(OrchestrationSpec(), validate_default=True)
    telemetry: TelemetrySpec = TelemetrySpec()
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("rollout")
    @classmethod
    def _resolve_rollout_strategy(cls, rollout: RolloutSpec, info: ValidationInfo) -> RolloutSpec:
        """An unset rollout strategy follows the algorithm; a plain one under dynamic
        sampling would silently drop DAPO's filter, so it is refused."""
        algorithm, curriculum = info.data.get("algorithm"), info.data.get("curriculum")
        if algorithm is None or curriculum is None:
            return rollout  # the algorithm's or curriculum's own error says what is wrong
        # A sampler whose plan needs its own collection (DARS's second round) names it.
        needed = getattr(SAMPLERS.get(curriculum.strategy), "rollout_strategy", None)
        if needed is not None:
            if rollout.strategy not in (None, needed):
                raise ValueError(
                    f"curriculum {curriculum.strategy!r} collects with strategy {needed!r}: leave rollout.strategy unset"
                )
            if algorithm.dynamic_sampling:
                raise ValueError(
                    f"curriculum {curriculum.strategy!r} filters its own groups: set algorithm.dynamic_sampling: false"
                )
            return rollout.model_copy(update={"strategy": needed})
        if rollout.strategy is None:
            return rollout.model_copy(
                update={"strategy": "dynamic_sampling" if algorithm.dynamic_sampling else "plain"}
            )
        if rollout.strategy == "plain" and algorithm.dynamic_sampling:
            raise ValueError(
                "strategy plain collects once, so algorithm.dynamic_sampling would be ignored: "
                "leave rollout.strategy unset or set algorithm.dynamic_sampling: false"
            )
        return rollout

    @field_validator("backends")
    @classmethod
    def _data_parallel_ranks_fit_the_gpus(cls, backends: BackendsSpec, info: ValidationInfo) -> BackendsSpec:
        """deepspeed's ranks: one per GPU on GPUs (resources.gpus), else data_parallel or 1."""
        resources = info.data.get("resources")
        if backends.training != "deepspeed" or resources is None:
            return backends
        ranks = backends.data_parallel
        if resources.gpus:
            if ranks not in (None, resources.gpus):
                raise ValueError(
                    f"data_parallel ({ranks}) must equal resources.gpus ({resources.gpus}): one rank per GPU; "
                    "leave it unset"
                )
            ranks = resources.gpus
        return backends.model_copy(update={"data_parallel": ranks or 1})

    @field_validator("orchestration")
    @classmethod
    def _placement_fits_the_recipe(cls, orchestration: OrchestrationSpec, info: ValidationInfo) -> OrchestrationSpec:
        """Async needs rollout workers apart from the trainer; the sync recipe generates on
        the trainer's model without them (colocated) and on them with (split)."""
        resources, rollout = info.data.get("resources"), info.data.get("rollout")
        if resources is None or rollout is None:
            return orchestration
        if orchestration.mode == "async":
            if resources.rollout_workers < 1:
                raise ValueError("mode async generates on rollout workers: set resources.rollout_workers to at least 1")
            if rollout.strategy not in ("plain", "dynamic_sampling"):
                raise ValueError(
                    f"mode async collects continuously, so rollout.strategy {rollout.strategy!r} does not apply: "
                    "use mode sync for it"
                )
        return orchestration

    @field_validator("curriculum")
    @classmethod
    def _difficulties_for_pacing(cls, curriculum: CurriculumSpec, info: ValidationInfo) -> CurriculumSpec:
        dataset = info.data.get("dataset")
        if curriculum.strategy == "easy_to_hard" and dataset is not None and dataset.path is not None:
            if dataset.columns.difficulty is None:
                raise ValueError(
                    "easy_to_hard paces prompts by difficulty, and this dataset file has none: "
                    "name its difficulty column in dataset.columns.difficulty"
                )
        return curriculum

    @field_validator("rollout")
    @classmethod
    def _memory_budget_fits(cls, rollout: RolloutSpec, info: ValidationInfo) -> RolloutSpec:
        """The chunk plan must hold one sample being generated and trained (engine.rollout.chunked)."""
        model = info.data.get("model")
        if model is not None:
            try:
                memory_plan(model, rollout)
            except ValueError as exc:
                raise ValueError(f"memory_budget_mb: {exc}") from None
        return rollout

    @field_validator("rollout")
    @classmethod
    def _cures_chunk_holds_a_step(cls, rollout: RolloutSpec, info: ValidationInfo) -> RolloutSpec:
        curriculum = info.data.get("curriculum")
        if curriculum is not None and curriculum.strategy == "cures" and curriculum.chunk_prompts < rollout.prompts_per_step:
            raise ValueError(
                f"prompts_per_step ({rollout.prompts_per_step}) exceeds curriculum.chunk_prompts "
                f"({curriculum.chunk_prompts}): a CurES step draws its prompts from one chunk"
            )
        return rollout

    @field_validator("training")
    @classmethod
    def _micro_batches_fit_the_budget(cls, training: TrainingSpec, info: ValidationInfo) -> TrainingSpec:
        """With rollout.memory_budget_mb, micro_batch_tokens is cut to the chunk plan's, as stored."""
        model, rollout = info.data.get("model"), info.data.get("rollout")
        if model is None or rollout is None:
            return training
        plan = memory_plan(model, rollout, training.micro_batch_tokens)
        if plan is None:
            return training
        return training.model_copy(update={"micro_batch_tokens": plan.micro_batch_tokens})

    @field_validator("training")
    @classmethod
    def _hard_split_is_built_in(cls, training: TrainingSpec, info: ValidationInfo) -> TrainingSpec:
        dataset = info.data.get("dataset")
        if training.eval_split == "hard" and dataset is not None and dataset.path is not None:
            raise ValueError("eval_split: hard is the built-in arith task's; a dataset file evaluates on its test split")
        return training

    @field_validator("training")
    @classmethod
    def _mini_batches_hold_whole_groups(cls, training: TrainingSpec, info: ValidationInfo) -> TrainingSpec:
        rollout = info.data.get("rollout")
        if rollout is not None and training.mini_batches > rollout.prompts_per_step:
            raise ValueError(
                f"mini_batches ({training.mini_batches}) exceeds rollout.prompts_per_step "
                f"({rollout.prompts_per_step}): a mini-batch holds whole prompt groups"
            )
        return training


def parse_spec(data: Any) -> RunSpec:
    """Validate a mapping into a resolved RunSpec, or raise SpecError naming each problem."""
    if not isinstance(data, dict):
        raise SpecError([("spec", f"expected a mapping of settings, got {type(data).__name__}")])
    try:
        return RunSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(
            [
                (".".join(str(part) for part in err["loc"]) or "spec", err["msg"].removeprefix("Value error, "))
                for err in exc.errors()
            ]
        ) from None


def load_spec_file(path: str | Path) -> RunSpec:
    """Read a YAML (or JSON, a subset of YAML) spec file."""
    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecError([("file", f"cannot read {path}: {exc}")]) from None
    return parse_spec(data or {})
