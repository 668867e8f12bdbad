"""One error body for the whole REST API:

    {"error": {"code": "invalid_spec", "message": "...", "fields": {"rollout.n": ["..."]}}}

Domain errors from services are mapped here, so views stay thin: SpecError → 400
(fields are paths inside the run spec), IllegalTransition, LastAdminError and PoolInUse
→ 409, RunPermissionDenied and accounts.permissions.PermissionDenied → 403 (with the
message that names the role needed), a body over Django's upload limit → 413. Every status (400, 401,
403, 404, 405, 409, 413, 415, 429) carries the same body.
"""

from typing import Any

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.core.exceptions import RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from accounts.services import LastAdminError
from engine.spec import SpecError
from quotas.services import PoolInUse, RequestRefused
from runs.lifecycle import IllegalTransition, RunPermissionDenied


class InvalidSpec(exceptions.APIException):
    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_spec"

    def __init__(self, error: SpecError):
        self.problems = error.problems
        super().__init__(str(error))


class CannotFit(InvalidSpec):
    """A launch its pool or quotas can never admit; fields name the limits at fault."""

    default_code = "cannot_fit"


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_code = "invalid_state"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    # Django's own 404/403 become DRF's, so they carry a code like every other error.
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, SpecError):
        exc = InvalidSpec(exc)
    elif isinstance(exc, RequestRefused):
        exc = CannotFit(exc)
    elif isinstance(exc, IllegalTransition | LastAdminError | PoolInUse):
        exc = Conflict(str(exc))
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge(f"request body too large: {exc}")
    elif isinstance(exc, RunPermissionDenied):
        exc = exceptions.PermissionDenied(str(exc))

    response = exception_handler(exc, context)  # sets status, WWW-Authenticate, Retry-After
    if response is None:
        return None  # not an API error: Django's 500 handling applies
    fields: dict[str, list[str]] = {}
    if isinstance(exc, InvalidSpec):
        for field, reason in exc.problems:
            fields.setdefault(field, []).append(reason)
        message = str(exc.detail)
    elif isinstance(exc, exceptions.ValidationError):
        _flatten(exc.detail, "", fields)
        message = "invalid request: " + "; ".join(f"{field}: {' '.join(reasons)}" for field, reasons in fields.items())
    else:
        message = str(getattr(exc, "detail", exc))
    code = getattr(exc, "default_code", "error")
    response.data = {"error": {"code": code, "message": message, "fields": fields}}
    return response


def _flatten(detail: Any, prefix: str, into: dict[str, list[str]]) -> None:
    """DRF's nested error detail → {"dotted.path": [messages]}."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            _flatten(value, f"{prefix}.{key}" if prefix else str(key), into)
    elif isinstance(detail, list) and detail and all(not isinstance(item, dict | list) for item in detail):
        into.setdefault(prefix or "non_field_errors", []).extend(str(item) for item in detail)
    elif isinstance(detail, list):
        for index, item in enumerate(detail):
            _flatten(item, f"{prefix}.{index}" if prefix else str(index), into)
    else:
        into.setdefault(prefix or "non_field_errors", []).append(str(detail))
