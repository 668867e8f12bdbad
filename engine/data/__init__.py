"""Datasets from files (torch-free): the loader, its report and prompt templates.

`load_dataset_rows` reads JSONL, CSV, Parquet or a `datasets.save_to_disk` folder into
`engine.tasks.Problem`s with a `RowError(line, reason)` for every row it rejects
(engine/data/loading.py has the rules). The platform's upload check and the trainer's
`FileTask` (engine/tasks/file.py) both read files through it, so a file accepted at
upload reads the same at run time.
"""

from engine.data.loading import (
    ANSWER_FORMATS,
    FORMATS,
    MAX_LINE_BYTES,
    MAX_REPORTED_ERRORS,
    SPLIT_NAMES,
    AnswerFormat,
    ColumnMapping,
    DatasetError,
    DatasetFormat,
    LoadReport,
    RowError,
    detect_format,
    load_dataset_rows,
    prompt_id,
)
from engine.data.templates import apply_template, check_template

__all__ = [
    "ANSWER_FORMATS",
    "FORMATS",
    "MAX_LINE_BYTES",
    "MAX_REPORTED_ERRORS",
    "SPLIT_NAMES",
    "AnswerFormat",
    "ColumnMapping",
    "DatasetError",
    "DatasetFormat",
    "LoadReport",
    "RowError",
    "apply_template",
    "check_template",
    "detect_format",
    "load_dataset_rows",
    "prompt_id",
]
