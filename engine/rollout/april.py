"""APRIL: active partial rollouts (algorithms.md §3; RLsys-Foundation/APRIL, upstream slime).

    rollout: {strategy: april, over_sampling: N', stale_prefix: train | mask}

A synchronous step waits for its longest response. APRIL submits more prompt groups than
the step trains on (N' ≥ N), stops as soon as N groups are complete, aborts everything
still running and keeps it: each aborted sample's token ids, behaviour log-probs and
per-token policy versions, and the finished siblings of its group, go into a buffer
that the next step serves first (FIFO). Finished samples are never generated again;
unfinished ones resume from their tokens (the token-level form of upstream slime, not
the snapshot's re-tokenised text), so a long response is finished in pieces, across
steps and policy versions.

One step (`collect`):

    round    buffered groups first (up to N'), then the sampler's plan (all of it: the
             sampler has drawn it), then `more(...)` fresh prompts up to N' groups
    run      step the collector; each group whose n samples have all ended is verified;
             DAPO's filter (algorithm.dynamic_sampling) drops a group whose rewards are
             all equal. While the groups submitted minus those dropped are fewer than N,
             another round is submitted (at most algorithm.max_gen_rounds), as slime does
    stop     at N accepted groups: abort the rest; groups that completed in the same
             backend step beyond N go to the buffer whole (slime drops them; nothing is
             discarded here), the aborted ones after them
    return   the N groups in submission order (oldest first), numbered 0 … N − 1; a
             DAPO top-up (the rounds ran out) follows them, oldest first, as in
             dynamic sampling's fill_batch

With N' = N and no filter nothing is ever aborted and a step is exactly `plain`
(tested); under DAPO's filter with one round (max_gen_rounds 1, oversample 1) it is
exactly `dynamic_sampling` (tested). With more rounds the two differ by design: APRIL
refills N' groups as soon as one is filtered out (slime's rule), dynamic sampling
waits for its whole round and asks for ⌈missing × oversample⌉. Tokens sampled by an earlier policy (a resumed prefix, a sibling finished in
an earlier step) are trained as on-policy by default (`stale_prefix: train`, the paper:
the recipe recomputes π_old with the current weights whenever a batch holds such tokens),
left out of the loss (`mask`, upstream slime's --mask-offpolicy-in-partial-rollout), or
importance-weighted by `algorithm.policy_loss: decoupled_ppo` (AReaL's correction).
"""

from collections import deque
from collections.abc import Sequence
from dataclasses import asdict
from typing import Any

from engine.inference.interface import PartialResponse
from engine.problems import Problem
from engine.rollout.collector import Collector
from engine.rollout.strategies import MorePrompts, is_informative
from engine.rollout.types import Group, PartialGroup, Rollout, RolloutBatch
from engine.sampling.base import PlanItem
from engine.telemetry import Timeline


class ActivePartialRollouts:
    def __init__(self, spec: Any):
        self.over_sampling: int = spec.rollout.over_sampling
        self.stale_prefix: str = spec.rollout.stale_prefix
        self.filtered: bool = spec.algorithm.dynamic_sampling
        self.max_rounds: int = spec.algorithm.max_gen_rounds if self.filtered else 1
        self.buffer: deque[PartialGroup] = deque()
        self.next_key = 0  # group keys are unique in the run (they survive a resume)

    def collect(
        self, step: int, plan: Sequence[PlanItem], more: MorePrompts, collector: Collector, timeline: Timeline
    ) -> RolloutBatch:
        target = len(plan)
        accepted: list[PartialGroup] = []
        dropped: list[PartialGroup] = []
        extra: list[PartialGroup] = []
        submitted = rounds = resumed = tokens_before = 0
        fresh: list[PlanItem] = list(plan)
        while len(accepted) < target:
            if submitted - len(dropped) < target and rounds < self.max_rounds:
                round_groups = [self.buffer.popleft() for _ in range(min(self.over_sampling, len(self.buffer)))]
                resumed += len(round_groups)
                missing = self.over_sampling - len(round_groups) - len(fresh)
                fresh += more(missing) if missing > 0 else []
                round_groups += [self._new_group(item, step) for item in fresh]
                fresh = []
                tokens_before += sum(tokens_of(group) for group in round_groups)
                collector.start(round_groups)
                submitted += len(round_groups)
                rounds += 1
            elif not collector.in_flight():
                break  # the rounds ran out: DAPO's top-up below
            for group in collector.advance(timeline):
                if len(accepted) == target:
                    extra.append(group)
                elif self.filtered and not is_informative([item.reward for item in group.rollouts()]):
                    dropped.append(group)
                else:
                    accepted.append(group)
        aborted = collector.abort_all()
        self.buffer.extend(extra + aborted)
        # DAPO's top-up when the rounds ran out (as fill_batch: informative groups first,
        # then the oldest filtered-out ones, not trained).
        dropped.sort(key=lambda group: group.key)
        topped_up = dropped[: target - len(accepted)]
        chosen = sorted(accepted, key=lambda group: group.key) + topped_up
        rest = [group for group in dropped if group not in topped_up]
        numbered = [self._numbered(index, group, collector.version) for index, group in enumerate(chosen + rest)]
        groups = numbered[: len(chosen)]
        for group, source in zip(groups, chosen):
            group.trainable = source not in topped_up
        aborted_samples = sum(group.n - len(group.done) for group in aborted)
        trained = [item for group in groups for item in group.rollouts]
        metrics = {
            "april/buffer_groups": float(len(self.buffer)),
            "april/resumed_groups": float(resumed),
            "april/aborted_samples": float(aborted_samples),
            "april/submitted_groups": float(submitted),
            "april/generated_tokens": float(
                sum(tokens_of(group) for group in accepted + dropped + extra + aborted) - tokens_before
            ),
            "rollout/partial_ratio": sum(item.aborts > 0 for item in trained) / max(len(trained), 1),
            **staleness_metrics(trained, collector.version),
        }
        if self.filtered:
            metrics["dapo/keep_rate"] = len(accepted) / max(len(accepted) + len(dropped), 1)
            metrics["dapo/gen_rounds"] = float(rounds)
        return RolloutBatch(groups=groups, generated=numbered, metrics=metrics)

    def _new_group(self, item: PlanItem, step: int) -> PartialGroup:
        self.next_key += 1
        return PartialGroup(key=self.next_key - 1, problem=item.problem, n=item.n, begun=step)

    def _numbered(self, index: int, group: PartialGroup, version: int) -> Group:
        """The group as the recipe trains it: id `index`, its samples in index order, and
        under mask-stale-prefix each sample's tokens of earlier versions out of the loss."""
        numbered = group.as_group(index)
        if self.stale_prefix == "mask":
            for item in numbered.rollouts:
                item.trained_from = sum(v < version for v in item.versions)  # versions never decrease along a sample
        return numbered

    # ----------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The buffer, whole (plain values: checkpoints load with weights_only)."""
        return {"next_key": self.next_key, "buffer": [partial_group_state(group) for group in self.buffer]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.next_key = state.get("next_key", 0)
        self.buffer = deque(partial_group_from_state(item) for item in state.get("buffer", []))


def tokens_of(group: PartialGroup) -> int:
    """Response tokens a group holds: its finished samples' and its partial ones'."""
    return sum(item.length for item in group.done.values()) + sum(len(p.token_ids) for p in group.partial.values())


def staleness_metrics(rollouts: Sequence[Rollout], version: int) -> dict[str, float]:
    """Per trained token, how many policy versions behind `version` (the weights the
    trainer starts the step with) the policy that sampled it was: mean and max, the share
    of tokens from an earlier version, and the distinct versions per sample."""
    lags = [version - v for item in rollouts for v in item.versions]
    if not lags:
        return {}
    return {
        "off_policy/staleness/mean": sum(lags) / len(lags),
        "off_policy/staleness/max": float(max(lags)),
        "off_policy/token_ratio": sum(lag > 0 for lag in lags) / len(lags),
        "off_policy/versions_per_sample": sum(len(set(item.versions)) for item in rollouts) / len(rollouts),
    }


# ----------------------------------------------------------------- plain-value states
def rollout_state(item: Rollout) -> dict[str, Any]:
    return {
        "problem": asdict(item.problem),
        "prompt_ids": list(item.prompt_ids),
        "token_ids": list(item.token_ids),
        "logprobs": list(item.logprobs),
        "versions": list(item.versions),
        "status": item.status,
        "text": item.text,
        "reward": item.reward,
        "aborts": item.aborts,
    }


def partial_group_state(group: PartialGroup) -> dict[str, Any]:
    return {
        "key": group.key,
        "problem": asdict(group.problem),
        "n": group.n,
        "begun": group.begun,
        "done": {index: rollout_state(item) for index, item in group.done.items()},
        "partial": {index: asdict(item) for index, item in group.partial.items()},
        "aborts": dict(group.aborts),
    }


def partial_group_from_state(state: dict[str, Any]) -> PartialGroup:
    problem = Problem(**state["problem"])
    done = {}
    for index, item in state["done"].items():
        fields = {**item, "problem": problem}
        done[int(index)] = Rollout(group=state["key"], **fields)
    return PartialGroup(
        key=state["key"],
        problem=problem,
        n=state["n"],
        begun=state["begun"],
        done=done,
        partial={int(index): PartialResponse(**item) for index, item in state["partial"].items()},
        aborts={int(index): count for index, count in state["aborts"].items()},
    )
