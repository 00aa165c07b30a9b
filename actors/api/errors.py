"""Errors as the ``anthropic`` SDK parses them: ``{"type": "error", "error": {"type", "message",
"details"}, "request_id"}``, with the HTTP status the SDK maps to its exception classes.

A 409 carries ``x-should-retry: false``: the SDK would otherwise retry a conflict (a precondition
that failed, a path that exists) twice before giving up.
"""

from __future__ import annotations

from typing import Any

#: the SDK's error ``type`` for each status this API answers with
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    409: "conflict_error",
    413: "request_too_large",
    500: "api_error",
    503: "overloaded_error",
}


class ApiError(Exception):
    """A request that fails with ``status``: one line in ``message`` that names the offending value."""

    def __init__(
        self, status: int, message: str, *, type: str | None = None, error_code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ERROR_TYPES.get(status, "api_error")
        self.error_code = error_code

    def envelope(self, request_id: str) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.type, "message": self.message}
        if self.error_code:
            error["details"] = {"error_code": self.error_code}
        return {"type": "error", "error": error, "request_id": request_id}

    def headers(self, request_id: str) -> dict[str, str]:
        headers = {"request-id": request_id}
        if self.status == 409:
            headers["x-should-retry"] = "false"
        return headers


def not_found(kind: str, id: str) -> ApiError:
    return ApiError(404, f"{kind} {id!r} not found")


def bad_request(message: str) -> ApiError:
    return ApiError(400, message)
