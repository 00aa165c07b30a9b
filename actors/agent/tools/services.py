"""Tools served by NATS micro services: any process, in any language, can serve an agent's tools.

The contract a service author follows:

- **A tool service is a NATS micro service** (the ``$SRV`` protocol, as the official clients'
  ``micro``/``services`` APIs implement it), named as the team file's ``[[agents.services]]`` entry.
  **Each endpoint is one tool**, named by the endpoint's name; the model sees
  ``<service>__<endpoint>``, so an endpoint name is 1-64 of ``[A-Za-z0-9_-]`` (and the two together
  at most 64 characters).
- **Endpoint metadata** (string to string): ``description`` is what the model reads (absent: the
  service's own description); ``input_schema`` is the tool input's JSON Schema as JSON text, an
  object schema (absent: ``{"type": "object"}``). An endpoint whose name or ``input_schema`` is
  unusable is left out of the listing with a ``service_endpoint_skipped`` warning; the service's
  other endpoints are still served (a typo in one schema does not take its siblings away).
- **Discovery** is one request on ``$SRV.INFO.<service>``: the first instance to answer is used (every
  instance of a service has the same endpoints). Its answer is an ``io.nats.micro.v1.info_response``.
- **A call** is a request on the endpoint's ``subject`` (any queue group: instances share the load).
  The body is the tool input as a JSON object. The headers say who calls: ``Staffwork-Session``,
  ``Staffwork-Thread``, ``Staffwork-Agent``, ``Staffwork-Tool-Use-Id`` (each present when not empty),
  and the ``traceparent`` of the span in progress.
- **The reply** is JSON ``{"content": <a string, or any JSON, which the model gets encoded>,
  "is_error": <bool, default false>}``: ``is_error`` for a failure the model should read (bad input,
  an unknown account). A micro error reply (the ``Nats-Service-Error`` and ``Nats-Service-Error-Code``
  headers) is an ``is_error`` result quoting the description and code; a reply that is not such JSON
  is an ``is_error`` result saying so with a short preview of what came.

Discovery and each call are bounded by the service's ``timeout_s``. A service that cannot be listed
(nothing answers, no answer in time, an answer that is not an info response) raises
:class:`ToolSourceError`, one line naming the service and the cause. A failing call never raises: it
is an ``is_error`` result naming the service and the tool (not running, no answer in time, garbage).

Listings are cached per NATS server and service name for ``LISTING_TTL`` seconds by a
:class:`ServiceDirectory`: a worker builds an agent's toolbox for every thread, and one round trip per
thread per service is waste when endpoints change only with a deploy; the short TTL means a
redeployed service's new endpoints are seen within half a minute. Callers that wait on a discovery in
flight share its answer, a failure too; otherwise failures are not cached, so a service started after
a failed listing is found on the next try. :func:`service_tools` lists every endpoint; the agent's
allowlist (``ToolService.tools``) is applied by the caller.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from actors.agent.tools.base import RemoteTool, ToolContext, ToolError, ToolSourceError
from bus.connection import Bus
from bus.errors import BusError, BusTimeout, NoResponders
from bus.subjects import Subjects
from schemas.team import ToolService

log = structlog.get_logger("staffwork.tools.services")

INFO_RESPONSE_TYPE = "io.nats.micro.v1.info_response"
#: the micro protocol's error headers (as every official client sets them)
SERVICE_ERROR = "Nats-Service-Error"
SERVICE_ERROR_CODE = "Nats-Service-Error-Code"
#: the headers of a call: who calls
SESSION_HEADER = "Staffwork-Session"
THREAD_HEADER = "Staffwork-Thread"
AGENT_HEADER = "Staffwork-Agent"
TOOL_USE_ID_HEADER = "Staffwork-Tool-Use-Id"
#: how long a listing is reused (seconds)
LISTING_TTL = 30.0
PREVIEW_CHARS = 200
DEFAULT_INPUT_SCHEMA: dict[str, Any] = {"type": "object"}

_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_MAX_TOOL_NAME = 64


# --- the wire: what $SRV.INFO answers and what an endpoint replies (unknown fields are ignored) ----


class _EndpointInfo(msgspec.Struct):
    name: str
    subject: str
    queue_group: str | None = None
    metadata: dict[str, Any] | None = None


class _ServiceInfo(msgspec.Struct):
    type: str = INFO_RESPONSE_TYPE
    name: str = ""
    description: str | None = None
    endpoints: list[_EndpointInfo] | None = None


class _Reply(msgspec.Struct):
    content: Any
    is_error: bool = False


_info_decoder = msgspec.json.Decoder(_ServiceInfo)
_reply_decoder = msgspec.json.Decoder(_Reply)
_schema_decoder = msgspec.json.Decoder(dict[str, Any])


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of a tool service, as discovered: a tool's name, description, schema, subject."""

    name: str
    subject: str
    description: str
    input_schema: dict[str, Any]


@dataclass(frozen=True)
class _Listing:
    endpoints: tuple[Endpoint, ...]
    expires: float


class ServiceDirectory:
    """Listings of tool services, each reused for ``ttl`` seconds (per NATS server and service name).

    One discovery per service is in flight at a time: callers that wait for it share its answer, a
    failure included (threads starting together against a hung service wait one timeout, not one each);
    a caller that comes after a failure asks again."""

    def __init__(self, ttl: float = LISTING_TTL) -> None:
        self.ttl = ttl
        self._listings: dict[tuple[str, str], _Listing] = {}
        self._failures: dict[tuple[str, str], tuple[float, str]] = {}  # when, what
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def tools(self, bus: Bus, service: ToolService) -> list[RemoteTool]:
        """Every endpoint of ``service`` as a tool; :class:`ToolSourceError` if it cannot be listed."""
        return [_tool(service, endpoint) for endpoint in await self.endpoints(bus, service)]

    async def endpoints(self, bus: Bus, service: ToolService) -> tuple[Endpoint, ...]:
        key = (bus.url, service.name)
        asked = time.monotonic()
        async with self._locks.setdefault(key, asyncio.Lock()):
            listing = self._listings.get(key)
            if listing is not None and listing.expires > time.monotonic():
                return listing.endpoints
            failure = self._failures.get(key)
            if failure is not None and failure[0] >= asked:  # it failed while this caller waited
                raise ToolSourceError(failure[1])
            try:
                endpoints = await discover(bus, service)
            except ToolSourceError as exc:
                self._failures[key] = (time.monotonic(), str(exc))
                raise
            self._failures.pop(key, None)
            self._listings[key] = _Listing(endpoints, time.monotonic() + self.ttl)
            return endpoints


#: the worker's directory (what :func:`service_tools` uses)
directory = ServiceDirectory()


async def service_tools(bus: Bus, service: ToolService) -> list[RemoteTool]:
    """Every endpoint of the NATS micro service ``service`` as a :class:`RemoteTool` (not filtered by
    its allowlist), from a listing at most ``LISTING_TTL`` seconds old. :class:`ToolSourceError` when
    the service cannot be listed: nothing runs it, it does not answer in time, or answers garbage."""
    return await directory.tools(bus, service)


async def discover(bus: Bus, service: ToolService) -> tuple[Endpoint, ...]:
    """Ask ``$SRV.INFO.<name>`` (bounded by ``service.timeout_s``) and read the endpoints it lists."""
    name = service.name
    subject = Subjects.service_info(name)
    try:
        data, _ = await bus.request_raw(subject, b"", timeout=service.timeout_s)
    except NoResponders as exc:
        raise ToolSourceError(f"no NATS service {name!r} is running: nothing answers {subject}") from exc
    except BusTimeout as exc:
        raise ToolSourceError(
            f"NATS service {name!r} did not answer {subject} within {service.timeout_s:g}s"
        ) from exc
    except BusError as exc:
        raise ToolSourceError(f"cannot list the tools of NATS service {name!r}: {exc}") from exc
    try:
        info = _info_decoder.decode(data)
    except msgspec.DecodeError as exc:
        raise ToolSourceError(
            f"NATS service {name!r} answered {subject} with something that is not a micro info response "
            f"({exc}): {_preview(data)}"
        ) from exc
    if info.type != INFO_RESPONSE_TYPE or info.endpoints is None:
        why = f"type {info.type!r}" if info.type != INFO_RESPONSE_TYPE else "no endpoints field"
        raise ToolSourceError(
            f"NATS service {name!r} answered {subject} with something that is not a micro info response "
            f"({why}): {_preview(data)}"
        )
    endpoints: list[Endpoint] = []
    for info_endpoint in info.endpoints:
        try:
            endpoints.append(_endpoint(name, info.description or "", info_endpoint))
        except ValueError as exc:
            log.warning(
                "service_endpoint_skipped", service=name, endpoint=info_endpoint.name, reason=str(exc)
            )
    return tuple(endpoints)


def _endpoint(service: str, service_description: str, info: _EndpointInfo) -> Endpoint:
    """The tool an endpoint is; ``ValueError`` (saying why) when it cannot be one."""
    if not _TOOL_NAME.match(info.name):
        raise ValueError(f"endpoint name {info.name!r} is not a tool name (1-64 of A-Z a-z 0-9 _ -)")
    if len(f"{service}__{info.name}") > _MAX_TOOL_NAME:
        raise ValueError(f"tool name {service}__{info.name} is over {_MAX_TOOL_NAME} characters")
    metadata = info.metadata or {}
    schema = _input_schema(metadata.get("input_schema"))
    description = metadata.get("description")
    if not isinstance(description, str) or not description:
        description = service_description or f"{info.name} (an endpoint of {service})"
    return Endpoint(name=info.name, subject=info.subject, description=description, input_schema=schema)


def _input_schema(value: Any) -> dict[str, Any]:
    """The ``input_schema`` metadata (JSON text; an object is taken as it is) as a schema."""
    if value is None:
        return dict(DEFAULT_INPUT_SCHEMA)
    if isinstance(value, str):
        try:
            value = _schema_decoder.decode(value)
        except msgspec.DecodeError as exc:
            raise ValueError(f"input_schema is not a JSON object: {exc}: {value[:PREVIEW_CHARS]!r}") from exc
    if not isinstance(value, dict):
        raise ValueError(f"input_schema is not a JSON object: {value!r:.{PREVIEW_CHARS}}")
    if value.get("type") != "object":
        raise ValueError(f"input_schema must have type 'object', not {value.get('type')!r}")
    return value


def _tool(service: ToolService, endpoint: Endpoint) -> RemoteTool:
    return RemoteTool(
        kind="service",
        source=service.name,
        remote_name=endpoint.name,
        description=endpoint.description,
        input_schema=endpoint.input_schema,
        timeout_s=service.timeout_s,
        call=_Call(service.name, endpoint, service.timeout_s),
    )


@dataclass(frozen=True)
class _Call:
    """One call of an endpoint: a request on its subject over the calling thread's bus."""

    service: str
    endpoint: Endpoint
    timeout_s: float

    async def __call__(self, ctx: ToolContext, arguments: dict[str, Any]) -> tuple[str, bool]:
        subject = self.endpoint.subject
        who = {
            SESSION_HEADER: ctx.session_id,
            THREAD_HEADER: ctx.thread_id,
            AGENT_HEADER: ctx.agent,
            TOOL_USE_ID_HEADER: ctx.tool_use_id,
        }
        headers = ctx.bus.headers(None, {key: value for key, value in who.items() if value})
        try:
            data, reply_headers = await ctx.bus.request_raw(
                subject, msgspec.json.encode(arguments), timeout=self.timeout_s, headers=headers
            )
        except NoResponders as exc:
            raise ToolError(f"the service is not running (nothing answers requests on {subject!r})") from exc
        except BusTimeout as exc:  # said as RemoteTool.run says its own deadline's expiry
            raise TimeoutError(str(exc)) from exc
        return self.result(data, reply_headers)

    def result(self, data: bytes, headers: dict[str, str]) -> tuple[str, bool]:
        """The output text and ``is_error`` of a reply."""
        what = f"tool service {self.service!r}: tool {self.endpoint.name!r}"
        if (error := headers.get(SERVICE_ERROR)) is not None:
            code = headers.get(SERVICE_ERROR_CODE, "")
            text = f"{what} failed: {error or 'no description'}" + (f" (code {code})" if code else "")
            return text + (f": {_preview(data)}" if data else ""), True
        try:
            reply = _reply_decoder.decode(data)
        except msgspec.DecodeError:
            return (
                f'{what} answered with something that is not {{"content": ..., "is_error": ...}} JSON '
                f"({len(data)} bytes): {_preview(data)}",
                True,
            )
        content = (
            reply.content if isinstance(reply.content, str) else msgspec.json.encode(reply.content).decode()
        )
        return content, reply.is_error


def _preview(data: bytes) -> str:
    text = data[:PREVIEW_CHARS].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(data) > PREVIEW_CHARS else "")
