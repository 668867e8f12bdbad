"""Telemetry events the engine emits and the platform stores and streams.

Every event is a small pydantic model with a `kind` tag, serialisable to JSON as is.
The engine hands events to an EventSink; the worker's sink writes them to the database
and the channel layer, the CLI's sink prints them.
"""

import time
from collections.abc import Callable
from typing import Annotated, Literal, Protocol, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

T = TypeVar("T")


def now() -> float:
    return time.time()


# Span times: unix seconds for the timeline, measured on the monotonic clock so that a
# duration is never negative or skewed when the wall clock is adjusted mid-run.
_WALL_AT_START, _MONOTONIC_AT_START = time.time(), time.monotonic()


def monotonic_now() -> float:
    """Unix seconds, advancing with the monotonic clock from this process's start."""
    return _WALL_AT_START + (time.monotonic() - _MONOTONIC_AT_START)


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid")
    wall_time: float = Field(default_factory=now, description="unix seconds when the event was made")


class Metrics(_Event):
    """Scalar metrics of one step, named as in docs/metrics.md (e.g. 'reward/mean')."""

    kind: Literal["metrics"] = "metrics"
    step: int
    values: dict[str, float]


class LengthHistogram(_Event):
    """Response lengths (tokens) of one step's rollouts over the run's fixed bins."""

    kind: Literal["length_histogram"] = "length_histogram"
    step: int
    bin_edges: list[int]
    counts: list[int]


class PromptResult(BaseModel):
    prompt_id: str
    difficulty: float
    attempts: int
    successes: int
    mean_length: float


class PromptResults(_Event):
    """Per-prompt outcomes of one step (or of an evaluation when split == 'test')."""

    kind: Literal["prompt_results"] = "prompt_results"
    step: int
    split: Literal["train", "test"] = "train"
    results: list[PromptResult]


class PromptDifficulty(BaseModel):
    """One prompt's row of the difficulty store (engine.sampling.difficulty)."""

    prompt_id: str
    attempts: int
    successes: int
    alpha: float  # the pass rate's Beta posterior
    beta: float
    mean: float
    low: float  # the central credible interval (90% unless the spec says otherwise)
    high: float
    last_step: int  # the last step that rolled it out (0: never)
    allocated: int  # rollouts planned for it at last_step


class DifficultyUpdates(_Event):
    """The prompts whose difficulty record changed during `step`, and only those."""

    kind: Literal["difficulty"] = "difficulty"
    step: int
    prompts: list[PromptDifficulty]


SampleStatus = Literal["completed", "truncated", "aborted"]


class SampleRecord(BaseModel):
    prompt_id: str
    response: str  # the decoded response text
    reward: float  # the verifier's verdict (before shaping)
    length: int  # response tokens
    status: SampleStatus
    first_version: int  # the policy versions that sampled its first and last tokens
    last_version: int


class PromptText(BaseModel):
    prompt_id: str
    prompt: str  # the text the model was given (a dataset's template applied)
    answer: str  # the reference answer the verifier compares responses with


class SampleRecords(_Event):
    """A bounded set of one step's samples for drill-down: at most
    `telemetry.samples_per_prompt` per prompt, one right and one wrong where both exist,
    and each of their prompts once, with its text and reference answer."""

    kind: Literal["samples"] = "samples"
    step: int
    split: Literal["train", "test"] = "train"
    samples: list[SampleRecord]
    prompts: list[PromptText] = []


# generate: a rollout worker decodes; verify: the verifier scores responses (and reward
# shaping); train: the trainer computes log-probs and updates; sync: weights go from the
# trainer to the rollout workers; wait: a worker waits for another's result; eval:
# held-out evaluation; idle: a worker does nothing in the step (filled in between the
# others by engine.telemetry).
Phase = Literal["generate", "verify", "train", "sync", "wait", "eval", "idle"]


class Span(_Event):
    """A stretch of time one worker (trainer, rollout-0, …) spent in one phase: the
    busy/idle timeline."""

    kind: Literal["span"] = "span"
    step: int
    worker: str
    phase: Phase
    start: float
    end: float


class Heartbeat(_Event):
    kind: Literal["heartbeat"] = "heartbeat"
    step: int


class Status(_Event):
    kind: Literal["status"] = "status"
    status: Literal["running", "succeeded", "failed", "cancelled"]
    message: str = ""


class Log(_Event):
    kind: Literal["log"] = "log"
    level: Literal["info", "warning", "error"] = "info"
    message: str


class Checkpoint(_Event):
    """A complete checkpoint was written (engine.checkpoint): `path` is its folder, and
    `metrics` the run's latest held-out metrics at that step (what keep-best retention
    ranks checkpoints by; empty before the first evaluation)."""

    kind: Literal["checkpoint"] = "checkpoint"
    step: int
    path: str
    metrics: dict[str, float]


Event = Annotated[
    Union[
        Metrics,
        LengthHistogram,
        PromptResults,
        DifficultyUpdates,
        SampleRecords,
        Span,
        Heartbeat,
        Status,
        Log,
        Checkpoint,
    ],
    Field(discriminator="kind"),
]
_EVENT_ADAPTER: TypeAdapter[Event] = TypeAdapter(Event)


def event_from_dict(data: dict) -> Event:
    return _EVENT_ADAPTER.validate_python(data)


class Superseded(RuntimeError):
    """Raised by a sink's `emit` or `flush` when the platform refused the batch because
    this driver's attempt is no longer the run's current one (the reconciler requeued
    the run and another worker may own it now). `engine.orchestration.run` stops at
    once on it: no further step, no checkpoint into the shared run folder, no status."""


class EventSink(Protocol):
    """Where a run's events go. `emit` must be cheap; `flush` makes them durable (and
    raises `Superseded` when the platform refuses this driver's writes);
    `publish(action, event)` runs `action()` (renaming a checkpoint into place) and stores
    `event` (its Checkpoint) together, only while the platform holds this driver's writes
    accepted, or raises `Superseded`: the run folder and the platform's record of it agree."""

    def emit(self, event: Event) -> None: ...

    def flush(self) -> None: ...

    def publish(self, action: Callable[[], T], event: Event) -> T: ...


class ListSink:
    """Keeps events in memory (tests, benchmarks)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def flush(self) -> None:
        pass

    def publish(self, action: Callable[[], T], event: Event) -> T:
        result = action()
        self.emit(event)
        return result

    def of_kind(self, kind: str) -> list[Event]:
        return [event for event in self.events if event.kind == kind]
