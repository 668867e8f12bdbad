"""Which server files a run spec launched through the platform may name.

The engine reads any path a spec gives it, which is right for `python -m engine run` on
one's own machine and wrong for a shared server: a spec is user input, and the worker
would read (and, through error messages, reveal the existence of) any file it can.
So the platform checks the raw spec before the engine's schema ever looks at the path,
and again when a worker claims the run (the user's teams, or the settings, may have
changed while it waited).

The rules, per field:
- `dataset.path`: under ROLLYARD_DATA_DIR (every team's uploads) only the stored path of a
  catalog dataset the user may see; elsewhere a path under ROLLYARD_DATASET_ROOTS or the
  engine's sample data. Datasets have no built-ins (a built-in task is `dataset.name`).
- `model.path`, `model.reference`: `builtin:<name>` of a model the engine ships, or a
  folder under ROLLYARD_MODEL_ROOTS.

Refusals name the field and the setting, never a server folder: the roots are the
operator's business, and echoing them tells a caller where to aim.
"""

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser

from catalog.selectors import visible_dataset_at
from engine.assets import ASSETS_DIR, BUILTIN_MODELS, BUILTIN_PREFIX
from engine.spec import RunSpec, SpecError, parse_spec
from rollyard.paths import is_inside, os_reason

PATH_FIELDS = (("dataset", "path"), ("model", "path"), ("model", "reference"))

OUTSIDE = "outside the folders this server allows"


def dataset_roots() -> list[Path]:
    """Registered server folders and the engine's own sample data. The data folder is not
    among them: a path there must be a catalog dataset the user may see."""
    return [*settings.ROLLYARD_DATASET_ROOTS, ASSETS_DIR]


def model_roots() -> list[Path]:
    """Folders the operator lists in ROLLYARD_MODEL_ROOTS; built-in models need none."""
    return list(settings.ROLLYARD_MODEL_ROOTS)


def check_spec_paths(user: AbstractBaseUser, spec_data: Any) -> None:
    """Raise SpecError naming each path field of `spec_data` that `user` may not have a
    run read (module docstring). Anything that is not a path string is left to the
    engine's schema to judge."""
    if not isinstance(spec_data, Mapping):
        return
    problems = []
    for section, field in PATH_FIELDS:
        block = spec_data.get(section)
        value = block.get(field) if isinstance(block, Mapping) else None
        if not isinstance(value, str):
            continue
        reason = _dataset_path_refusal(user, value) if section == "dataset" else _model_path_refusal(value)
        if reason:
            problems.append((f"{section}.{field}", reason))
    if problems:
        raise SpecError(problems)


def check_spec_paths_for_run(run: Any) -> None:
    """The launch-time check again, on the run's stored spec and for its owner: called
    when a worker claims the run. Raises SpecError as check_spec_paths does."""
    check_spec_paths(run.owner, run.spec)


def parse_server_spec(data: Any) -> RunSpec:
    """engine.spec.parse_spec, with an OSError that the engine's checks of a path leak
    (a file name longer than the file system allows, a folder the server may not list)
    turned into a SpecError on that path's field instead of a server error. The paths
    passed check_spec_paths first."""
    try:
        return parse_spec(data)
    except OSError as exc:
        raise SpecError([(_field_of(data, exc.filename), os_reason(exc))]) from None


def _dataset_path_refusal(user: AbstractBaseUser, value: str) -> str | None:
    if value.startswith(BUILTIN_PREFIX):
        return "datasets have no built-ins ('builtin:' names a model); a built-in task is set by dataset.name"
    if is_inside(value, [settings.ROLLYARD_DATA_DIR]):
        if visible_dataset_at(user, value) is None:
            # A dataset of another team reads exactly like a missing one.
            return (
                'no dataset of your teams is stored at this path; name an uploaded dataset by {"catalog": "<team>/<name>"}'
            )
        return None
    if not is_inside(value, dataset_roots()):
        return f"{OUTSIDE}: upload the file, or place it under ROLLYARD_DATASET_ROOTS"
    return None


def _model_path_refusal(value: str) -> str | None:
    if value.startswith(BUILTIN_PREFIX):
        name = value.removeprefix(BUILTIN_PREFIX)
        return None if name in BUILTIN_MODELS else BUILTIN_MODELS.unknown_message(name)
    if not is_inside(value, model_roots()):
        configured = "" if model_roots() else " (none are configured)"
        return f"{OUTSIDE}: model folders must lie under ROLLYARD_MODEL_ROOTS{configured}, or use builtin:<name>"
    return None


def _field_of(data: Any, filename: Any) -> str:
    """The path field whose value `filename` lies in (a model folder's config.json lies in
    model.path); "spec" when none does."""
    if isinstance(data, Mapping) and filename is not None:
        filename = os.fsdecode(filename)
        for section, field in PATH_FIELDS:
            block = data.get(section)
            value = block.get(field) if isinstance(block, Mapping) else None
            if isinstance(value, str) and value and (filename == value or filename.startswith(value.rstrip("/") + "/")):
                return f"{section}.{field}"
    return "spec"
