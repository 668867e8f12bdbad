"""Which server files a run spec launched through the platform may name.

The engine reads any path a spec gives it, which is right for `python -m engine run` on
one's own machine and wrong for a shared server: a spec is user input, and the worker
would read (and, through error messages, reveal the existence of) any file it can.
So the platform checks the raw spec before the engine's schema ever looks at the path.
"""

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from django.conf import settings

from engine.assets import ASSETS_DIR, BUILTIN_PREFIX
from engine.spec import SpecError


def dataset_roots() -> list[Path]:
    """Uploaded datasets, registered server folders, and the engine's own sample data."""
    return [Path(settings.ROLLYARD_DATA_DIR), *settings.ROLLYARD_DATASET_ROOTS, ASSETS_DIR]


def model_roots() -> list[Path]:
    """Folders the operator lists in ROLLYARD_MODEL_ROOTS; built-in models need none."""
    return list(settings.ROLLYARD_MODEL_ROOTS)


def check_spec_paths(spec_data: Any) -> None:
    """Raise SpecError naming each path field of `spec_data` that points outside the
    folders this server allows. Anything that is not a path string is left to the
    engine's schema to judge."""
    if not isinstance(spec_data, Mapping):
        return
    problems = []
    for section, field, roots, setting in (
        ("dataset", "path", dataset_roots(), "ROLLYARD_DATA_DIR (uploads) or ROLLYARD_DATASET_ROOTS"),
        ("model", "path", model_roots(), "ROLLYARD_MODEL_ROOTS"),
        ("model", "reference", model_roots(), "ROLLYARD_MODEL_ROOTS"),
    ):
        block = spec_data.get(section)
        value = block.get(field) if isinstance(block, Mapping) else None
        if not isinstance(value, str) or value.startswith(BUILTIN_PREFIX):
            continue
        if not is_inside(value, roots):
            where = ", ".join(str(root) for root in roots) or "none configured"
            problems.append((f"{section}.{field}", f"{value!r} is outside the folders this server allows ({where}; set {setting})"))
    if problems:
        raise SpecError(problems)


def is_inside(value: str, roots: Iterable[Path]) -> bool:
    """Whether `value` is an absolute path inside one of `roots`. Also the rule for
    registering a dataset in place (catalog.services)."""
    if "\x00" in value or not os.path.isabs(value):
        return False
    # resolve() follows symlinks and '..', so a link inside a root cannot lead out of it.
    path = Path(value).resolve()
    return any(path.is_relative_to(Path(root).resolve()) for root in roots)
