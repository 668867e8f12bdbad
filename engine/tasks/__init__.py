"""Built-in verifiable tasks (torch-free): problems with graded difficulty and a checker."""

from dataclasses import dataclass
from typing import Literal, Protocol

from engine.registry import Registry

Split = Literal["train", "test"]


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str
    difficulty: float
    solution: str  # a reference step-by-step solution ending in the answer (warm start)


class Task(Protocol):
    name: str

    def problems(self, split: Split, count: int, seed: int) -> list[Problem]:
        """`count` problems of a split; the same (split, count, seed) gives the same list,
        and the train and test splits never share a prompt."""

    def score(self, problem: Problem, response: str) -> float:
        """1.0 when the response's final answer is correct, else 0.0."""


TASKS: Registry[Task] = Registry("dataset")

# Built-in tasks register themselves on import (kept last: they import TASKS from here).
from engine.tasks import arith  # noqa: E402,F401
