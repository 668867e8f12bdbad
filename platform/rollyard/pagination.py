"""The one pagination scheme of every list endpoint."""

from rest_framework import pagination


class LimitOffsetPagination(pagination.LimitOffsetPagination):
    """`?limit=&offset=` (limit defaults to PAGE_SIZE); the body is
    {"count", "next", "previous", "results"}. A limit above `max_limit` is cut to it, so
    no request can ask the database for an unbounded page."""

    max_limit = 500
