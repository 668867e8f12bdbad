"""DARS's two-round collection (docs/algorithms.md §5; the schedule: engine.sampling.dars).

    round 1   the sampler's plan: rollout.n rollouts per prompt, verified
    round 2   Δn(acc) more for each prompt under 50% (curriculum.schedule), one request
              per prompt, sampled exactly like round 1
    merge     round 2's rollouts join their prompt's round-1 group (same group id), so
              the group now has N + Δn rollouts and advantages compare all of them
    filter    only groups with 0 < merged accuracy < curriculum.upper_threshold train;
              when fewer than training.mini_batches survive, filtered groups top the
              batch up untrained (zero advantage), so every mini-batch holds a group

Metrics (docs/metrics.md): dars/extra_rollouts and per first-round accuracy bucket,
dars/positive_gained (correct round-2 rollouts), dars/saved_share (all-wrong prompts a
second round made partly right), dars/filtered_share.
"""

from collections.abc import Sequence
from typing import Any

from engine.rollout.collector import Collector
from engine.rollout.strategies import MorePrompts
from engine.rollout.types import Group, RolloutBatch
from engine.sampling.base import PlanItem
from engine.sampling.dars import extra_rollouts, max_total_rollouts
from engine.telemetry import Timeline

# dars/extra_rollouts/<bucket>, by first-round accuracy (only prompts under 0.5 get extra).
BUCKETS = ("acc_0", "acc_0_25", "acc_25_50")


def bucket(acc: float) -> str:
    """acc_0: solved by none; acc_0_25: 0 < acc < 0.25; acc_25_50: 0.25 ≤ acc (< 0.5)."""
    return "acc_0" if acc == 0 else "acc_0_25" if acc < 0.25 else "acc_25_50"


class DarsCollection:
    def __init__(self, spec: Any):
        curriculum = spec.curriculum
        if curriculum.strategy != "dars":
            raise ValueError("rollout strategy dars reads the curriculum's DARS schedule: set curriculum.strategy dars")
        self.schedule = curriculum.schedule
        self.max_total = max_total_rollouts(curriculum.schedule, spec.rollout.n, curriculum.max_rollouts)
        self.with_std = curriculum.schedule_std
        self.upper = curriculum.upper_threshold
        self.mini_batches = spec.training.mini_batches

    def collect(
        self, step: int, plan: Sequence[PlanItem], more: MorePrompts, collector: Collector, timeline: Timeline
    ) -> RolloutBatch:
        groups = collector.collect(plan, first_group=0, timeline=timeline)
        first_correct = [sum(item.correct for item in group.rollouts) for group in groups]
        extra = [
            extra_rollouts(correct, len(group.rollouts), self.schedule, self.max_total, self.with_std)
            for group, correct in zip(groups, first_correct)
        ]
        second_plan = [(group, PlanItem(group.problem, dn)) for group, dn in zip(groups, extra) if dn > 0]
        second = collector.collect([item for _, item in second_plan], len(groups), timeline) if second_plan else []
        gained = 0
        for (group, _), fresh in zip(second_plan, second, strict=True):
            for item in fresh.rollouts:
                item.group = group.id
                gained += int(item.correct)
            group.rollouts.extend(fresh.rollouts)
        kept = [group for group in groups if 0 < accuracy(group) < self.upper]
        dropped = [group for group in groups if group not in kept]
        for group in dropped[: max(0, self.mini_batches - len(kept))]:
            group.trainable = False
            kept.append(group)
        return RolloutBatch(groups=kept, generated=groups, metrics=self._metrics(groups, first_correct, extra, gained))

    def _metrics(self, groups: list[Group], first_correct: list[int], extra: list[int], gained: int) -> dict[str, float]:
        first_acc = [correct / (len(group.rollouts) - dn) for group, correct, dn in zip(groups, first_correct, extra)]
        all_wrong = [i for i, correct in enumerate(first_correct) if correct == 0]
        saved = sum(1 for i in all_wrong if accuracy(groups[i]) > 0)
        metrics = {
            "dars/extra_rollouts": float(sum(extra)),
            "dars/positive_gained": float(gained),
            "dars/saved_share": saved / len(all_wrong) if all_wrong else 0.0,
            "dars/filtered_share": sum(not 0 < accuracy(g) < self.upper for g in groups) / len(groups),
        }
        metrics.update({f"dars/extra_rollouts/{name}": 0.0 for name in BUCKETS})
        for acc, dn in zip(first_acc, extra):
            if dn:
                metrics[f"dars/extra_rollouts/{bucket(acc)}"] += dn
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def accuracy(group: Group) -> float:
    return sum(item.correct for item in group.rollouts) / len(group.rollouts)
