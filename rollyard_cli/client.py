"""A thin client of Rollyard's REST API that turns error bodies into ApiError."""

from typing import Any

import httpx


class ApiError(Exception):
    """The API refused a request (or could not be reached). `exit_code` is what the CLI
    exits with; `fields` lists problems by field, as the API's error body does."""

    def __init__(self, message: str, exit_code: int, status: int | None = None, fields: dict | None = None):
        super().__init__(message)
        self.exit_code = exit_code
        self.status = status
        self.fields = fields or {}


# Exit codes by HTTP status: scripts can tell "log in" from "no such run" from "bad spec".
EXIT_CODES = {401: 3, 403: 4, 404: 5, 400: 6, 409: 7}
EXIT_UNREACHABLE = 8
EXIT_OTHER = 1


class Client:
    def __init__(self, url: str, token: str | None, timeout: float = 30.0):
        headers = {"Authorization": f"Token {token}"} if token else {}
        self.base_url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def get(self, path: str, **params: Any) -> Any:
        return self._request("GET", path, params=params)

    def post(self, path: str, body: Any = None) -> Any:
        return self._request("POST", path, json=body)

    def delete(self, path: str) -> Any:
        return self._request("DELETE", path)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise ApiError(f"cannot reach Rollyard at {self.base_url}: {exc}", EXIT_UNREACHABLE) from None
        if response.is_success:
            return response.json() if response.content else None
        raise _api_error(response)


def _api_error(response: httpx.Response) -> ApiError:
    try:
        error = response.json()["error"]
        message, fields = error["message"], error.get("fields") or {}
    except (ValueError, KeyError, TypeError):
        message, fields = response.text[:500] or response.reason_phrase, {}
    if response.status_code == 401:
        message += " (pass --token or set ROLLYARD_TOKEN to an API token's secret)"
    exit_code = EXIT_CODES.get(response.status_code, EXIT_OTHER)
    return ApiError(f"{response.status_code}: {message}", exit_code, response.status_code, fields)
