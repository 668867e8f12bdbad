"""AReaL's asynchronous recipe (algorithms.md §4): rollout workers generate continuously,
the trainer takes a batch whenever one is ready.

    orchestration: {mode: async, max_staleness: η, max_concurrent_groups: ...}
    resources:     {rollout_workers: k, rollout_cpus: ..., cpus: <the trainer's>}

One `step()`:

    1 admit      while the staleness bound leaves capacity (engine.rollout.staleness:
                 (η + v + 1)·B − (accepted + running), v = steps trained so far), the
                 sampler's next prompts go to the least loaded rollout worker
    2 wait       for finished groups (a `wait` span of the trainer); DAPO's filter
                 rejects a group whose rewards are all equal; admission runs again as
                 groups finish (max_concurrent_groups frees up)
    3 take       the B oldest accepted groups (by submission), each trained once; a
                 group more than η versions older than the weights it would be trained
                 against is dropped instead (AReaL's is_staled check, behind admission:
                 a fork under a smaller η finds such groups pending), its samples
                 reported as off_policy/dropped
    4-9          as the sync recipe (engine.recipes.sync.SyncRecipe.learn): π_prox is
                 recomputed whenever a token was sampled by older weights, shaping,
                 advantages, updates with the algorithm's policy loss (decoupled_ppo
                 keeps behaviour and proximal policies apart), then the weight push:
                 every worker pauses, aborts its in-flight samples, loads the new
                 weights and resumes the same samples from their tokens; each token
                 keeps the version that sampled it
    10 admit     the new version opens capacity: the next groups start while the trainer
                 writes its telemetry

Meanwhile the workers never wait for the trainer except when the bound leaves no
capacity. With η = 0 every step admits exactly B groups after the previous update and
waits for all of them: the synchronous algorithm, split across actors, which reports
the same metrics as the sync recipe on the same seed (one worker, in process: exactly;
tested). Held-out evaluation runs on the trainer's own model (its colocated collector),
with the workers held meanwhile.
"""

from typing import Any

from engine.events import Event
from engine.recipes.sync import TRAINER, SyncRecipe
from engine.rollout.april import partial_group_from_state, partial_group_state, staleness_metrics
from engine.rollout.staleness import StalenessManager
from engine.rollout.strategies import is_informative
from engine.rollout.types import PartialGroup, RolloutBatch
from engine.rollout.workers import POLL_S
from engine.spec import RunSpec
from engine.telemetry import Timeline


class AsyncRecipe(SyncRecipe):
    def __init__(self, spec: RunSpec):
        super().__init__(spec)
        orchestration = spec.orchestration
        self.batch_groups = spec.rollout.prompts_per_step
        self.filtered = spec.algorithm.dynamic_sampling
        self.staleness = StalenessManager(
            self.batch_groups, orchestration.max_staleness, orchestration.max_concurrent_groups
        )
        self.placed: dict[int, int] = {}  # key → worker, for every group submitted and not received
        self.buffer: list[PartialGroup] = []  # accepted, not trained yet, oldest first
        self.rejected: list[PartialGroup] = []  # filtered out since the last step (observed, not trained)
        self.dropped: list[PartialGroup] = []  # too stale since the last step (observed, not trained)
        self.next_key = 0

    # ----------------------------------------------------------------- 1-3
    def collect(self, step: int, timeline: Timeline) -> RolloutBatch:
        version = step - 1
        self._drop_stale(version)
        while len(self.buffer) < self.batch_groups:
            self._admit(step, version)
            with timeline.phase(TRAINER, "wait", "wait"):
                finished = self.workers.take_finished(POLL_S)
            self._receive(finished)
            self._drop_stale(version)
        taken, self.buffer = self.buffer[: self.batch_groups], self.buffer[self.batch_groups :]
        groups = [group.as_group(index) for index, group in enumerate(taken)]
        untrained = [group.as_group(len(groups) + index) for index, group in enumerate(self.rejected + self.dropped)]
        filtered_out, dropped_samples = len(self.rejected), sum(group.n for group in self.dropped)
        self.rejected, self.dropped = [], []
        trained = [item for group in groups for item in group.rollouts]
        metrics = {
            "buffer/size": float(len(self.buffer)),
            "async/accepted": float(self.staleness.accepted),
            "async/running": float(self.staleness.running),
            "async/rejected": float(self.staleness.rejected),
            "off_policy/dropped": float(dropped_samples),
            "async/capacity": float(self.staleness.capacity(version)),
            "rollout/partial_ratio": sum(item.aborts > 0 for item in trained) / max(len(trained), 1),
            "off_policy/group_lag/max": float(max(version - group.begun + 1 for group in taken)),
            "timing_s/worker_sync": self.workers.sync_seconds,
            **staleness_metrics(trained, self.training.version),
        }
        if self.filtered:
            metrics["dapo/keep_rate"] = len(groups) / max(len(groups) + filtered_out, 1)
        return RolloutBatch(groups=groups, generated=groups + untrained, metrics=metrics)

    def _admit(self, step: int, version: int) -> None:
        """Submit as many fresh groups as the staleness bound allows, least loaded worker first."""
        capacity = self.staleness.capacity(version)
        if not capacity:
            return
        plan = self.sampler.next(step, capacity)
        # `begun` is the policy version the group was admitted under.
        groups = [
            PartialGroup(key=self.next_key + index, problem=item.problem, n=item.n, begun=version)
            for index, item in enumerate(plan)
        ]
        self.next_key += len(groups)
        self.workers.submit_least_loaded(groups, self.placed)
        self.staleness.submitted(len(plan))

    def _drop_stale(self, version: int) -> None:
        """Drop the accepted groups begun more than η versions before `version`."""
        stale = [group for group in self.buffer if version - group.begun > self.staleness.max_staleness]
        if stale:
            self.staleness.drop(len(stale))
            self.dropped += stale
            self.buffer = [group for group in self.buffer if group not in stale]

    def _receive(self, finished: list[PartialGroup]) -> None:
        for group in finished:
            del self.placed[group.key]
            if self.filtered and not is_informative([item.reward for item in group.rollouts()]):
                self.staleness.reject()
                self.rejected.append(group)
            else:
                self.staleness.accept()
                self.buffer.append(group)
        self.buffer.sort(key=lambda group: group.key)

    # ----------------------------------------------------------------- 7, 10
    def push_weights(self, timeline: Timeline) -> None:
        """The sync recipe's push (every worker pauses, loads, resumes), then admission
        under the new version."""
        super().push_weights(timeline)
        self._admit(self.step_count + 1, self.step_count)

    def evaluate(self, step: int) -> list[Event]:
        """On the trainer's model, with the workers held: evaluation is on nobody's
        clock, so its seconds are never free generation for the next step (which would
        flatter the asynchronous speed-up in any comparison by step time)."""
        self.workers.call("hold", True)
        try:
            return super().evaluate(step)
        finally:
            self.workers.call("hold", False)

    # ----------------------------------------------------------------- checkpoints
    def parts(self) -> dict[str, Any]:
        """The sync recipe's parts but its workers' streams: the "async" state holds those."""
        return {name: part for name, part in super().parts().items() if name != "rollout"}

    def state_dict(self) -> dict[str, Any]:
        """The sync recipe's state and the asynchronous one: the accepted groups not yet
        trained, every worker's in-flight groups (as partials) and finished ones, the
        key counter and the staleness counters (for the record: a resume recomputes
        them, engine.rollout.staleness)."""
        return {
            **super().state_dict(),
            "async": {
                "next_key": self.next_key,
                "buffer": [partial_group_state(group) for group in self.buffer],
                "workers": self.workers.call("snapshot"),
                "staleness": self.staleness.state_dict(),
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        saved = state["async"]
        self.next_key = saved["next_key"]
        # The saved workers' groups go round the workers now running (k may differ).
        in_flight = [item for worker in saved["workers"] for item in worker["in_flight"]]
        finished = [item for worker in saved["workers"] for item in worker["finished"]]
        each = [([], []) for _ in range(len(self.workers))]
        for index, item in enumerate(in_flight + finished):
            each[index % len(each)][0 if index < len(in_flight) else 1].append(item)
        generators = [worker["generator"] for worker in saved["workers"]]
        self.workers.call(
            "restore",
            each=[
                ({"generator": generators[index % len(generators)], "in_flight": mine, "finished": done},)
                for index, (mine, done) in enumerate(each)
            ],
        )
        self.buffer = [partial_group_from_state(item) for item in saved["buffer"]]
        self.placed = {item["key"]: index for index, (mine, done) in enumerate(each) for item in mine + done}
        self.staleness.restore(self.step_count, buffered=len(self.buffer), in_flight=len(in_flight) + len(finished))
