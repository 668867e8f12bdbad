"""The one place that changes datasets and presets, and that turns a run spec's catalog
references into the engine spec they stand for. The REST API and the pages call these.

Storing a dataset is all or nothing: the file is checked with the engine's own loader
first (the same code that reads it at run time), then its rows and its final file appear
in one transaction; on any failure the staged file is removed and no row remains.
"""

import math
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction
from django.db.models import Max

from accounts.models import Role, Team
from accounts.permissions import require_role, visible_to
from catalog.models import Dataset, Preset, PresetKind, PromptRecord, PromptRunDifficulty, PromptStat, RunInputs
from catalog.selectors import visible_dataset_at
from catalog.uploads import FORMAT_SUFFIXES, data_dir, safe_filename
from engine.data import FORMATS, ColumnMapping, DatasetError, LoadReport, RowError, load_dataset_rows
from engine.events import DifficultyUpdates, Event, PromptResults
from engine.spec import DatasetSpec, RunSpec, SpecError, parse_spec
from engine.tasks.file import split_problems
from rollyard.params import NUL, NUL_REASON, nul_fields, whole_number
from rollyard.paths import is_inside, os_reason
from rollyard.text import count

# A 400 lists at most this many bad rows (and says how many there were in all).
REPORTED_ROW_ERRORS = 100
# A reason may quote the row; a 5 MB line must not come back in the answer.
REASON_CHARS = 300
RECORD_BATCH = 1000
COLUMN_ROLES = ("prompt", "answer", "id", "difficulty", "split")
REQUIRED_COLUMNS = {"prompt": "prompt", "answer": "answer"}  # role → default column
NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


class CatalogError(Exception):
    """A request the catalog refuses; the message says why, `field` names the request
    field at fault when one is (the API puts it in the error's fields)."""

    def __init__(self, message: str, field: str | None = None):
        self.field = field
        super().__init__(message)


class CatalogConflict(CatalogError):
    """The name is taken (or a version was saved meanwhile)."""


class DatasetRejected(CatalogError):
    """The file cannot become a dataset. `row_errors` lists the first bad rows as
    {"line", "unit" ("line" in text files, "row" in tables), "reason"}, `bad_row_count`
    how many there were in all."""

    def __init__(self, message: str, row_errors: Sequence[dict[str, Any]] = (), bad_row_count: int = 0):
        self.row_errors = list(row_errors)
        self.bad_row_count = bad_row_count
        super().__init__(message)


class SomeRowsBad(DatasetRejected):
    """Some rows are bad: skipping them would store the others. How to ask for that is
    the interface's to say (the API's `skip_bad_rows`, the page's
    checkbox), so the message gives the facts only."""


def _check_name(name: str, what: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 100 or not set(name) <= NAME_CHARS or name[0] == ".":
        raise CatalogError(
            f"{what} name {name!r} is not allowed: use 1-100 letters, digits, '.', '_' or '-', not starting with '.'",
            "name",
        )
    return name


# --- datasets -------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadOptions:
    """How to read a dataset file: the engine loader's arguments."""

    format: str | None  # None: the loader tells it from the suffix (or a folder)
    columns: dict[str, str] = field(default_factory=lambda: dict(REQUIRED_COLUMNS))
    answer_format: str = "plain"

    def column_mapping(self) -> ColumnMapping:
        return ColumnMapping(**{role: self.columns.get(role) for role in COLUMN_ROLES})


def load_options(format: str | None, columns: Mapping[str, Any] | None, answer_format: str | None) -> LoadOptions:
    """Validated loader options. Raises CatalogError naming an unknown format or role."""
    if format is not None and format not in FORMATS:
        raise CatalogError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}", "format")
    mapping = dict(REQUIRED_COLUMNS)
    for role, column in (columns or {}).items():
        if role not in COLUMN_ROLES:
            raise CatalogError(f"unknown column role {role!r}; the roles are: {', '.join(COLUMN_ROLES)}", "columns")
        if column in (None, ""):
            continue  # the default column for prompt and answer, none for the others
        if not isinstance(column, str) or NUL in column:
            raise CatalogError(f"column for {role!r} must be a column name, got {column!r}", "columns")
        mapping[role] = column
    return LoadOptions(format=format, columns=mapping, answer_format=answer_format or "plain")


def upload_dataset(
    user: AbstractBaseUser,
    team: Team,
    name: str,
    staged_path: Path,
    client_filename: str,
    options: LoadOptions,
    *,
    description: str = "",
    skip_bad_rows: bool = False,
) -> Dataset:
    """Store an uploaded file (already staged under the data dir) as a dataset of `team`.

    Preconditions: the caller checked nothing; this checks the member role, the name, and
    the file with the engine's loader. Bad rows refuse the whole file (DatasetRejected
    listing line and reason) unless `skip_bad_rows`, which keeps the good rows and records
    the skipped ones. The staged file is moved into place or deleted, never left behind.
    """
    try:
        require_role(user, team, Role.MEMBER, "upload a dataset")
        name = _check_name(name, "dataset")
        filename = safe_filename(client_filename)
        if options.format not in FORMAT_SUFFIXES:
            raise CatalogError(f"format {options.format!r} cannot be uploaded; register a server path for it")
        if not filename.lower().endswith(FORMAT_SUFFIXES[options.format]):
            filename += FORMAT_SUFFIXES[options.format]
        final_path = data_dir() / "datasets" / uuid.uuid4().hex / filename
        return _store_dataset(
            user, team, name, staged_path, final_path, options,
            description=description, skip_bad_rows=skip_bad_rows, original_filename=filename,
        )  # fmt: skip
    finally:
        staged_path.unlink(missing_ok=True)


def register_dataset(
    user: AbstractBaseUser,
    team: Team,
    name: str,
    server_path: str,
    options: LoadOptions,
    *,
    description: str = "",
    skip_bad_rows: bool = False,
) -> Dataset:
    """Register a file (or, for hf_disk, a folder) that already lies on the server, in
    place. Only paths inside ROLLYARD_DATASET_ROOTS (after resolving symlinks and '..')
    are accepted; with no roots configured, none are."""
    require_role(user, team, Role.MEMBER, "register a dataset")
    name = _check_name(name, "dataset")
    path = _path_inside_roots(server_path)
    return _store_dataset(user, team, name, path, path, options, description=description, skip_bad_rows=skip_bad_rows)


def _path_inside_roots(server_path: str) -> Path:
    """The resolved path to register. Refusals name the field, never the roots: which
    folders the server exposes is the operator's business."""
    roots = settings.ROLLYARD_DATASET_ROOTS
    if not roots:
        raise CatalogError(
            "registering server paths is disabled: no ROLLYARD_DATASET_ROOTS are configured; upload the file instead",
            "path",
        )
    if not server_path or "\x00" in server_path or not os.path.isabs(server_path):
        raise CatalogError("the server path must be an absolute path", "path")
    if not is_inside(server_path, roots):
        raise CatalogError("the path is outside the folders this server lets datasets be registered from", "path")
    if len(server_path) > Dataset._meta.get_field("path").max_length:
        raise CatalogError(f"the path is longer than {Dataset._meta.get_field('path').max_length} characters", "path")
    path = Path(server_path).resolve()
    try:
        exists = path.exists()  # ENAMETOOLONG, EACCES: not "missing", and not a server error
    except OSError as exc:
        raise CatalogError(os_reason(exc), "path") from None
    if not exists:
        raise CatalogError(f"nothing exists at {server_path!r}", "path")
    return path


def _store_dataset(
    user: AbstractBaseUser,
    team: Team,
    name: str,
    source: Path,
    final_path: Path,
    options: LoadOptions,
    *,
    description: str,
    skip_bad_rows: bool,
    original_filename: str = "",
) -> Dataset:
    if Dataset.objects.filter(team=team, name=name).exists():
        raise CatalogConflict(f"team '{team.name}' already has a dataset named '{name}'")
    report = _load(source, options, original_filename)
    bad_rows = [_row_error(error) for error in report.errors[:REPORTED_ROW_ERRORS]]
    if report.rejected_rows and not skip_bad_rows:
        verb = "is" if report.rejected_rows == 1 else "are"
        raise SomeRowsBad(
            f"{report.rejected_rows} of {count(report.rows_read, 'row')} {verb} invalid; nothing was stored",
            bad_rows,
            report.rejected_rows,
        )
    splits = _splits(report)
    moves = source != final_path
    try:
        with transaction.atomic():
            dataset = Dataset.objects.create(
                team=team,
                name=name,
                description=description,
                format=report.format,
                columns=options.columns,
                answer_format=options.answer_format,
                path=str(final_path),
                registered=not moves,
                original_filename=original_filename,
                size_bytes=_size_of(source),
                row_count=len(report.problems),
                split_counts=dict(Counter(splits)),
                skipped_row_count=report.rejected_rows,
                skipped_rows=bad_rows,
                created_by=user,
            )
            PromptRecord.objects.bulk_create(
                (
                    PromptRecord(
                        dataset=dataset,
                        position=position,
                        prompt_id=problem.id,
                        prompt=problem.prompt,
                        answer=problem.answer,
                        split=split,
                        difficulty=problem.difficulty if math.isfinite(problem.difficulty) else None,
                    )
                    for position, (problem, split) in enumerate(zip(report.problems, splits, strict=True))
                ),
                batch_size=RECORD_BATCH,
            )
            if moves:
                # Last inside the transaction: if the move fails the rows roll back; if the
                # commit fails the except below removes the moved file.
                final_path.parent.mkdir(parents=True)
                os.replace(source, final_path)
    except IntegrityError as exc:
        _remove_stored_copy(final_path, moves)
        raise CatalogConflict(f"could not store dataset '{name}': {exc}") from None
    except BaseException:
        _remove_stored_copy(final_path, moves)
        raise
    return dataset


def _load(path: Path, options: LoadOptions, upload_name: str = "") -> LoadReport:
    """The engine loader's report. For an upload, errors call the file by `upload_name`:
    the staging path they would quote is the server's, not the user's."""
    try:
        return load_dataset_rows(
            path, format=options.format, columns=options.column_mapping(), answer_format=options.answer_format
        )
    except DatasetError as exc:
        message = str(exc)
        if upload_name:
            message = message.replace(str(path), upload_name).replace(path.name, upload_name)
        raise _rejected(exc, message) from None


def _splits(report: LoadReport) -> list[str]:
    """Each accepted row's split exactly as a run will read it: the file's split column
    when mapped, else the engine's hash rule at the default eval_size. Raises
    DatasetRejected when no run could split the rows (e.g. no test row at all)."""
    try:
        by_split = split_problems(report.problems, DatasetSpec.model_fields["eval_size"].default)
    except DatasetError as exc:
        raise _rejected(exc) from None
    split_of = {problem.id: split for split, problems in by_split.items() for problem in problems}
    return [split_of[problem.id] for problem in report.problems]


def _rejected(exc: DatasetError, message: str | None = None) -> DatasetRejected:
    errors = [_row_error(error) for error in exc.errors[:REPORTED_ROW_ERRORS]]
    message = _short(str(exc) if message is None else message)
    return DatasetRejected(f"not a usable dataset: {message}; nothing was stored", errors, len(exc.errors))


def _row_error(error: RowError) -> dict[str, Any]:
    return {"line": error.line, "unit": error.unit, "reason": _short(error.reason)}


def _short(text: str) -> str:
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def _size_of(path: Path) -> int:
    if path.is_dir():
        return sum(item.stat().st_size for item in path.rglob("*") if item.is_file())
    return path.stat().st_size


def _remove_stored_copy(final_path: Path, moved: bool) -> None:
    if moved:
        shutil.rmtree(final_path.parent, ignore_errors=True)


# --- per-prompt difficulty history ------------------------------------------------------------


def record_prompt_results(run_id: int, events: Iterable[Event]) -> None:
    """Copy a run's prompt_results events into PromptStat rows, when the run trained on a
    catalog dataset. Called by runs.telemetry.record_events inside its transaction, so the
    history commits with the run's other telemetry; a batch stored twice adds nothing."""
    results = [event for event in events if isinstance(event, PromptResults)]
    if not results:
        return
    record_ids = _record_ids_of(run_id, {result.prompt_id for event in results for result in event.results})
    if not record_ids:
        return
    PromptStat.objects.bulk_create(
        [
            PromptStat(
                record_id=record_ids[result.prompt_id],
                run_id=run_id,
                step=event.step,
                split=event.split,
                attempts=result.attempts,
                successes=result.successes,
                mean_length=result.mean_length,
            )
            for event in results
            for result in event.results
            if result.prompt_id in record_ids
        ],
        batch_size=RECORD_BATCH,
        ignore_conflicts=True,
    )


# What the catalog keeps of a run's PromptDifficulty rows (not the rollouts allocated).
_POSTERIOR = ["attempts", "successes", "alpha", "beta", "mean", "low", "high", "last_step"]


def record_prompt_difficulty(run_id: int, updates: Sequence[DifficultyUpdates]) -> None:
    """Copy a run's difficulty records into the dataset's per-prompt records
    (PromptRunDifficulty, one per prompt and run, the latest winning: the values are the
    run's totals), when the run trained on a catalog dataset. Called by runs.prompts
    inside record_events' transaction."""
    record_ids = _record_ids_of(run_id, {prompt.prompt_id for event in updates for prompt in event.prompts})
    if not record_ids:
        return
    latest: dict[int, PromptRunDifficulty] = {}  # one upsert per record: the batch's last wins
    for event in updates:
        seen_at = datetime.fromtimestamp(event.wall_time, tz=UTC)
        for prompt in event.prompts:
            if (record_id := record_ids.get(prompt.prompt_id)) is None:
                continue
            latest[record_id] = PromptRunDifficulty(
                record_id=record_id, run_id=run_id, **prompt.model_dump(include=_POSTERIOR), seen_at=seen_at
            )
    PromptRunDifficulty.objects.bulk_create(
        latest.values(),
        batch_size=RECORD_BATCH,
        update_conflicts=True,
        unique_fields=["record", "run"],
        update_fields=[*_POSTERIOR, "seen_at"],
    )


def _record_ids_of(run_id: int, prompt_ids: Iterable[str]) -> dict[str, int]:
    """prompt id → PromptRecord id, for those of `prompt_ids` in the dataset the run was
    launched from; empty when it used none from the catalog."""
    dataset_id = RunInputs.objects.filter(run_id=run_id).values_list("dataset_id", flat=True).first()
    if dataset_id is None:
        return {}
    # No stored record holds a NUL (PostgreSQL cannot), and asking for one fails the query.
    wanted = sorted(prompt_id for prompt_id in prompt_ids if NUL not in prompt_id)
    record_ids: dict[str, int] = {}
    for start in range(0, len(wanted), RECORD_BATCH):  # keeps IN (...) under SQLite's variable limit
        chunk = wanted[start : start + RECORD_BATCH]
        record_ids.update(
            PromptRecord.objects.filter(dataset_id=dataset_id, prompt_id__in=chunk).values_list("prompt_id", "pk")
        )
    return record_ids


# --- presets ----------------------------------------------------------------------------------


def preset_kinds_supported() -> list[str]:
    """Preset kinds this engine's run spec has a section for."""
    return [kind for kind in PresetKind.values if kind in RunSpec.model_fields]


def validate_preset_body(kind: str, body: Any) -> dict[str, Any]:
    """The preset's spec section resolved by the engine's schema (defaults filled in).
    Raises SpecError with fields named "body.<field>"."""
    if kind not in PresetKind.values:
        raise SpecError([("kind", f"unknown preset kind {kind!r}; choose one of: {', '.join(PresetKind.values)}")])
    if not isinstance(body, dict):
        raise SpecError([("body", f"expected a mapping of {kind} settings, got {type(body).__name__}")])
    if unstorable := nul_fields(body):
        raise SpecError([(f"body.{field}", NUL_REASON) for field in unstorable])
    try:
        section = getattr(parse_spec({kind: body}), kind)
    except SpecError as exc:
        raise SpecError([("body" + field.removeprefix(kind), reason) for field, reason in exc.problems]) from None
    return section.model_dump(mode="json")


def create_preset(
    user: AbstractBaseUser, team: Team, kind: str, name: str, body: Any, description: str = ""
) -> Preset:
    """Version 1 of a new preset. Raises CatalogConflict when the name is taken (save a
    new version of that one instead), SpecError for a body the engine refuses."""
    require_role(user, team, Role.MEMBER, "create a preset")
    name = _check_name(name, "preset")
    resolved = validate_preset_body(kind, body)
    if Preset.objects.filter(team=team, kind=kind, name=name).exists():
        raise CatalogConflict(f"team '{team.name}' already has a {kind} preset named '{name}'; save a new version of it")
    return _save_version(user, team, kind, name, 1, resolved, description)


def new_preset_version(user: AbstractBaseUser, preset: Preset, body: Any, description: str | None = None) -> Preset:
    """Save `body` as the next version of `preset`'s name; earlier versions never change."""
    require_role(user, preset.team, Role.MEMBER, "edit a preset")
    resolved = validate_preset_body(preset.kind, body)
    latest = Preset.objects.filter(team=preset.team, kind=preset.kind, name=preset.name).aggregate(v=Max("version"))
    return _save_version(
        user, preset.team, preset.kind, preset.name, latest["v"] + 1, resolved,
        preset.description if description is None else description,
    )  # fmt: skip


def _save_version(user, team: Team, kind: str, name: str, version: int, body: dict, description: str) -> Preset:
    try:
        with transaction.atomic():
            return Preset.objects.create(
                team=team, kind=kind, name=name, version=version, body=body, description=description, created_by=user
            )
    except IntegrityError:
        # The unique (team, kind, name, version) constraint: someone saved it meanwhile.
        raise CatalogConflict(f"version {version} of '{team.name}/{name}' was saved meanwhile; try again") from None


# --- run spec references -----------------------------------------------------------------------


@dataclass
class RunReferences:
    """The catalog entries a spec referred to."""

    dataset: Dataset | None = None
    presets: list[Preset] = field(default_factory=list)


def dataset_spec_section(dataset: Dataset) -> dict[str, Any]:
    """The engine spec's dataset section that reads this dataset."""
    return {
        "name": dataset.reference,
        "path": dataset.path,
        "format": dataset.format,
        "columns": dataset.columns,
        "answer_format": dataset.answer_format,
    }


def resolve_references(
    user: AbstractBaseUser, team: Team, spec_data: Any
) -> tuple[Any, RunReferences]:
    """Replace `"dataset": {"catalog": "<team>/<name>" | "<name>" | id, ...}` and
    `"<kind>": {"preset": "<team>/<name>[@<version>]", ...}` with the sections they stand
    for; keys given next to the reference override the stored ones. A bare name means
    `team`'s. A reference the user cannot see reads exactly like a missing one. Raises
    SpecError naming each bad reference; returns the spec unchanged when it has none."""
    references = RunReferences()
    if not isinstance(spec_data, Mapping):
        return spec_data, references
    data = dict(spec_data)
    problems: list[tuple[str, str]] = []

    section = data.get("dataset")
    if isinstance(section, Mapping) and isinstance(section.get("path"), str) and "catalog" not in section:
        # A resolved spec (a clone, a fork) still feeds its dataset's prompt history.
        references.dataset = visible_dataset_at(user, section["path"])
    if isinstance(section, Mapping) and "catalog" in section:
        overrides = dict(section)
        reference = overrides.pop("catalog")
        references.dataset = _find_dataset(user, team, reference)
        if "path" in overrides:
            # The run's prompt history is the referenced dataset's: it must read that file.
            problems.append(("dataset.path", "give either a catalog reference or a path, not both"))
        elif references.dataset is None:
            problems.append(("dataset.catalog", f"no dataset {reference!r} among your teams' datasets"))
        else:
            data["dataset"] = {**dataset_spec_section(references.dataset), **overrides}

    for kind in PresetKind.values:
        section = data.get(kind)
        if not (isinstance(section, Mapping) and "preset" in section):
            continue
        overrides = dict(section)
        reference = overrides.pop("preset")
        preset = _find_preset(user, team, kind, reference)
        if preset is None:
            problems.append((f"{kind}.preset", f"no {kind} preset {reference!r} among your teams' presets"))
        else:
            references.presets.append(preset)
            data[kind] = {**preset.body, **overrides}

    if problems:
        raise SpecError(problems)
    return data, references


def record_run_inputs(run, references: RunReferences) -> None:
    """Remember which dataset and preset versions a run was launched from (called inside
    create_run's transaction). Runs without references get no row."""
    if references.dataset is None and not references.presets:
        return
    inputs = RunInputs.objects.create(run=run, dataset=references.dataset)
    inputs.presets.set(references.presets)


def _split_reference(reference: str, team: Team) -> tuple[str, str]:
    team_name, _, name = reference.rpartition("/")
    return team_name or team.name, name


def _find_dataset(user: AbstractBaseUser, team: Team, reference: Any) -> Dataset | None:
    datasets = visible_to(user, Dataset.objects.select_related("team"))
    if isinstance(reference, int) and not isinstance(reference, bool):
        return datasets.filter(pk=reference).first()
    if not isinstance(reference, str) or not reference:
        return None
    team_name, name = _split_reference(reference, team)
    return datasets.filter(team__name=team_name, name=name).first()


def _find_preset(user: AbstractBaseUser, team: Team, kind: str, reference: Any) -> Preset | None:
    if not isinstance(reference, str) or not reference:
        return None
    path, _, version = reference.partition("@")
    team_name, name = _split_reference(path, team)
    presets = visible_to(user, Preset.objects.select_related("team")).filter(
        team__name=team_name, kind=kind, name=name
    )
    if version:
        number = whole_number(version)
        return presets.filter(version=number).first() if number is not None else None
    return presets.order_by("-version").first()
