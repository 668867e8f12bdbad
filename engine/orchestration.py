"""Drive one run: evaluate, train `training.steps` steps, evaluate, reporting every event.

    run(spec, sink, should_stop, run_dir=None, resume_from=None)
        -> "succeeded" | "cancelled"   (raises on failure)

The recipe named by `orchestration.mode` (engine.recipes) lives where
`resources.executor` says: in this process ('inprocess') or in a Ray actor ('ray': local
Ray started on first use, or the cluster at RAY_ADDRESS). Either way the driver owns the
loop, so cancellation is checked here, between steps, and the recipe never needs to
know who is watching.

Checkpoints (engine.checkpoint) need a run directory. With one, the run writes a
checkpoint every `training.checkpoint_every` steps, after its last step, and after the
last step it finished when cancelled, each announced by a Checkpoint event. A run
starts from a checkpoint when its run directory already holds one (the latest: a
requeued run picks up where its lost worker stopped), else from `resume_from` when
given (a fork: the new run continues another's checkpoint under its own spec), and
trains from the restored step on to `training.steps`.
"""

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Literal

from engine.checkpoint import (
    CheckpointInfo,
    checkpoint_folder,
    discard_checkpoint,
    latest_checkpoint,
    publish_checkpoint,
    read_info,
)
from engine.events import Checkpoint, Event, EventSink, Heartbeat, Log, Metrics, Status, Superseded
from engine.recipes import RECIPES
from engine.spec import RunSpec

Outcome = Literal["succeeded", "cancelled"]


class LocalRecipe:
    """The run's recipe in this process."""

    def __init__(self, spec: RunSpec):
        self._recipe = RECIPES.load(spec.orchestration.mode)(spec)

    def step(self) -> list[Event]:
        return self._recipe.step()

    def evaluate(self, step: int) -> list[Event]:
        return self._recipe.evaluate(step)

    def write_checkpoint(self, run_dir: Path, step: int, metrics: dict[str, float]) -> Path:
        return Path(self._recipe.write_checkpoint(str(run_dir), step, metrics))

    def load_checkpoint(self, folder: Path) -> CheckpointInfo:
        return self._recipe.load_checkpoint(str(folder))

    def where(self) -> str | None:
        return None  # in the driver's process: nothing to say

    def close(self) -> None:
        # A recipe with helpers of its own (the async recipe's rollout workers) stops them.
        getattr(self._recipe, "close", lambda: None)()


# A split placement waits this long for nodes with room for every bundle, then fails the run.
PLACEMENT_TIMEOUT_S = 120


class RayRecipe:
    """The run's recipe in a Ray actor holding the run's CPUs and GPUs. Ray stays up after
    the run: a Celery worker drives many runs, and starting Ray costs seconds each time."""

    def __init__(self, spec: RunSpec):
        import ray

        if not ray.is_initialized():
            ray.init(
                address=os.environ.get("RAY_ADDRESS") or None,
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=False,
            )
        self._ray = ray
        recipe_class = RECIPES.load(spec.orchestration.mode)
        actor_class = ray.remote(num_cpus=spec.resources.cpus, num_gpus=spec.resources.gpus)(recipe_class)
        self.placement_group = None
        options: dict = {}
        if spec.resources.placement == "split":
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

            # Bundle 0 is the trainer's; the rollout workers it starts take bundles 1 … k
            # (engine.rollout.workers.WorkerPool), each on a node of its own.
            self.placement_group = ray.util.placement_group(spec.resources.bundles(), strategy="STRICT_SPREAD")
            ray.get(self.placement_group.ready(), timeout=PLACEMENT_TIMEOUT_S)
            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(self.placement_group, 0)
        self._actor = actor_class.options(**options).remote(spec)

    def step(self) -> list[Event]:
        return self._ray.get(self._actor.step.remote())

    def evaluate(self, step: int) -> list[Event]:
        return self._ray.get(self._actor.evaluate.remote(step))

    def write_checkpoint(self, run_dir: Path, step: int, metrics: dict[str, float]) -> Path:
        """Written by the actor, which holds the model, and published by the driver: the
        run directory must be on a filesystem both share (always so for a local Ray)."""
        return Path(self._ray.get(self._actor.write_checkpoint.remote(str(run_dir), step, metrics)))

    def load_checkpoint(self, folder: Path) -> CheckpointInfo:
        return self._ray.get(self._actor.load_checkpoint.remote(str(folder)))

    def where(self) -> str:
        """Where the trainer's actor landed: its Ray node, and the cluster's address (the
        local Ray's, or the one RAY_ADDRESS names)."""
        node_id, node_ip = self._ray.get(self._actor.__ray_call__.remote(_node_of_actor))
        cluster = self._ray.get_runtime_context().gcs_address
        return f"trainer on Ray node {node_id} ({node_ip}) of the Ray cluster at {cluster}"

    def close(self) -> None:
        self._ray.kill(self._actor)
        if self.placement_group is not None:
            self._ray.util.remove_placement_group(self.placement_group)


def _node_of_actor(_actor: object) -> tuple[str, str]:
    """Run inside an actor (`__ray_call__`): the id and address of its node."""
    import ray

    return ray.get_runtime_context().get_node_id(), ray.util.get_node_ip_address()


EXECUTORS = {"inprocess": LocalRecipe, "ray": RayRecipe}


def due_after(step: int, steps: int, every: int) -> bool:
    """Whether an evaluation or a checkpoint follows `step`: after every `every`-th step
    (never along the way when `every` is 0) and after the last one."""
    return step == steps or (every > 0 and step % every == 0)


def run(
    spec: RunSpec,
    sink: EventSink,
    should_stop: Callable[[], bool] = lambda: False,
    run_dir: Path | None = None,
    resume_from: Path | None = None,
) -> Outcome:
    """Run `spec` to its end or until `should_stop()` is true between two steps.

    Every event goes to `sink`; a Heartbeat closes each step (and the evaluation before
    the first), which is when a batching sink writes. On an exception the sink gets a
    Status('failed') naming it, and the exception propagates to the caller. See the
    module docstring for checkpoints, `run_dir` and `resume_from`. When the sink raises
    `Superseded` (another attempt owns the run now), the run stops where it is, writes
    nothing more and re-raises it.
    """
    recipe = None
    superseded = False  # the platform refused our writes: leave without another one
    sink.emit(Status(status="running"))
    try:
        own_checkpoint = latest_checkpoint(run_dir) if run_dir is not None else None
        if resume_from is not None:
            read_info(resume_from)  # refuse a bad fork source before building anything
        start = own_checkpoint or resume_from
        recipe = EXECUTORS[spec.resources.executor](spec)
        first_step, latest_val = 0, {}
        if start is not None:
            restored = recipe.load_checkpoint(Path(start))
            first_step, latest_val = restored.step, dict(restored.metrics)
            sink.emit(Log(message=f"resumed at step {first_step} from {start}: {RESTORED}"))
        if where := recipe.where():
            sink.emit(Log(message=where))
        # A fresh run and a fork measure where they start; a run resuming its own
        # checkpoint reported that evaluation before it was interrupted.
        if own_checkpoint is None:
            latest_val.update(_forward(sink, recipe.evaluate(first_step)))
        sink.emit(Heartbeat(step=first_step))
        saved_step = first_step

        def checkpoint(step: int) -> None:
            # Flush first: a driver whose attempt was superseded mostly learns it here (the
            # sink raises Superseded), before it spends the time to write. The rename into
            # place and the Checkpoint event go through the sink's publish, inside its fence
            # and together: one superseded while it wrote publishes nothing into the run
            # folder another worker owns, and a folder published is one the platform knows.
            sink.flush()
            partial = recipe.write_checkpoint(run_dir, step, latest_val)
            saved = Checkpoint(step=step, path=str(checkpoint_folder(run_dir, step)), metrics=dict(latest_val))
            try:
                sink.publish(lambda: publish_checkpoint(partial), saved)
            except BaseException:
                discard_checkpoint(partial)
                raise

        for step in range(first_step + 1, spec.training.steps + 1):
            if should_stop():
                if run_dir is not None and step - 1 > saved_step:
                    checkpoint(step - 1)
                sink.emit(Status(status="cancelled", message=f"cancelled on request before step {step}"))
                return "cancelled"
            _forward(sink, recipe.step())
            if due_after(step, spec.training.steps, spec.training.eval_every):
                latest_val.update(_forward(sink, recipe.evaluate(step)))
            if run_dir is not None and due_after(step, spec.training.steps, spec.training.checkpoint_every):
                checkpoint(step)
                saved_step = step
            sink.emit(Heartbeat(step=step))
        sink.emit(Status(status="succeeded"))
        return "succeeded"
    except Superseded:
        superseded = True
        raise
    except Exception as exc:
        sink.emit(Status(status="failed", message=describe(exc)))
        raise
    finally:
        if recipe is not None:
            recipe.close()
        if not superseded:
            sink.flush()


RESTORED = "model weights, step counter, random states, sampler, rollout strategy, collector, optimiser and difficulty store"


def describe(exc: BaseException) -> str:
    """A one-line reason: for an error raised inside a Ray actor, the original error."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        exc = cause
    return f"{type(exc).__name__}: {exc}"


def _forward(sink: EventSink, events: Iterable[Event]) -> dict[str, float]:
    """Emit events; return the held-out ('val/...') metrics among them."""
    held_out: dict[str, float] = {}
    for event in events:
        sink.emit(event)
        if isinstance(event, Metrics):
            held_out.update({name: value for name, value in event.values.items() if name.startswith("val/")})
    return held_out
