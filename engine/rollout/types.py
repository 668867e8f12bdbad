"""Rollout types: one sampled response (Rollout), the responses of one prompt drawn in one
step (Group), and what a strategy hands the recipe for one step (RolloutBatch).

Every response token keeps the behaviour log-prob the generation backend sampled it
with and the policy version that sampled it, so off-policy recipes (APRIL, AReaL) can
tell tokens of different versions apart; synchronous algorithms ignore the versions.
"""

from dataclasses import dataclass, field

import torch

from engine.events import SampleStatus
from engine.inference.interface import PartialResponse
from engine.problems import Problem


@dataclass(eq=False)  # a rollout is itself, not its values: compared by identity
class Rollout:
    group: int  # its Group's id: the samples of one prompt drawn in one step share it
    problem: Problem
    prompt_ids: list[int]  # the prompt's tokens, formatted as the model reads them
    token_ids: list[int]  # response tokens; ends with a stop token when completed
    logprobs: list[float]  # behaviour policy's log_softmax(logits / T) per response token
    versions: list[int]  # policy version that sampled each response token
    status: SampleStatus
    text: str = ""  # the decoded response
    reward: float = 0.0  # the verifier's verdict (1.0 = correct)
    shaping: float = 0.0  # added to the reward for advantages: overlong penalty, KL in the reward
    advantage: float = 0.0
    old_logprobs: torch.Tensor | None = None  # π_old per response token, when the trainer recomputed it
    ref_logprobs: torch.Tensor | None = None  # π_ref per response token, when a KL term is on
    aborts: int = 0  # times it was aborted and resumed (APRIL's step end, AReaL's weight updates)
    trained_from: int = 0  # response tokens before this index stay out of the loss (APRIL's mask-stale-prefix)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def correct(self) -> bool:
        return self.reward >= 1.0

    @property
    def response_positions(self) -> slice:
        """Where the response's log-probs sit in a row of shifted logits (position t
        predicts token t + 1, so the first response token is predicted at the prompt's
        last position)."""
        start = len(self.prompt_ids) - 1
        return slice(start, start + len(self.token_ids))

    def policy_logprobs(self) -> torch.Tensor:
        """π_old's log-prob of each response token: the trainer's recomputation when it
        made one, else the behaviour policy's (the same weights, the same convention)."""
        if self.old_logprobs is not None:
            return self.old_logprobs
        return torch.tensor(self.logprobs)


@dataclass(eq=False)
class Group:
    """The rollouts of one prompt drawn in one step. A group that is not `trainable`
    (dynamic sampling topped the batch up with it) gets zero advantage."""

    id: int
    problem: Problem
    rollouts: list[Rollout]
    trainable: bool = True

    @property
    def rewards(self) -> list[float]:
        return [item.reward for item in self.rollouts]


@dataclass(eq=False)
class PartialGroup:
    """A prompt group in flight, or set aside with samples unfinished (APRIL's buffer, a
    rollout worker interrupted by a weight update): its verified samples and the tokens,
    log-probs and versions each unfinished one had when it was aborted. Finished samples
    are never generated again; unfinished ones resume from their tokens.

    `key` names the group for the whole run (across requests, steps, workers and a
    resume); `begun` is the step it was first submitted in."""

    key: int
    problem: Problem
    n: int
    begun: int
    done: dict[int, Rollout] = field(default_factory=dict)  # sample index → verified rollout
    partial: dict[int, PartialResponse] = field(default_factory=dict)  # sample index → tokens before its abort
    aborts: dict[int, int] = field(default_factory=dict)  # sample index → times aborted with tokens

    @property
    def complete(self) -> bool:
        return len(self.done) == self.n

    @property
    def untouched(self) -> bool:
        """Nothing generated yet: its samples can share one prefill again."""
        return not self.done and not any(item.token_ids for item in self.partial.values())

    def rollouts(self) -> list[Rollout]:
        return [self.done[index] for index in sorted(self.done)]

    def as_group(self, group_id: int) -> Group:
        """The complete group as a recipe trains it: id `group_id` (a batch numbers its
        groups 0 … N − 1 for the advantages), its samples in index order."""
        rollouts = self.rollouts()
        for item in rollouts:
            item.group = group_id
        return Group(id=group_id, problem=self.problem, rollouts=rollouts)


@dataclass
class RolloutBatch:
    groups: list[Group]  # what the step trains on
    generated: list[Group]  # every group generated this step, trained on or not
    metrics: dict[str, float] = field(default_factory=dict)  # the strategy's own (dapo/keep_rate, …)

    @property
    def rollouts(self) -> list[Rollout]:
        return [item for group in self.groups for item in group.rollouts]

    @property
    def generated_rollouts(self) -> list[Rollout]:
        return [item for group in self.generated for item in group.rollouts]
