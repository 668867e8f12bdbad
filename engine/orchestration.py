"""Drive one run: evaluate, train `training.steps` steps, evaluate, reporting every event.

    run(spec, sink, should_stop) -> "succeeded" | "cancelled"   (raises on failure)

The trainer lives where `resources.executor` says: in this process ('inprocess') or in
a Ray actor ('ray': local Ray started on first use, or the cluster at RAY_ADDRESS). Either
way the driver owns the loop, so cancellation is checked here, between steps, and the
trainer never needs to know who is watching.
"""

import os
from collections.abc import Callable, Iterable
from typing import Literal

from engine.events import Event, EventSink, Heartbeat, Status
from engine.spec import RunSpec

Outcome = Literal["succeeded", "cancelled"]


class LocalTrainer:
    """The trainer in this process."""

    def __init__(self, spec: RunSpec):
        from engine.trainer import Trainer

        self._trainer = Trainer(spec, worker="trainer")

    def step(self) -> list[Event]:
        return self._trainer.step()

    def evaluate(self, step: int) -> list[Event]:
        return self._trainer.evaluate(step)

    def close(self) -> None:
        pass


class RayTrainer:
    """The trainer in a Ray actor holding the run's CPUs and GPUs. Ray stays up after the
    run: a Celery worker drives many runs, and starting Ray costs seconds each time."""

    def __init__(self, spec: RunSpec):
        import ray

        from engine.trainer import Trainer

        if not ray.is_initialized():
            ray.init(
                address=os.environ.get("RAY_ADDRESS") or None,
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=False,
            )
        self._ray = ray
        actor_class = ray.remote(num_cpus=spec.resources.cpus, num_gpus=spec.resources.gpus)(Trainer)
        self._actor = actor_class.remote(spec, worker="ray-trainer")

    def step(self) -> list[Event]:
        return self._ray.get(self._actor.step.remote())

    def evaluate(self, step: int) -> list[Event]:
        return self._ray.get(self._actor.evaluate.remote(step))

    def close(self) -> None:
        self._ray.kill(self._actor)


EXECUTORS = {"inprocess": LocalTrainer, "ray": RayTrainer}


def evaluates_after(step: int, steps: int, eval_every: int) -> bool:
    """Evaluate after every `eval_every`-th step and after the last one."""
    return step == steps or (eval_every > 0 and step % eval_every == 0)


def run(spec: RunSpec, sink: EventSink, should_stop: Callable[[], bool] = lambda: False) -> Outcome:
    """Run `spec` to its end or until `should_stop()` is true between two steps.

    Every event goes to `sink`; a Heartbeat closes each step (and the evaluation before
    the first), which is when a batching sink writes. On an exception the sink gets a
    Status('failed') naming it, and the exception propagates to the caller.
    """
    sink.emit(Status(status="running"))
    trainer = None
    try:
        trainer = EXECUTORS[spec.resources.executor](spec)
        _forward(sink, trainer.evaluate(0))
        sink.emit(Heartbeat(step=0))
        for step in range(1, spec.training.steps + 1):
            if should_stop():
                sink.emit(Status(status="cancelled", message=f"cancelled on request before step {step}"))
                return "cancelled"
            _forward(sink, trainer.step())
            if evaluates_after(step, spec.training.steps, spec.training.eval_every):
                _forward(sink, trainer.evaluate(step))
            sink.emit(Heartbeat(step=step))
        sink.emit(Status(status="succeeded"))
        return "succeeded"
    except Exception as exc:
        sink.emit(Status(status="failed", message=describe(exc)))
        raise
    finally:
        if trainer is not None:
            trainer.close()
        sink.flush()


def describe(exc: BaseException) -> str:
    """A one-line reason: for an error raised inside a Ray actor, the original error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {exc}"


def _forward(sink: EventSink, events: Iterable[Event]) -> None:
    for event in events:
        sink.emit(event)
