"""The unit of training data (torch-free, imports nothing of the engine): a prompt with its
verifiable answer. A leaf module, so that the dataset loader (engine.data) and the tasks
(engine.tasks) both build on it without importing each other."""

from dataclasses import dataclass
from typing import Literal

Split = Literal["train", "test"]
# The held-out prompts a run evaluates on: the test split, or a built-in task's harder
# held-out split (engine.tasks.arith: `hard`, long chains only; never trained on).
EvalSplit = Literal["test", "hard"]


@dataclass(frozen=True)
class Problem:
    id: str
    prompt: str
    answer: str
    difficulty: float  # NaN when unknown (a dataset file without a difficulty column)
    solution: str  # a reference step-by-step solution ending in the answer (warm start)
    split: Split | None = None  # the split a dataset file assigns; None when it assigns none
