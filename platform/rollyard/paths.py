"""Path rules shared by the catalog (datasets registered in place) and runs (the server
paths of a spec). Below both apps, so that neither imports the other for them."""

import errno
import os
from collections.abc import Iterable
from pathlib import Path


def is_inside(value: str, roots: Iterable[Path]) -> bool:
    """Whether `value` is an absolute path inside one of `roots`. Also the rule for
    registering a dataset in place (catalog.services) and of a run's paths
    (runs.spec_paths)."""
    if "\x00" in value or not os.path.isabs(value):
        return False
    # resolve() follows symlinks and '..', so a link inside a root cannot lead out of it.
    # It does not raise for a name too long to exist (strict=False); the engine's checks do.
    path = Path(value).resolve()
    return any(path.is_relative_to(Path(root).resolve()) for root in roots)


def os_reason(exc: OSError) -> str:
    """Why the server cannot use a path, without the path (the caller names the field).
    What both runs.spec_paths and dataset registration (catalog.services) answer."""
    if exc.errno == errno.ENAMETOOLONG:
        return "a name in this path is longer than the file system allows (255 bytes per name)"
    return f"the server cannot read this path: {os.strerror(exc.errno) if exc.errno else type(exc).__name__}"
