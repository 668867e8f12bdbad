"""The run spec: the one contract between the platform, the workers and the engine.

A spec is validated here (pydantic, no torch, no Django), resolved (algorithm defaults
filled in) and stored whole on the run, so any run can be reproduced or diffed. The
choices of every part come from the engine's registries (algorithms, samplers, rollout
strategies, recipes, generation and training backends), never from a second list.
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from engine.algorithms import ALGORITHMS, Advantage, Aggregation, KLEstimator, KLPlacement, PolicyLoss, RatioLevel
from engine.assets import BUILTIN_PREFIX, check_model_folder
from engine.data import AnswerFormat, DatasetError, DatasetFormat, check_template, detect_format
from engine.inference import GENERATION_BACKENDS
from engine.recipes import RECIPES
from engine.registry import Registry
from engine.rollout import ROLLOUT_STRATEGIES
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
            raise ValueError(f"cannot look this path up: {getattr(exc, 'strerror', None) or exc}") from None
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
    policy_loss: PolicyLoss | None = Field(None, description="ppo: the clipped surrogate on that ratio")
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
        return resolved

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

    strategy: str = Field("uniform", description="uniform: every prompt; easy_to_hard: difficulty pacing")
    start_quantile: float | None = Field(
        None, gt=0, le=1, description="easy_to_hard: the share of the pool (by difficulty) admissible at step 1"
    )
    ramp_steps: int | None = Field(
        None, ge=1, le=1_000_000, description="easy_to_hard: steps over which the admissible share rises to 1"
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

    @field_validator("start_quantile", "ramp_steps")
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
    strategy: str | None = Field(
        None,
        description="how a step's groups are collected: plain, or dynamic_sampling (DAPO's refill); "
        "unset: dynamic_sampling when the algorithm asks for it, else plain",
    )

    @field_validator("strategy")
    @classmethod
    def _strategy_known(cls, strategy: str | None) -> str | None:
        return strategy if strategy is None else registered(ROLLOUT_STRATEGIES, strategy)


class TrainingSpec(_Strict):
    steps: int = Field(60, ge=1, le=1_000_000)
    lr: float = Field(3e-4, gt=0, le=1)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    warmup_steps: int = Field(
        10, ge=0, le=1_000_000, description="linear learning-rate warm-up; keeps Adam's first, sign-like steps small"
    )
    micro_batch_tokens: int = Field(
        8192, ge=64, le=10_000_000, description="padded tokens per forward/backward pass; bounds memory"
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


class BackendsSpec(_Strict):
    generation: str = Field("torch", description="the generation backend: torch (continuous batching)")
    training: str = Field("torch", description="the training backend: torch (one device)")

    @field_validator("generation")
    @classmethod
    def _generation_known(cls, name: str) -> str:
        return registered(GENERATION_BACKENDS, name)

    @field_validator("training")
    @classmethod
    def _training_known(cls, name: str) -> str:
        return registered(TRAINING_BACKENDS, name)


class OrchestrationSpec(_Strict):
    mode: str = Field("sync", description="the recipe: sync (sample with the current policy, then train)")

    @field_validator("mode")
    @classmethod
    def _mode_known(cls, mode: str) -> str:
        return registered(RECIPES, mode)


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
    rollout: RolloutSpec = RolloutSpec()
    training: TrainingSpec = TrainingSpec()
    resources: ResourcesSpec = ResourcesSpec()
    backends: BackendsSpec = BackendsSpec()
    orchestration: OrchestrationSpec = OrchestrationSpec()
    telemetry: TelemetrySpec = TelemetrySpec()
    seed: int = Field(0, ge=0, le=2**32 - 1)

    @field_validator("rollout")
    @classmethod
    def _resolve_rollout_strategy(cls, rollout: RolloutSpec, info: ValidationInfo) -> RolloutSpec:
        """An unset rollout strategy follows the algorithm; a plain one under dynamic
        sampling would silently drop DAPO's filter, so it is refused."""
        algorithm = info.data.get("algorithm")
        if algorithm is None:
            return rollout  # the algorithm's own error says what is wrong
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
