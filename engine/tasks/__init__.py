"""Tasks (torch-free): problems with a split, a difficulty and a checker; the built-in
tasks register in BUILTIN_TASKS, and `resolve_task` also reads dataset files
(engine/tasks/file.py)."""

import functools
import os
from typing import TYPE_CHECKING, Protocol

from engine.problems import EvalSplit, Problem, Split
from engine.registry import Registry

if TYPE_CHECKING:
    from engine.spec import DatasetSpec


class Task(Protocol):
    name: str

    def problems(self, split: Split | EvalSplit, count: int, seed: int) -> list[Problem]:
        """`count` problems of a split; the same (split, count, seed) gives the same list,
        and the train and held-out splits (test, and hard where the task has one) never
        share a prompt."""

    def score(self, problem: Problem, response: str) -> float:
        """1.0 when the response's final answer is correct, else 0.0."""


BUILTIN_TASKS: Registry[Task] = Registry("built-in task")


def resolve_task(dataset: "DatasetSpec") -> Task:
    """The task a spec's dataset section names: the built-in task `name`, or, with a
    `path`, a FileTask over that file (read once per process while the file is unchanged)."""
    if dataset.path is None:
        return BUILTIN_TASKS.get(dataset.name)
    stat = os.stat(dataset.path)
    return _file_task(dataset, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _file_task(dataset: "DatasetSpec", mtime_ns: int, size: int) -> Task:
    from engine.tasks.file import FileTask

    return FileTask(dataset)


# Built-in tasks register themselves on import (kept last: they import BUILTIN_TASKS from here).
from engine.tasks import arith  # noqa: E402,F401
