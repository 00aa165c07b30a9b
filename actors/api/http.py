"""The HTTP layer: one wrapper for every endpoint (the key, the request id, the error envelope),
request bodies decoded by msgspec into typed structs, responses encoded by msgspec, and the SDK's
cursor pages.

An endpoint is ``async def handler(call: Call) -> object``: what it returns is encoded as JSON (a
:class:`starlette.responses.Response` is sent as it is, for streams); an :class:`ApiError` it raises
becomes the envelope the SDK turns into its exception class.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import msgspec
import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.api.auth import ApiKeys, request_key
from actors.api.errors import ApiError, bad_request
from actors.api.records import Records
from bus.connection import Bus
from bus.errors import BusError
from schemas.ids import new_id

log = structlog.get_logger("staffwork.api")
T = TypeVar("T")

MAX_BODY = 8 * 1024 * 1024
DEFAULT_LIMIT = 20


@dataclass(frozen=True)
class ApiState:
    """What every request of one server shares."""

    bus: Bus
    keys: ApiKeys
    records: Records


@dataclass(frozen=True)
class Call:
    """One authenticated request: its workspace, the shared state and the request itself."""

    request: Request
    state: ApiState
    workspace: str
    request_id: str

    @property
    def bus(self) -> Bus:
        return self.state.bus

    @property
    def records(self) -> Records:
        return self.state.records

    def path(self, name: str) -> str:
        return str(self.request.path_params[name])

    async def body(self, type: type[T]) -> T:
        """The JSON body as ``type``; a 400 naming the offending field otherwise."""
        raw = await self.request.body()
        if len(raw) > MAX_BODY:
            raise ApiError(413, f"the body is {len(raw):,} bytes, over the {MAX_BODY:,} allowed")
        try:
            return msgspec.json.decode(raw or b"{}", type=type)
        except msgspec.ValidationError as exc:
            raise bad_request(f"invalid body: {exc}") from None
        except msgspec.DecodeError as exc:
            raise bad_request(f"the body is not valid JSON: {exc}") from None

    def query(self, name: str, default: str = "") -> str:
        return self.request.query_params.get(name, default)

    def query_list(self, name: str) -> list[str]:
        """A list parameter, in the SDK's bracket form (``types[]=a&types[]=b``) or repeated."""
        params = self.request.query_params
        return [*params.getlist(f"{name}[]"), *params.getlist(name)]

    def query_time(self, name: str) -> datetime | None:
        """A time parameter (``created_at[gte]=...``, RFC 3339; UTC when it names no zone), or None."""
        raw = self.query(name)
        if not raw:
            return None
        try:
            when = datetime.fromisoformat(raw.replace("Z", "+00:00"))
        except ValueError:
            raise bad_request(f"query parameter {name}={raw!r} is not an RFC 3339 time") from None
        return when if when.tzinfo else when.replace(tzinfo=UTC)

    def query_bool(self, name: str) -> bool:
        value = self.query(name, "false").lower()
        if value not in ("true", "false", "1", "0"):
            raise bad_request(f"query parameter {name}={value!r} is not a boolean")
        return value in ("true", "1")


def page(call: Call, items: Sequence[Any], *, max_limit: int = 100) -> dict[str, Any]:
    """One page of ``items`` (already in the list's order) as the SDK's ``PageCursor`` reads it:
    ``limit`` (1..``max_limit``, default 20) and an opaque ``page`` cursor from ``next_page``."""
    try:
        limit = int(call.query("limit", str(DEFAULT_LIMIT)))
    except ValueError:
        raise bad_request(f"query parameter limit={call.query('limit')!r} is not an integer") from None
    if not 1 <= limit <= max_limit:
        raise bad_request(f"query parameter limit={limit} is out of range (1 to {max_limit})")
    start = _offset(call.query("page"))
    chunk = list(items[start : start + limit])
    more = start + limit < len(items)
    return {"data": chunk, "next_page": _cursor(start + limit) if more else None}


def _cursor(offset: int) -> str:
    return "page_" + base64.urlsafe_b64encode(str(offset).encode()).decode().rstrip("=")


def _offset(cursor: str) -> int:
    if not cursor:
        return 0
    try:
        body = cursor.removeprefix("page_")
        return max(0, int(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode()))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad_request(f"query parameter page={cursor!r} is not a cursor this API returned") from None


Handler = Callable[[Call], Awaitable[object]]


def endpoint(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap ``handler``: check the key, give the request an id, encode the answer or the error."""

    async def run(request: Request) -> Response:
        request_id = new_id("req")
        state: ApiState = request.app.state.api
        try:
            workspace = state.keys.workspace(request_key(dict(request.headers)))
            if workspace is None:
                raise ApiError(401, "invalid x-api-key (or Authorization: Bearer) for this server")
            answer = await handler(Call(request, state, workspace, request_id))
        except ApiError as exc:
            return _error(exc, request_id)
        except BusError as exc:  # the bus is down or refused: the caller may retry
            log.warning("api_bus_error", path=request.url.path, error=str(exc), request_id=request_id)
            return _error(ApiError(503, f"the bus could not answer: {exc}"), request_id)
        if isinstance(answer, Response):
            answer.headers["request-id"] = request_id
            return answer
        return Response(
            msgspec.json.encode(answer), media_type="application/json", headers={"request-id": request_id}
        )

    return run


def _error(exc: ApiError, request_id: str) -> Response:
    return Response(
        msgspec.json.encode(exc.envelope(request_id)),
        status_code=exc.status,
        media_type="application/json",
        headers=exc.headers(request_id),
    )


def route(path: str, handler: Handler, method: str = "GET") -> Route:
    return Route(path, endpoint(handler), methods=[method])
