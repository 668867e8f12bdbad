"""AReaL's asynchronous recipe (algorithms.md §4): rollout workers generate continuously,
the trainer takes a batch whenever one is ready.

    orchestration: {mode: async, max_staleness: η, max_concurrent_groups: ...}
    resources:     {rollout_workers: k, rollout_cpus: ..., cpus: <the trainer's>}

One `step()`:

    0 probe      the sampler's probe (CurES's pre-rollouts of a new chunk; most samplers
                 ask for none), before it plans the step's first admission: the probe
                 groups go to the least loaded rollout workers, sampled by the weights
                 they hold (the trainer's current version), and the trainer waits until
                 every one is back and hands them to the sampler. They are observed with
                 the step's batch (difficulty store, per-prompt difficulty events,
                 cures/pre_rollout_tokens), never trained, and outside the staleness
                 counters: they are the sampler's, as the sync recipe's probe is.
                 Training groups in flight meanwhile keep decoding beside them (each
                 worker's continuous batch holds both) and are received as they finish:
                 holding them would leave the workers' free slots idle for the whole probe,
                 and they were admitted under the bound already, so running on changes
                 no one's staleness
    1 admit      while the staleness bound leaves capacity (engine.rollout.staleness:
                 (η + v + 1)·B − (accepted + running), v = steps trained so far), the
                 sampler's next prompts go to the least loaded rollout worker; the bound
                 counts admission slots, one per prompt asked for, so a plan that prunes
                 some (CurES: zero spread) spends their slots on the plan's last group,
                 which carries the pruned prompts' rollout budget
    2 wait       for finished groups (a `wait` span of the trainer); DAPO's filter
                 rejects a group whose rewards are all equal; admission runs again as
                 groups finish (max_concurrent_groups frees up)
    3 take       the oldest accepted groups (by submission) until they fill B slots,
                 each trained once; a group more than η versions older than the weights
                 it would be trained against is dropped instead (AReaL's is_staled check,
                 behind admission: a fork under a smaller η finds such groups pending),
                 its samples reported as off_policy/dropped
    4-9          as the sync recipe (engine.recipes.sync.SyncRecipe.learn): π_prox is
                 recomputed whenever a token was sampled by older weights, shaping,
                 advantages, updates with the algorithm's policy loss (decoupled_ppo
                 keeps behaviour and proximal policies apart), then the weight push:
                 every worker pauses, aborts its in-flight samples, loads the new
                 weights and resumes the same samples from their tokens; each token
                 keeps the version that sampled it

The new version's capacity is admitted by the next step's 0-1, after this step's observe
and telemetry (and any evaluation and checkpoint between the two): the sampler plans
step s + 1 from everything step s taught it and reports step s's plan at step s, as in
the sync recipe, and a checkpoint never holds a probe or plan half done, so a resume
probes and plans what the straight run does. The workers meanwhile go on with the groups
already in flight; only the newly opened slots wait (milliseconds of telemetry, longer
when an evaluation or a checkpoint falls between the steps).

The workers never wait for the trainer except when the bound leaves no capacity. With
η = 0 every step admits exactly B slots
after the previous update and waits for all of them: the synchronous algorithm, split
across actors, which reports the same metrics as the sync recipe on the same seed (one
worker, in process: exactly, CurES's probe included; tested). Held-out evaluation runs on
the trainer's own model (its colocated collector), with the workers held meanwhile.
"""

from collections.abc import Sequence
from typing import Any

from engine.events import Event
from engine.recipes.sync import TRAINER, SyncRecipe
from engine.rollout.april import partial_group_from_state, partial_group_state, staleness_metrics
from engine.rollout.staleness import StalenessManager
from engine.rollout.strategies import is_informative
from engine.rollout.types import Group, PartialGroup, RolloutBatch
from engine.rollout.workers import POLL_S
from engine.sampling.base import PlanItem
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
        # key → the slots of the prompts its plan pruned, for the groups that carry some
        # (a group not here holds one slot: its own)
        self.pruned_slots: dict[int, int] = {}
        self.probing: dict[int, PartialGroup | None] = {}  # key → the probe group once back (None: in flight)
        self.next_key = 0

    # ----------------------------------------------------------------- 0-3
    def collect(self, step: int, timeline: Timeline) -> RolloutBatch:
        version = step - 1
        self._drop_stale(version)
        self.sampler.probe(step, lambda plan: self._probe(plan, version, timeline), self.training.embedding_grad_norms)
        self._admit(step, version)
        while self._slots(self.buffer) < self.batch_groups:
            with timeline.phase(TRAINER, "wait", "wait"):
                finished = self.workers.take_finished(POLL_S)
            self._receive(finished)
            self._drop_stale(version)
            self._admit(step, version)
        taken = self._take()
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
            **staleness_metrics(trained, self.training.version),
        }
        if self.filtered:
            metrics["dapo/keep_rate"] = len(groups) / max(len(groups) + filtered_out, 1)
        return RolloutBatch(groups=groups, generated=groups + untrained, metrics=metrics)

    def _probe(self, plan: list[PlanItem], version: int, timeline: Timeline) -> list[Group]:
        """0. The sampler's probe plan on the rollout workers, waited for (module
        docstring): its groups in plan order, kept in `probed` for the step's observe."""
        groups = self._new_groups(plan, version)
        self.probing = {group.key: None for group in groups}
        self.workers.submit_least_loaded(groups, self.placed)
        while None in self.probing.values():
            with timeline.phase(TRAINER, "wait", "wait"):
                finished = self.workers.take_finished(POLL_S)
            self._receive(finished)
        probed = [self.probing[group.key].as_group(index) for index, group in enumerate(groups)]
        self.probing = {}
        self.probed.extend(probed)
        return probed

    def _admit(self, step: int, version: int) -> None:
        """Submit as many fresh groups as the staleness bound allows, least loaded worker first."""
        capacity = self.staleness.capacity(version)
        if not capacity:
            return
        plan = self.sampler.next(step, capacity)
        if not 0 < len(plan) <= capacity:
            raise RuntimeError(f"the sampler planned {len(plan)} prompts when asked for {capacity}")
        groups = self._new_groups(plan, version)
        if len(plan) < capacity:
            self.pruned_slots[groups[-1].key] = capacity - len(plan)
        self.workers.submit_least_loaded(groups, self.placed)
        self.staleness.submitted(capacity)

    def _new_groups(self, plan: list[PlanItem], version: int) -> list[PartialGroup]:
        """The plan's groups under fresh keys; `begun` is the policy version they start under."""
        groups = [
            PartialGroup(key=self.next_key + index, problem=item.problem, n=item.n, begun=version)
            for index, item in enumerate(plan)
        ]
        self.next_key += len(groups)
        return groups

    def _slots(self, groups: Sequence[PartialGroup]) -> int:
        """The admission slots `groups` hold: one each, and those of the prompts their plans pruned."""
        return sum(self._slots_of(group.key) for group in groups)

    def _slots_of(self, key: int) -> int:
        return 1 + self.pruned_slots.get(key, 0)

    def _take(self) -> list[PartialGroup]:
        """3. The oldest accepted groups until they fill B slots (a group carrying pruned
        slots is taken whole, so a step may fill a few more)."""
        count, slots = 0, 0
        while slots < self.batch_groups:
            slots += self._slots_of(self.buffer[count].key)
            count += 1
        taken, self.buffer = self.buffer[:count], self.buffer[count:]
        for group in taken:
            self.pruned_slots.pop(group.key, None)
        self.staleness.trained(slots)
        return taken

    def _drop_stale(self, version: int) -> None:
        """Drop the accepted groups begun more than η versions before `version`."""
        stale = [group for group in self.buffer if version - group.begun > self.staleness.max_staleness]
        if stale:
            self.staleness.drop(self._slots(stale))
            self.dropped += stale
            self.buffer = [group for group in self.buffer if group not in stale]
            for group in stale:
                self.pruned_slots.pop(group.key, None)

    def _receive(self, finished: list[PartialGroup]) -> None:
        for group in finished:
            del self.placed[group.key]
            if group.key in self.probing:
                self.probing[group.key] = group  # the sampler's: never buffered or counted
            elif self.filtered and not is_informative([item.reward for item in group.rollouts()]):
                self.staleness.reject(self._slots_of(group.key))
                self.pruned_slots.pop(group.key, None)
                self.rejected.append(group)
            else:
                self.staleness.accept(self._slots_of(group.key))
                self.buffer.append(group)
        self.buffer.sort(key=lambda group: group.key)

    # ----------------------------------------------------------------- evaluation
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
        pruned slots they carry, the key counter and the staleness counters (a resume
        recomputes them from the step, the restored groups and the surplus,
        engine.rollout.staleness). No probe is ever
        in flight between two steps (module docstring)."""
        return {
            **super().state_dict(),
            "async": {
                "next_key": self.next_key,
                "buffer": [partial_group_state(group) for group in self.buffer],
                "workers": self.workers.call("snapshot"),
                "pruned_slots": dict(self.pruned_slots),
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
        # (Checkpoints written before a sampler could prune under async carry none.)
        self.pruned_slots = {int(key): slots for key, slots in saved.get("pruned_slots", {}).items()}
        pending = sum(self._slots_of(item["key"]) for item in in_flight + finished)
        # (Checkpoints written before a step could take more than B slots have no surplus.)
        surplus = saved["staleness"].get("surplus", 0)
        self.staleness.restore(self.step_count, buffered=self._slots(self.buffer), in_flight=pending, surplus=surplus)
