"""Rollout workers: generation apart from the trainer (AReaL's rollout side, algorithms.md §4).

A `RolloutWorker` owns its own copy of the policy, a generation backend and a collector,
and generates continuously in a background thread: whatever prompt groups the trainer
submits are decoded together (continuous batching), and each group whose samples have
all ended is verified and set aside until the trainer takes it.

    worker.submit(partial_groups)          start them (fresh, or resumed from tokens)
    worker.take_finished(timeout)          the complete groups since the last call
    worker.update_weights(weights, v)      interruptible generation: pause, abort what is
                                           in flight, load the weights, resume the same
                                           samples from their tokens (prompt + prefix
                                           prefilled again under the new weights); every
                                           token keeps the version that sampled it
    worker.snapshot() / restore(state)     in-flight and finished groups as plain values,
                                           for a checkpoint (in flight ones resume as partials)
    worker.abort_all()                     stop: its in-flight groups (as partials) and its
                                           finished ones not taken yet
    worker.hold(True / False)              stop decoding (the trainer evaluates) and go on
    worker.pop_spans()                     its busy/idle timeline since the last call

`WorkerPool` places k of them as the spec says: Ray actors with
`resources.rollout_cpus`/`rollout_gpus` each under `resources.executor: ray` (weights go
through Ray's object store, put once per update), threads in this process otherwise
(tests; the trainer and the workers then share the process's torch threads).

`PooledCollector` gives a pool the collector's interface, so the sync recipe's rollout
strategies (plain, dynamic sampling, APRIL, DARS) generate on k workers apart from the
trainer when the run has rollout workers: the synchronous recipe split across actors.
"""

import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from engine.events import Span, monotonic_now
from engine.models import load_policy
from engine.rollout.april import partial_group_from_state, partial_group_state
from engine.rollout.collector import build_collector
from engine.rollout.types import Group, PartialGroup
from engine.sampling.base import PlanItem
from engine.tasks import resolve_task
from engine.telemetry import Timeline
from engine.training.batching import split_evenly

# How long the trainer waits on the workers between checks for finished groups.
POLL_S = 0.05


def worker_name(index: int) -> str:
    return f"rollout-{index}"


class RolloutWorker:
    def __init__(self, spec: Any, index: int, own_process: bool = False):
        """Worker `index` samples from the stream seeded spec.seed + index (worker 0's is
        the synchronous recipe's). `own_process`: it alone uses this process's torch
        threads (a Ray actor), so it sets them to resources.rollout_cpus."""
        if own_process:
            torch.set_num_threads(spec.resources.rollout_cpus)
        self.name = worker_name(index)
        model, tokenizer = load_policy(spec.model)
        # Parameters as the trainer's (requiring grad; decoding runs under no_grad): CPU
        # kernels round the last bits differently for frozen ones, so a worker would not
        # sample what the colocated trainer's model does.
        model.eval()
        self.collector = build_collector(spec, model, tokenizer, resolve_task(spec.dataset), self.name, index)
        self._lock = threading.Condition()
        # Callers waiting for the lock: the loop steps aside for them between decode steps
        # (a lock released and taken back at once is rarely handed to a waiter).
        self._knocks: deque[int] = deque()
        self._finished: list[PartialGroup] = []
        self._timeline = Timeline(0)
        self._stopping = False
        self._paused = False
        self._thread = threading.Thread(target=self._generate, name=self.name, daemon=True)
        self._thread.start()

    # ----------------------------------------------------------------- the loop
    def _generate(self) -> None:
        with self._lock:
            while not self._stopping:
                if self._paused or not self.collector.in_flight():
                    # Nothing admitted (the trainer's staleness bound), or held during an evaluation.
                    began = monotonic_now()
                    self._lock.wait()
                    self._timeline.spans.append(
                        Span(step=0, worker=self.name, phase="wait", start=began, end=monotonic_now())
                    )
                    continue
                complete = self.collector.advance(self._timeline)
                if complete:
                    self._finished.extend(complete)
                    self._lock.notify_all()
                if self._knocks:
                    self._lock.wait(0.001)

    @contextmanager
    def _held(self) -> Iterator[None]:
        self._knocks.append(1)
        with self._lock:
            self._knocks.pop()
            yield

    # ----------------------------------------------------------------- interface
    def submit(self, groups: Sequence[PartialGroup]) -> None:
        with self._held():
            self.collector.start(groups)
            self._lock.notify_all()

    def take_finished(self, timeout: float = 0.0) -> list[PartialGroup]:
        with self._held():
            if not self._finished and timeout > 0:
                self._lock.wait(timeout)
            finished, self._finished = self._finished, []
            return finished

    def update_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> float:
        """Pause, abort in-flight samples, load, resume them: returns the seconds it took."""
        with self._held():
            began = monotonic_now()
            with self._timeline.phase(self.name, "sync", "sync"):
                interrupted = self.collector.abort_all()
                self.collector.load_weights(weights, version)
                self.collector.start(interrupted)
            self._lock.notify_all()
            return monotonic_now() - began

    def abort_all(self) -> list[PartialGroup]:
        """Stop every group: the in-flight ones (each unfinished sample's tokens kept) and
        the finished ones nobody took yet, by key."""
        with self._held():
            aborted = self.collector.abort_all()
            finished, self._finished = self._finished, []
            return sorted(finished + aborted, key=lambda group: group.key)

    def hold(self, held: bool) -> None:
        """Stop decoding after the current token (True) or go on (False); what is in
        flight stays in flight."""
        with self._held():
            self._paused = held
            self._lock.notify_all()

    def in_flight(self) -> int:
        with self._held():
            return self.collector.in_flight()

    def pop_spans(self) -> list[Span]:
        with self._held():
            spans, self._timeline.spans = self._timeline.spans, []
            return spans

    def snapshot(self) -> dict[str, Any]:
        """What a checkpoint keeps of this worker: its sampling stream, the groups in
        flight (interrupted and resumed at once, so they continue here too) and the
        finished ones not taken yet, as plain values."""
        with self._held():
            interrupted = self.collector.abort_all()
            state = {
                "generator": self.collector.generator.get_state(),
                "in_flight": [partial_group_state(group) for group in interrupted],
                "finished": [partial_group_state(group) for group in self._finished],
            }
            self.collector.start(interrupted)
            return state

    def restore(self, state: dict[str, Any]) -> None:
        """A snapshot's stream and groups: its in-flight ones resume from their tokens;
        its finished ones are taken by the next take_finished."""
        with self._held():
            self.collector.generator.set_state(state["generator"])
            self.collector.start([partial_group_from_state(item) for item in state["in_flight"]])
            self._finished.extend(partial_group_from_state(item) for item in state["finished"])
            self._lock.notify_all()

    def close(self) -> None:
        with self._held():
            self._stopping = True
            self._lock.notify_all()
        self._thread.join()


class WorkerPool:
    """k rollout workers, placed as the spec says (module docstring). Calls fan out to
    every worker at once and return one result per worker."""

    def __init__(self, spec: Any):
        resources = spec.resources
        self.names = [worker_name(index) for index in range(resources.rollout_workers)]
        self.version = 0  # of the weights the workers hold
        self.sync_seconds = 0.0  # the slowest worker's pause-load-resume at the last update
        self._ray = None
        if resources.executor == "ray":
            import ray

            self._ray = ray
            actor = ray.remote(num_cpus=resources.rollout_cpus, num_gpus=resources.rollout_gpus)(RolloutWorker)
            self._workers = [
                actor.options(**_placed(resources, index)).remote(spec, index, own_process=True)
                for index in range(len(self.names))
            ]
        else:
            self._workers = [RolloutWorker(spec, index) for index in range(len(self.names))]

    def __len__(self) -> int:
        return len(self._workers)

    def call(self, method: str, *args: Any, each: Sequence[tuple] | None = None) -> list[Any]:
        """`method(*args)` on every worker (or `method(*each[i])` on worker i), in parallel
        under Ray; the results in worker order."""
        arguments = each if each is not None else [args] * len(self._workers)
        if self._ray is None:
            return [getattr(worker, method)(*given) for worker, given in zip(self._workers, arguments, strict=True)]
        refs = [getattr(worker, method).remote(*given) for worker, given in zip(self._workers, arguments, strict=True)]
        return self._ray.get(refs)

    def submit(self, worker: int, groups: Sequence[PartialGroup]) -> None:
        if self._ray is None:
            self._workers[worker].submit(groups)
        else:
            self._ray.get(self._workers[worker].submit.remote(list(groups)))

    def submit_least_loaded(self, groups: Sequence[PartialGroup], placed: dict[int, int]) -> None:
        """Submit each group to the worker with the fewest in flight (by `placed`, key →
        worker, for every group started and not returned; updated here), the lowest index
        on a tie, in one call per worker."""
        load = [0] * len(self)
        for worker in placed.values():
            load[worker] += 1
        shares: list[list[PartialGroup]] = [[] for _ in load]
        for group in groups:
            worker = min(range(len(load)), key=lambda index: load[index])
            shares[worker].append(group)
            placed[group.key] = worker
            load[worker] += 1
        for worker, share in enumerate(shares):
            if share:
                self.submit(worker, share)

    def take_finished(self, timeout: float) -> list[PartialGroup]:
        """Every worker's complete groups, waiting up to `timeout` seconds for some."""
        if self._ray is None:
            # In process the waits add up: share the timeout out.
            per_worker = timeout / len(self._workers)
            return [group for worker in self._workers for group in worker.take_finished(per_worker)]
        return [group for groups in self.call("take_finished", timeout) for group in groups]

    def update_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> list[float]:
        """Every worker's pause-load-resume; under Ray the weights are put in the object
        store once and every worker reads that one copy."""
        if self._ray is None:
            seconds = self.call("update_weights", weights, version)
        else:
            ref = self._ray.put({name: tensor.detach().cpu() for name, tensor in weights.items()})
            seconds = self.call("update_weights", ref, version)
        self.version, self.sync_seconds = version, max(seconds)
        return seconds

    def spans_into(self, timeline: Timeline) -> None:
        """Every worker's spans since the last call, as spans of `timeline`'s step (cut at
        its start: what a worker did before it belongs to the step before)."""
        for span in [span for spans in self.call("pop_spans") for span in spans]:
            if span.end > timeline.start:
                timeline.spans.append(span.model_copy(update={"step": timeline.step, "start": max(span.start, timeline.start)}))

    def close(self) -> None:
        if self._ray is None:
            self.call("close")
        else:
            for worker in self._workers:
                self._ray.kill(worker)


class PooledCollector:
    """The collector's interface (engine.rollout.collector.Collector) over a WorkerPool,
    for the sync recipe split across actors. `collect` cuts the plan into k consecutive
    shares, one submission per worker, and waits (the `waiter`'s `wait` spans, timed as
    `gen`) until every group is back, in plan order; worker 0 alone is the colocated
    collector's stream on the same weights, so one worker collects what colocation would.
    `start` gives each group to the least loaded worker, `advance` waits a moment and
    returns the groups finished since (the workers never wait for it), `abort_all` stops
    every worker. The weights reach the workers through the pool (WorkerPool.update_weights)."""

    def __init__(self, pool: WorkerPool, waiter: str):
        self.pool = pool
        self.worker = waiter
        self._placed: dict[int, int] = {}  # key → worker, for every group started and not returned

    @property
    def version(self) -> int:
        return self.pool.version

    def load_weights(self, weights: Mapping[str, torch.Tensor], version: int) -> None:
        self.pool.update_weights(weights, version)

    def collect(self, plan: Sequence[PlanItem], first_group: int, timeline: Timeline) -> list[Group]:
        if not plan:
            return []
        shares = split_evenly(range(len(plan)), len(self.pool))
        for worker, indexes in enumerate(shares):
            groups = [
                PartialGroup(key=index, problem=plan[index].problem, n=plan[index].n, begun=self.version)
                for index in indexes
            ]
            if groups:
                self.pool.submit(worker, groups)
        returned: dict[int, PartialGroup] = {}
        while len(returned) < len(plan):
            with timeline.phase(self.worker, "wait", "gen"):
                returned.update((group.key, group) for group in self.pool.take_finished(POLL_S))
        return [returned[index].as_group(first_group + index) for index in range(len(plan))]

    def start(self, groups: Sequence[PartialGroup]) -> None:
        self.pool.submit_least_loaded(groups, self._placed)

    def advance(self, timeline: Timeline) -> list[PartialGroup]:
        with timeline.phase(self.worker, "wait", "gen"):
            finished = self.pool.take_finished(POLL_S)
        for group in finished:
            del self._placed[group.key]
        return sorted(finished, key=lambda group: group.key)

    def abort_all(self) -> list[PartialGroup]:
        self._placed = {}
        return sorted((group for groups in self.pool.call("abort_all") for group in groups), key=lambda group: group.key)

    def in_flight(self) -> int:
        return len(self._placed)

    def state_dict(self) -> dict[str, Any]:
        """The workers' sampling streams (nothing is in flight between two sync steps)."""
        return {"generators": [worker["generator"] for worker in self.pool.call("snapshot")]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        generators = state["generators"]
        empty: dict[str, list] = {"in_flight": [], "finished": []}
        self.pool.call(
            "restore", each=[({"generator": generators[index % len(generators)], **empty},) for index in range(len(self.pool))]
        )


def _placed(resources: Any, index: int) -> dict[str, Any]:
    """Ray options of rollout worker `index`: under a split placement, bundle index + 1 of
    the placement group the trainer's actor runs in (engine.orchestration.RayRecipe)."""
    if resources.placement != "split":
        return {}
    from ray.util import get_current_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(get_current_placement_group(), index + 1)}
