"""Refusing text no part of the platform can store.

PostgreSQL keeps no NUL character in text or jsonb, so a query parameter or form field
holding one fails at the database as a server error wherever it reaches a query. This
refuses it at the edge, naming the parameter: query strings of every request, and the
form bodies (url-encoded or multipart) of the pages. Left alone: the API's bodies, whose
serializers refuse NUL in text fields (and whose size errors must stay the API's 413),
and the dataset upload page, whose body must reach its size-capped handler first (its
view checks the fields). JSON and YAML documents are checked by the services that take
them (rollyard.params.nul_fields): YAML's "\0" never shows in the raw body.
"""

import json

from django.http import HttpRequest, HttpResponse

from catalog.asgi import UPLOAD_PATHS
from rollyard.params import NUL, NUL_REASON

FORM_CONTENT_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
API_PREFIX = "/api/"


class RefuseNulCharacters:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        params = [request.GET]
        if (
            request.method == "POST"
            and request.content_type in FORM_CONTENT_TYPES
            and not request.path.startswith(API_PREFIX)
            and request.path not in UPLOAD_PATHS
        ):
            params.append(request.POST)  # a body too big raises here as in the view: Django's 400
        bad = sorted({key for query in params for key, values in query.lists() if _has_nul(key, values)})
        if bad:
            return _refusal(request, bad)
        return self.get_response(request)


def _has_nul(key: str, values: list[str]) -> bool:
    return NUL in key or any(NUL in value for value in values)


def _refusal(request: HttpRequest, fields: list[str]) -> HttpResponse:
    message = "; ".join(f"{field}: {NUL_REASON}" for field in fields)
    if request.path.startswith(API_PREFIX):
        body = {"error": {"code": "invalid_request", "message": message, "fields": {field: [NUL_REASON] for field in fields}}}
        return HttpResponse(json.dumps(body), status=400, content_type="application/json")
    return HttpResponse(message, status=400, content_type="text/plain; charset=utf-8")
