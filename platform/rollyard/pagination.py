"""Pagination: `?limit=&offset=` for every REST list endpoint, and keyset pages for the
runs list page (newest first, "newer" / "older" by a cursor)."""

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from django.db.models import Q, QuerySet
from rest_framework import pagination

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
BIGINT_MAX = 2**63 - 1  # the id column's range: a larger id would be a database error
# At most 19 digits each: bounded work, and every datetime fits (year 9999 is 2.5e17 µs).
CURSOR_SHAPE = re.compile(r"(?P<micros>-?[0-9]{1,19})_(?P<id>[0-9]{1,19})")


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """`?limit=&offset=` (limit defaults to PAGE_SIZE); the body is
    {"count", "next", "previous", "results"}. A limit above `max_limit` is cut to it, so
    no request can ask the database for an unbounded page."""

    max_limit = 500


class BadCursor(ValueError):
    """A cursor this list did not make (garbled, forged out of range): the field and why."""

    def __init__(self, field: str, reason: str):
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class Cursor:
    """A row's place in a list ordered by (created_at, id): `<µs since 1970 UTC>_<id>`.
    It holds no secret, so it needs no signature: a made-up one only starts the list at
    another place, and the queryset still holds only what the user may see."""

    created_at: datetime
    id: int

    def __str__(self) -> str:
        return f"{(self.created_at - EPOCH) // timedelta(microseconds=1)}_{self.id}"

    @classmethod
    def of(cls, row: Any) -> "Cursor":
        return cls(row.created_at, row.pk)

    @classmethod
    def parse(cls, field: str, text: str) -> "Cursor":
        shape = CURSOR_SHAPE.fullmatch(text)
        if shape is None:
            raise BadCursor(field, f"'{text[:40]}' is not a cursor of this list: follow its newer / older links")
        micros, row_id = int(shape["micros"]), int(shape["id"])
        if row_id > BIGINT_MAX:
            raise BadCursor(field, f"the cursor's id {row_id} is out of range")
        try:
            created_at = EPOCH + timedelta(microseconds=micros)
        except OverflowError:
            raise BadCursor(field, f"the cursor's time {micros} is out of range") from None
        return cls(created_at, row_id)


@dataclass
class KeysetPage:
    """The rows of one page, newest first, and the cursors of the pages either side
    (None: there is none)."""

    rows: list[Any]
    newer: Cursor | None
    older: Cursor | None


def keyset_page(rows: QuerySet, size: int, before: str | None = None, after: str | None = None) -> KeysetPage:
    """One page of `rows` newest first by (created_at, id): the first page, the `size`
    rows just older than the cursor `before`, or those just newer than `after`.

    Unlike an offset, a cursor costs the same on any page (the index is entered at the
    cursor, given one on (…, created_at, id)) and pages do not shift when runs arrive:
    the older pages of what one saw stay as they were. No count: counting every row a
    user may see is the price of a page number, and this list has none. Raises BadCursor
    for a cursor it did not make, or for both cursors at once."""
    if before and after:
        raise BadCursor("after", "give one of before and after, not both")
    if after:
        cursor = Cursor.parse("after", after)
        # created_at >= t as the index's range, the ties on t cut by id.
        newer = rows.filter(created_at__gte=cursor.created_at).exclude(created_at=cursor.created_at, id__lte=cursor.id)
        found = list(newer.order_by("created_at", "id")[: size + 1])
        if len(found) > size:
            return KeysetPage(found[size - 1 :: -1], Cursor.of(found[size - 1]), Cursor.of(found[0]))
        # Fewer than a page newer than the cursor: that is the first page's part, so show the first page.
    elif before:
        cursor = Cursor.parse("before", before)
        rows = rows.filter(created_at__lte=cursor.created_at).exclude(created_at=cursor.created_at, id__gte=cursor.id)
    found = list(rows.order_by("-created_at", "-id")[: size + 1])
    newer = Cursor.of(found[0]) if before and found else None
    older = Cursor.of(found[size - 1]) if len(found) > size else None
    return KeysetPage(found[:size], newer, older)
