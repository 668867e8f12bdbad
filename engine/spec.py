"""The run spec: the one contract between the platform, the workers and the engine.

A spec is validated here (pydantic, no torch, no Django), resolved (algorithm defaults
filled in) and stored whole on the run, so any run can be reproduced or diffed.
"""

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from engine.algorithms import ALGORITHMS, Advantage, Aggregation
from engine.assets import BUILTIN_MODELS, BUILTIN_PREFIX
from engine.tasks import TASKS


class SpecError(ValueError):
    """A spec that cannot run. `problems` holds (field path, reason) pairs."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("invalid run spec: " + "; ".join(f"{loc}: {msg}" for loc, msg in problems))


class _Strict(BaseModel):
    # A misspelt key must fail loudly instead of silently running with a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelSpec(_Strict):
    path: str = Field(
        f"{BUILTIN_PREFIX}arith-tiny",
        description="'builtin:<name>' or a local folder holding a Hugging Face causal LM",
    )
    dtype: Literal["float32", "bfloat16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @field_validator("path")
    @classmethod
    def _model_exists(cls, path: str) -> str:
        if path.startswith(BUILTIN_PREFIX):
            name = path.removeprefix(BUILTIN_PREFIX)
            if name not in BUILTIN_MODELS:
                raise ValueError(BUILTIN_MODELS.unknown_message(name))
        elif not (Path(path) / "config.json").is_file():
            raise ValueError(f"no model folder with a config.json at {path!r}")
        return path


class DatasetSpec(_Strict):
    name: str = Field("arith", description="a built-in task")
    eval_size: int = Field(256, ge=1, le=100_000, description="held-out prompts used for evaluation")

    @field_validator("name")
    @classmethod
    def _dataset_exists(cls, name: str) -> str:
        if name not in TASKS:
            raise ValueError(TASKS.unknown_message(name))
        return name


class AlgorithmSpec(_Strict):
    """Unset fields take the named algorithm's defaults when the spec is parsed."""

    name: str = "grpo"
    advantage: Advantage | None = None
    aggregation: Aggregation | None = None
    clip_eps_low: float | None = Field(None, ge=0, le=10)
    clip_eps_high: float | None = Field(None, ge=0, le=10)
    kl_coef: float | None = Field(None, ge=0)
    entropy_coef: float | None = Field(None, ge=0)

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


# The defaults are the live demo: on a 2-core CPU with the built-in model a step takes
# about 1 s, and held-out accuracy climbs from about 0.55-0.6 to about 0.8 within 30
# steps (seeds 0-2). n = 16 is a little steadier at 1.5 s a step.
class RolloutSpec(_Strict):
    prompts_per_step: int = Field(16, ge=1, le=100_000)
    n: int = Field(8, ge=1, le=4096, description="samples per prompt (the group size)")
    temperature: float = Field(1.0, gt=0, le=5)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, ge=1, le=1_000_000)


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
    eval_every: int = Field(5, ge=0, description="steps between evaluations; 0 = only before and after")


class ResourcesSpec(_Strict):
    executor: Literal["ray", "inprocess"] = Field(
        "ray", description="'ray': the trainer runs in a Ray actor; 'inprocess': in the driver"
    )
    gpus: int = Field(0, ge=0, le=1024)
    cpus: int = Field(2, ge=1, le=1024, description="CPU cores for the trainer (also its torch threads)")


class RunSpec(_Strict):
    name: str = Field("", max_length=200)
    model: ModelSpec = ModelSpec()
    dataset: DatasetSpec = DatasetSpec()
    algorithm: AlgorithmSpec = AlgorithmSpec()
    rollout: RolloutSpec = RolloutSpec()
    training: TrainingSpec = TrainingSpec()
    resources: ResourcesSpec = ResourcesSpec()
    seed: int = Field(0, ge=0, le=2**32 - 1)


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
