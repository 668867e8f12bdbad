"""Rollout strategies: how a step's plan becomes the groups it trains on.

    batch = strategy.collect(step, plan, more, collector, timeline)

`plan` is the sampler's plan for the step; `more(count)` asks the sampler for `count`
further prompts of the same step (a strategy that needs more groups than planned calls
it); the collector rolls out and verifies. A strategy that carries state between steps
(APRIL's buffer of partial rollouts) returns it from `state_dict`.
"""

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

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


G = TypeVar("G")


@dataclass
class FilledBatch(Generic[G]):
    groups: list[G]  # exactly `batch_groups` groups: informative ones first
    generated: int  # groups generated over all rounds
    kept: int  # informative groups among them
    rounds: int  # generation rounds used

    @property
    def keep_rate(self) -> float:
        return self.kept / max(self.generated, 1)


def fill_batch(
    generate: Callable[[int], list[G]],
    scores_of: Callable[[G], Sequence[float]],
    batch_groups: int,
    oversample: float,
    max_rounds: int,
) -> FilledBatch[G]:
    """Dynamic sampling: generate rounds of groups, keep the informative ones, stop once
    `batch_groups` are kept or after `max_rounds`, and truncate to exactly the batch.

    Each round asks `generate(count)` for ceil(missing × oversample) new groups, where
    `missing` is how many informative groups the batch still lacks. When the rounds run
    out first, the batch is topped up with filtered-out groups so that every step trains
    on the same number of groups; `keep_rate` reports how often that bites.
    """
    kept: list[G] = []
    dropped: list[G] = []
    generated = rounds = 0
    while len(kept) < batch_groups and rounds < max_rounds:
        fresh = generate(math.ceil((batch_groups - len(kept)) * oversample))
        rounds += 1
        generated += len(fresh)
        for group in fresh:
            (kept if is_informative(scores_of(group)) else dropped).append(group)
    batch = (kept + dropped)[:batch_groups]
    return FilledBatch(groups=batch, generated=generated, kept=len(kept), rounds=rounds)


class DynamicSampling(PlainCollection):
    """DAPO's dynamic sampling (`fill_batch`) over the plan: the first round collects the
    plan grown by the sampler to its oversampled size, each later round asks the sampler
    for fresh prompts. Groups that only top the batch up (the rounds ran out) are marked
    not trainable: zero advantage, whatever shaping adds to their rewards."""

    def __init__(self, spec: Any):
        self.oversample = spec.algorithm.oversample
        self.max_rounds = spec.algorithm.max_gen_rounds

    def collect(
        self, step: int, plan: Sequence[PlanItem], more: MorePrompts, collector: Collector, timeline: Timeline
    ) -> RolloutBatch:
        generated: list[Group] = []

        def generate(count: int) -> list[Group]:
            round_plan = list(plan) + more(count - len(plan)) if not generated else more(count)
            fresh = collector.collect(round_plan, first_group=len(generated), timeline=timeline)
            generated.extend(fresh)
            return fresh

        filled = fill_batch(generate, lambda group: group.rewards, len(plan), self.oversample, self.max_rounds)
        for group in filled.groups:
            group.trainable = is_informative(group.rewards)
        metrics = {"dapo/keep_rate": filled.keep_rate, "dapo/gen_rounds": float(filled.rounds)}
        return RolloutBatch(groups=filled.groups, generated=generated, metrics=metrics)
