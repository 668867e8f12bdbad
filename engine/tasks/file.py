"""A task read from a dataset file: the `dataset` section of a spec with a `path`.

Rows come through engine.data.load_dataset_rows; rows it rejects are left out (the
platform decides at upload whether a file with bad rows is acceptable) and counted in
`skipped_rows`. The template, when given, wraps every prompt.

Splits are fixed by the file, never by seed or count:
- with a split column (or a saved DatasetDict's split names), as the file says; both
  splits must hold a row;
- otherwise the `eval_size` rows whose hashed ids rank lowest are held out for test,
  but never more than a fifth of the rows (at least one), so a small file still trains
  on most of itself.

`problems(split, count, seed)` is the split in a seeded order, cut to `count`: the same
arguments give the same list, a larger count extends a smaller one, and a split
smaller than `count` is returned whole (the trainer cycles through its train pool, so
it needs every train row once, not repeats).
"""

import hashlib
import random
from dataclasses import replace
from typing import TYPE_CHECKING

from engine.data import ColumnMapping, DatasetError, apply_template, load_dataset_rows
from engine.problems import Problem, Split
from engine.verifiers import DEFAULT_FILE_VERIFIER, VERIFIERS

if TYPE_CHECKING:
    from engine.spec import DatasetSpec

HELD_OUT_SHARE = 5  # at most 1/5 of the rows are held out when the file has no split column


def _rank(problem: Problem) -> int:
    return int.from_bytes(hashlib.sha256(f"split:{problem.id}".encode()).digest()[:8], "big")


def split_problems(problems: list[Problem], eval_size: int) -> dict[Split, list[Problem]]:
    """The file's train and test problems in file order, each marked with its split."""
    if problems[0].split is not None:  # every row has one: the loader rejects rows without
        by_split: dict[Split, list[Problem]] = {"train": [], "test": []}
        for problem in problems:
            by_split[problem.split].append(problem)
        for split, members in by_split.items():
            if not members:
                raise DatasetError(f"the dataset marks no row as {split}; both train and test need at least one")
        return by_split
    if len(problems) < 2:
        raise DatasetError("one usable row cannot be both a train and a test split; add rows")
    held_out = min(eval_size, max(1, len(problems) // HELD_OUT_SHARE))
    test_ids = {problem.id for problem in sorted(problems, key=_rank)[:held_out]}
    return {
        "train": [replace(p, split="train") for p in problems if p.id not in test_ids],
        "test": [replace(p, split="test") for p in problems if p.id in test_ids],
    }


class FileTask:
    """The Task protocol over a dataset file (module docstring)."""

    def __init__(self, dataset: "DatasetSpec"):
        report = load_dataset_rows(
            dataset.path,
            format=dataset.format,
            columns=ColumnMapping(**dataset.columns.model_dump()),
            answer_format=dataset.answer_format,
        )
        self.name = dataset.name
        self.skipped_rows = report.rejected_rows
        self.verify = VERIFIERS.get(dataset.verifier or DEFAULT_FILE_VERIFIER)
        problems = [replace(p, prompt=apply_template(dataset.template, p.prompt)) for p in report.problems]
        self.splits = split_problems(problems, dataset.eval_size)

    def problems(self, split: Split, count: int, seed: int) -> list[Problem]:
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}")
        ordered = list(self.splits[split])
        random.Random(f"{self.name}:{split}:{seed}").shuffle(ordered)
        return ordered[:count]

    def score(self, problem: Problem, response: str) -> float:
        return self.verify(response, problem.answer)
