"""Rollout types: one sampled response (Rollout), the responses of one prompt drawn in one
step (Group), and what a strategy hands the recipe for one step (RolloutBatch).

Every response token keeps the behaviour log-prob the generation backend sampled it
with and the policy version that sampled it, so off-policy recipes (APRIL, AReaL) can
tell tokens of different versions apart; synchronous algorithms ignore the versions.
"""

from dataclasses import dataclass, field

import torch

from engine.events import SampleStatus
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
