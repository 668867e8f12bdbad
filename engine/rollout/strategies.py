"""Rollout strategies: how a step's plan becomes the groups it trains on.

    batch = strategy.collect(step, plan, more, collector, timeline)

`plan` is the sampler's plan for the step; `more(count)` asks the sampler for `count`
further prompts of the same step (a strategy that needs more groups than planned calls
it); the collector rolls out and verifies. A strategy that carries state between steps
(APRIL's buffer of partial rollouts) returns it from `state_dict`.
"""

import math
from collections.abc import Callable, Sequence
from typing import Any

from engine.rollout.collector import Collector
from engine.rollout.types import Group, RolloutBatch
from engine.sampling.base import PlanItem
from engine.telemetry import Timeline

MorePrompts = Callable[[int], list[PlanItem]]


class PlainCollection:
    """The plan, collected once, all of it trained on."""

    def __init__(self, spec: Any):
        pass

    def collect(
        self, step: int, plan: Sequence[PlanItem], more: MorePrompts, collector: Collector, timeline: Timeline
    ) -> RolloutBatch:
        groups = collector.collect(plan, first_group=0, timeline=timeline)
        return RolloutBatch(groups=groups, generated=groups)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def is_informative(scores: Sequence[float]) -> bool:
    """DAPO's filter: a group teaches something only when its samples disagree
    (0 < #correct < G); a zero-std group's advantages are all zero."""
    return max(scores) != min(scores)


class DynamicSampling(PlainCollection):
    """DAPO's dynamic sampling: generate rounds of groups, keep the informative ones, stop
    once the batch (the plan's size) holds that many or after `max_gen_rounds`, and
    truncate to exactly the batch.

    The first round collects the plan grown to ceil(size × oversample) prompts; each
    later round asks for ceil(missing × oversample) more, where `missing` is how many
    informative groups the batch still lacks. When the rounds run out first, the batch is
    topped up with filtered-out groups, marked not trainable (zero advantage, whatever
    shaping adds to their rewards) so that every step trains on the same number of
    groups; `dapo/keep_rate` reports how often that bites.
    """

    def __init__(self, spec: Any):
        self.oversample = spec.algorithm.oversample
        self.max_rounds = spec.algorithm.max_gen_rounds

    def collect(
        self, step: int, plan: Sequence[PlanItem], more: MorePrompts, collector: Collector, timeline: Timeline
    ) -> RolloutBatch:
        size = len(plan)
        kept: list[Group] = []
        dropped: list[Group] = []
        generated: list[Group] = []
        rounds = 0
        while len(kept) < size and rounds < self.max_rounds:
            wanted = math.ceil((size - len(kept)) * self.oversample)
            round_plan = list(plan) + more(wanted - size) if rounds == 0 else more(wanted)
            fresh = collector.collect(round_plan, first_group=len(generated), timeline=timeline)
            rounds += 1
            generated += fresh
            for group in fresh:
                (kept if is_informative(group.rewards) else dropped).append(group)
        for group in dropped:
            group.trainable = False
        batch = (kept + dropped)[:size]
        metrics = {"dapo/keep_rate": len(kept) / max(len(generated), 1), "dapo/gen_rounds": float(rounds)}
        return RolloutBatch(groups=batch, generated=generated, metrics=metrics)
