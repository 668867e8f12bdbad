"""Read a dataset file into Problems, reporting every row it cannot use and why.

Formats (inferred from the suffix, or a folder, when not given):

- ``jsonl``   one JSON object per line (``.jsonl``, ``.ndjson``); errors name the file line.
- ``csv``     a header row, then one row per record (``.csv``); errors name the line a
              record starts on (the header is line 1).
- ``parquet`` (``.parquet``, ``.pq``); errors name the row, counted from 1.
- ``hf_disk`` a folder written by ``datasets.Dataset.save_to_disk`` (or a DatasetDict's);
              errors name the row, counted from 1 across the splits in the folder's order.
              A DatasetDict's split names give each row its split unless a split column
              is mapped.

Each row gives one Problem: its prompt, its answer (``plain``: the column as written;
``gsm8k``: the text after the last ``####`` with thousands commas removed; ``boxed``:
the content of the last ``\\boxed{...}``) and the column's full text as the solution.
The id is the id column's value, else ``p-`` and a hash of the prompt, so a repeated
prompt is a duplicate. Difficulty is the difficulty column as a float, else NaN: unknown,
never a made-up middle value. The split column's values are ``train`` or ``test``; the
names datasets use for held-out data (validation, valid, val, eval, evaluation, dev,
heldout) read as ``test``, ``training`` as ``train``.

Text is UTF-8 (a byte-order mark is allowed). A line that does not decode or is longer
than MAX_LINE_BYTES is reported and skipped without reading it into memory whole; blank
lines are skipped silently. A row is rejected whole: no partial Problems.
"""

import codecs
import csv
import hashlib
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from engine.problems import Problem, Split
from engine.verifiers import after_marker, last_boxed

DatasetFormat = Literal["jsonl", "csv", "parquet", "hf_disk"]
AnswerFormat = Literal["plain", "gsm8k", "boxed"]
FORMATS: tuple[str, ...] = get_args(DatasetFormat)
ANSWER_FORMATS: tuple[str, ...] = get_args(AnswerFormat)
SUFFIX_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
SPLIT_NAMES: dict[str, Split] = {
    "train": "train",
    "training": "train",
    **dict.fromkeys(["test", "validation", "valid", "val", "eval", "evaluation", "dev", "heldout"], "test"),
}
MAX_LINE_BYTES = 1 << 20  # 1 MiB
# A hostile file can have millions of bad lines; past this many only the count grows.
MAX_REPORTED_ERRORS = 1000
BATCH_ROWS = 1024  # rows per batch read from Parquet and Arrow files


class DatasetError(ValueError):
    """A dataset that cannot be used at all; `errors` holds the row errors found so far."""

    def __init__(self, message: str, errors: list["RowError"] | None = None):
        super().__init__(message)
        self.errors = list(errors or [])


@dataclass(frozen=True)
class ColumnMapping:
    """Which column holds each part of a row; id, difficulty and split are optional."""

    prompt: str = "prompt"
    answer: str = "answer"
    id: str | None = None
    difficulty: str | None = None
    split: str | None = None

    def mapped(self) -> dict[str, str]:
        """role → column, for the roles given a column."""
        roles = {"prompt": self.prompt, "answer": self.answer, "id": self.id}
        roles |= {"difficulty": self.difficulty, "split": self.split}
        return {role: column for role, column in roles.items() if column is not None}


@dataclass(frozen=True)
class RowError:
    line: int  # the file line (jsonl, csv) or the row number (parquet, hf_disk), from 1
    reason: str
    unit: Literal["line", "row"] = "line"

    def __str__(self) -> str:
        return f"{self.unit} {self.line}: {self.reason}"


@dataclass
class LoadReport:
    path: str
    format: DatasetFormat
    problems: list[Problem]
    errors: list[RowError]  # the first MAX_REPORTED_ERRORS rejected rows
    rejected_rows: int  # all rejected rows (may exceed len(errors))
    columns: list[str]  # the columns found, in file order
    rows_read: int = 0  # rows looked at (blank lines not counted)


# ----------------------------------------------------------------- format
def detect_format(path: Path) -> DatasetFormat:
    if path.is_dir():
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return "hf_disk"
        raise DatasetError(
            f"{path} is a folder that datasets.save_to_disk did not write (no state.json or dataset_dict.json)"
        )
    try:
        return SUFFIX_FORMATS[path.suffix.lower()]  # type: ignore[return-value]
    except KeyError:
        raise DatasetError(
            f"cannot tell the format of {path.name} from its suffix; name one of: {', '.join(FORMATS)}"
        ) from None


# ----------------------------------------------------------------- readers
# A reader yields (line or row number, record or the reason it has none, split hint).
Item = tuple[int, dict[str, Any] | str, Split | None]


def _text_lines(path: Path) -> Iterator[tuple[int, str | None, str | None]]:
    """(line number, text or None, reason or None) for each line, read in bounded pieces."""
    with path.open("rb") as file:
        number = 0
        while raw := file.readline(MAX_LINE_BYTES + 1):
            number += 1
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                while raw and not raw.endswith(b"\n"):  # skip the rest of the line unread
                    raw = file.readline(MAX_LINE_BYTES)
                yield number, None, f"line longer than {MAX_LINE_BYTES} bytes"
                continue
            if number == 1:
                raw = raw.removeprefix(codecs.BOM_UTF8)
            try:
                yield number, raw.decode("utf-8"), None
            except UnicodeDecodeError as exc:
                yield number, None, f"not UTF-8 text (byte 0x{raw[exc.start]:02x} at column {exc.start + 1})"


def _json_kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")


class _JsonLines:
    unit = "line"

    def __init__(self, path: Path):
        self.path = path
        self.columns: dict[str, None] = {}  # an ordered set: keys as first seen

    def __iter__(self) -> Iterator[Item]:
        for number, text, reason in _text_lines(self.path):
            if text is None:
                yield number, reason, None
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, f"invalid JSON: {exc.msg} at column {exc.colno}", None
                continue
            except (ValueError, RecursionError) as exc:  # 5,000-digit numbers; deep nesting
                yield number, f"invalid JSON: {str(exc) or type(exc).__name__}", None
                continue
            if not isinstance(record, dict):
                yield number, f"expected a JSON object, got {_json_kind(record)}", None
                continue
            self.columns.update(dict.fromkeys(record))
            yield number, record, None


class _Csv:
    unit = "line"

    def __init__(self, path: Path):
        self.path = path
        self.line_errors: dict[int, str] = {}
        self._rows = csv.reader(self._lines())
        try:
            header = next(self._rows, None)
        except csv.Error as exc:
            raise DatasetError(f"cannot read the CSV header of {path.name}: {exc}") from None
        if self.line_errors or header is None:
            problems = [RowError(line, reason) for line, reason in self.line_errors.items()]
            why = "; ".join(map(str, problems)) or "the file is empty"
            raise DatasetError(f"cannot read the CSV header of {path.name}: {why}", problems)
        repeated = sorted({name for name in header if header.count(name) > 1})
        if repeated:
            raise DatasetError(f"the CSV header of {path.name} repeats the column(s): {', '.join(repeated)}")
        self.columns = header

    def _lines(self) -> Iterator[str]:
        # A line that cannot be read is noted and replaced by an empty one, which the csv
        # module reads as a blank row, so its line count stays the file's.
        for number, text, reason in _text_lines(self.path):
            if text is None:
                self.line_errors[number] = reason
                text = "\n"
            yield text

    def __iter__(self) -> Iterator[Item]:
        while True:
            start = self._rows.line_num + 1
            try:
                row = next(self._rows)
            except StopIteration:
                for line in sorted(self.line_errors):
                    yield line, self.line_errors.pop(line), None
                return
            except csv.Error as exc:
                yield start, f"unreadable CSV: {exc}", None
                continue
            for line in sorted(line for line in self.line_errors if line < self._rows.line_num + 1):
                yield line, self.line_errors.pop(line), None
            if not row:
                continue
            if len(row) != len(self.columns):
                yield start, f"{len(row)} fields where the header has {len(self.columns)}", None
                continue
            yield start, dict(zip(self.columns, row, strict=True)), None


class _Parquet:
    unit = "row"

    def __init__(self, path: Path, wanted: list[str]):
        import pyarrow.parquet as pq  # imported on use: the loader stays light to import

        try:
            self._file = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for junk
            raise DatasetError(f"{path.name} is not a readable Parquet file: {exc}") from None
        self.columns = list(self._file.schema_arrow.names)
        self._wanted = [name for name in wanted if name in self.columns]

    def __iter__(self) -> Iterator[Item]:
        number = 0
        try:
            for batch in self._file.iter_batches(batch_size=BATCH_ROWS, columns=self._wanted):
                for record in batch.to_pylist():
                    number += 1
                    yield number, record, None
        except (OSError, ValueError) as exc:  # a corrupt page part-way through (ArrowIOError, ArrowInvalid)
            raise DatasetError(f"Parquet file unreadable after row {number}: {exc}") from None


class _HuggingFaceFolder:
    unit = "row"

    def __init__(self, path: Path, wanted: list[str]):
        import datasets  # imported on use: heavy, and only this format needs it

        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as exc:  # FileNotFoundError, JSON or Arrow errors from a damaged folder
            raise DatasetError(f"{path} is not a readable datasets.save_to_disk folder: {exc}") from None
        self._parts = list(loaded.items()) if isinstance(loaded, datasets.DatasetDict) else [(None, loaded)]
        self.columns = list(dict.fromkeys(name for _, part in self._parts for name in part.column_names))
        self._wanted = wanted

    def __iter__(self) -> Iterator[Item]:
        number = 0
        for split_name, part in self._parts:
            hint = SPLIT_NAMES.get(split_name.casefold()) if split_name else None
            if split_name and hint is None:
                raise DatasetError(
                    f"the saved DatasetDict has a split {split_name!r}, neither train nor test "
                    f"(known names: {', '.join(SPLIT_NAMES)}); map a split column to say which is which"
                )
            columns = [name for name in self._wanted if name in part.column_names]
            for batch in part.select_columns(columns).iter(batch_size=BATCH_ROWS):
                for values in zip(*(batch[name] for name in columns), strict=True):
                    number += 1
                    yield number, dict(zip(columns, values, strict=True)), hint


# ----------------------------------------------------------------- rows
class _Rejected(Exception):
    """A row that cannot be a Problem; the message is the reason."""


def _text_of(record: dict[str, Any], role: str, column: str) -> str:
    if column not in record:
        raise _Rejected(f"no {role} (no column {column!r})")
    value = record[column]
    if isinstance(value, float) and math.isnan(value):
        value = None  # a missing cell in a table
    if isinstance(value, (int, float)) and not isinstance(value, bool) and role != "prompt":
        value = str(value)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Rejected(f"empty {role} (column {column!r})")
    if not isinstance(value, str):
        raise _Rejected(f"{role} is not text (column {column!r} holds {type(value).__name__})")
    return value


def _answer_of(text: str, answer_format: AnswerFormat) -> str:
    if answer_format == "gsm8k":
        answer = after_marker(text)
        if answer is None:
            raise _Rejected("no '#### <answer>' in the answer")
        return answer.replace(",", "")
    if answer_format == "boxed":
        answer = last_boxed(text)
        if not answer:
            raise _Rejected("no \\boxed{...} in the answer")
        return answer
    return text.strip()


def _difficulty_of(record: dict[str, Any], column: str) -> float:
    value = _text_of(record, "difficulty", column)
    try:
        difficulty = float(value)
    except ValueError:
        raise _Rejected(f"difficulty {value[:40]!r} is not a number") from None
    if not math.isfinite(difficulty):
        raise _Rejected(f"difficulty must be a finite number, not {value!r}")
    return difficulty


def _split_of(record: dict[str, Any], column: str) -> Split:
    value = _text_of(record, "split", column)
    split = SPLIT_NAMES.get(value.strip().casefold())
    if split is None:
        raise _Rejected(f"unknown split {value[:40]!r}: use train or test (validation, val, eval, dev ... mean test)")
    return split


def prompt_id(prompt: str) -> str:
    """The id of a row without an id column: a hash of its prompt."""
    return "p-" + hashlib.sha256(prompt.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _problem_of(
    record: dict[str, Any], columns: ColumnMapping, answer_format: AnswerFormat, hint: Split | None
) -> Problem:
    prompt = _text_of(record, "prompt", columns.prompt)
    solution = _text_of(record, "answer", columns.answer)
    return Problem(
        id=_text_of(record, "id", columns.id).strip() if columns.id else prompt_id(prompt),
        prompt=prompt,
        answer=_answer_of(solution, answer_format),
        difficulty=_difficulty_of(record, columns.difficulty) if columns.difficulty else math.nan,
        solution=solution,
        split=_split_of(record, columns.split) if columns.split else hint,
    )


# ----------------------------------------------------------------- entry point
def load_dataset_rows(
    path: str | Path,
    format: DatasetFormat | None = None,
    columns: ColumnMapping = ColumnMapping(),
    answer_format: AnswerFormat = "plain",
    max_rows: int | None = None,
) -> LoadReport:
    """Read a dataset file (module docstring) into Problems and the errors of the rows it
    rejected. `max_rows` bounds the rows read, good or bad. Raises DatasetError for a
    file that cannot be read, a format not known or not inferable, a mapped column the
    file lacks, or a file with no usable rows."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no such file or folder: {path}")
    format = format or detect_format(path)
    if format not in FORMATS:
        raise DatasetError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if answer_format not in ANSWER_FORMATS:
        raise DatasetError(f"unknown answer format {answer_format!r}; choose one of: {', '.join(ANSWER_FORMATS)}")
    wanted = list(dict.fromkeys(columns.mapped().values()))
    try:
        if format == "jsonl":
            reader = _JsonLines(path)
        elif format == "csv":
            reader = _Csv(path)
        elif format == "parquet":
            reader = _Parquet(path, wanted)
        else:
            reader = _HuggingFaceFolder(path, wanted)
        if format != "jsonl":  # a JSONL file has no header: its columns are known at the end
            _check_columns(path, columns, list(reader.columns))

        problems: list[Problem] = []
        errors: list[RowError] = []
        rejected = rows_read = 0
        first_line_of: dict[str, int] = {}
        for number, record, hint in reader:
            if max_rows is not None and rows_read >= max_rows:
                break
            rows_read += 1
            try:
                if isinstance(record, str):
                    raise _Rejected(record)
                problem = _problem_of(record, columns, answer_format, hint)
                if problem.id in first_line_of:
                    what = f"id {problem.id!r}" if columns.id else "prompt"
                    raise _Rejected(f"duplicate {what} (first on {reader.unit} {first_line_of[problem.id]})")
            except _Rejected as exc:
                rejected += 1
                if len(errors) < MAX_REPORTED_ERRORS:
                    errors.append(RowError(number, str(exc), reader.unit))
                continue
            first_line_of[problem.id] = number
            problems.append(problem)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from None

    found = list(reader.columns)
    if format == "jsonl" and found:  # some line was a JSON object: its keys are the columns
        _check_columns(path, columns, found, errors)
    if not problems:
        if not rows_read:
            raise DatasetError(f"{path.name} holds no rows")
        first = "; ".join(str(error) for error in errors[:5])
        raise DatasetError(f"no usable rows in {path.name}: all {rows_read} rows were rejected ({first})", errors)
    return LoadReport(str(path), format, problems, errors, rejected, found, rows_read)


def _check_columns(path: Path, columns: ColumnMapping, found: list[str], errors: list[RowError] | None = None) -> None:
    missing = [f"{column!r} ({role})" for role, column in columns.mapped().items() if column not in found]
    if missing:
        raise DatasetError(
            f"{path.name} has no column {', '.join(missing)}; its columns are: {', '.join(found) or 'none'}", errors
        )
