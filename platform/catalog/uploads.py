"""Receiving a dataset file: a size-capped upload handler and filename hygiene.

The client's filename is never used as a path. It only lends its suffix (the format) and
a cleaned-up display name; the bytes go to a staging file with a random name under
`ROLLYARD_DATA_DIR/tmp`, counted as they arrive, and are dropped the moment they pass
`ROLLYARD_MAX_UPLOAD_BYTES`.
"""

import re
import time
import unicodedata
import uuid
from pathlib import Path

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.core.files.uploadhandler import FileUploadHandler, SkipFile, StopUpload
from django.http import HttpRequest

from engine.data.loading import SUFFIX_FORMATS

# Multipart framing and the small form fields around the file: a request whose declared
# length passes the limit by more than this is refused before a byte of it is read.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
FILE_FIELD = "file"

# The formats an upload may have (hf_disk is a folder), with the suffix a stored file gets.
FORMAT_SUFFIXES = {"jsonl": ".jsonl", "csv": ".csv", "parquet": ".parquet"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_FILENAME_CHARS = 100


def data_dir() -> Path:
    return Path(settings.ROLLYARD_DATA_DIR)


# A staged file older than this belongs to a process that died mid-upload (a live upload
# removes its own file when it ends, whatever happens); the next upload sweeps it.
STALE_STAGING_SECONDS = 24 * 3600


def staging_dir() -> Path:
    folder = data_dir() / "tmp"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def sweep_stale_staging(now: float | None = None) -> list[Path]:
    """Remove staged uploads older than STALE_STAGING_SECONDS; returns what it removed."""
    cutoff = (time.time() if now is None else now) - STALE_STAGING_SECONDS
    removed = []
    for path in staging_dir().glob("*.upload"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed.append(path)
        except FileNotFoundError:
            pass  # another upload swept it first
    return removed


def safe_filename(client_name: str, fallback: str = "data") -> str:
    """A display and storage name made only of [A-Za-z0-9._-]: the last path component
    of whatever the client sent (either slash), compatibility-normalised (so a fullwidth
    '．．／' is no escape), with control characters and NULs dropped and no leading dot.
    'data' when nothing usable is left."""
    name = unicodedata.normalize("NFKC", client_name or "")
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(char for char in name if unicodedata.category(char)[0] != "C")
    name = _UNSAFE.sub("_", name).lstrip(".")[-MAX_FILENAME_CHARS:].lstrip(".")
    return name or fallback


def format_from_filename(name: str) -> str | None:
    """The dataset format a file's suffix names (the engine loader's rule), None when it
    names none the loader reads."""
    return SUFFIX_FORMATS.get(Path(name).suffix.lower())


class UploadTooLarge(Exception):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(
            f"the upload is larger than the limit of {limit} bytes ({limit / 2**20:.1f} MiB); "
            "register a server path for bigger datasets"
        )


def check_declared_length(request: HttpRequest) -> None:
    """Refuse a request whose Content-Length alone shows it is too big (UploadTooLarge),
    before anything reads its body."""
    limit = settings.ROLLYARD_MAX_UPLOAD_BYTES
    try:
        declared = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        declared = 0
    if declared > limit + MULTIPART_OVERHEAD_BYTES:
        raise UploadTooLarge(limit)


class StagedUpload(UploadedFile):
    """The uploaded file as written to the staging folder (`staged_path`)."""

    def __init__(self, staged_path: Path, name: str, content_type: str, size: int):
        self.staged_path = staged_path
        super().__init__(open(staged_path, "rb"), name=name, content_type=content_type, size=size)

    def temporary_file_path(self) -> str:
        return str(self.staged_path)


class CappedUploadHandler(FileUploadHandler):
    """Writes the request's one `file` field to a staging file, counting bytes; past
    `limit` it deletes the partial file, stops reading and sets `too_large`. Other file
    fields are skipped. Install it before anything reads the request's body."""

    def __init__(self, request: HttpRequest, limit: int):
        super().__init__(request)
        self.limit = limit
        self.too_large = False
        self.received = 0
        self.staged_path: Path | None = None
        self._out = None

    def new_file(self, field_name, file_name, content_type, content_length, charset=None, content_type_extra=None):
        if field_name != FILE_FIELD or self.staged_path is not None:
            raise SkipFile()
        super().new_file(field_name, file_name, content_type, content_length, charset, content_type_extra)
        sweep_stale_staging()
        self.staged_path = staging_dir() / f"{uuid.uuid4().hex}.upload"
        self._out = open(self.staged_path, "xb")

    def receive_data_chunk(self, raw_data: bytes, start: int) -> None:
        self.received += len(raw_data)
        if self.received > self.limit:
            self.too_large = True
            self.discard()
            raise StopUpload(connection_reset=True)
        self._out.write(raw_data)
        return None  # consumed: no later handler sees the bytes

    def file_complete(self, file_size: int) -> StagedUpload | None:
        if self._out is None:
            return None
        self._out.close()
        self._out = None
        return StagedUpload(self.staged_path, self.file_name or "", self.content_type or "", file_size)

    def upload_interrupted(self) -> None:
        self.discard()

    def discard(self) -> None:
        """Remove the staging file (idempotent)."""
        if self._out is not None:
            self._out.close()
            self._out = None
        if self.staged_path is not None:
            self.staged_path.unlink(missing_ok=True)


def install_capped_handler(request: HttpRequest) -> CappedUploadHandler:
    """Put the capped handler on a Django request; must run before its body is read."""
    handler = CappedUploadHandler(request, settings.ROLLYARD_MAX_UPLOAD_BYTES)
    request.upload_handlers = [handler]
    return handler
