"""Optional OTLP export: trace events as OpenTelemetry spans, POSTed to a receiver as OTLP/HTTP JSON.

The collector hands each newly stored event to :meth:`OtlpExporter.add`. One trace per session, with
spans named and attributed after the OpenTelemetry GenAI semantic conventions::

    invoke_agent <agent>      a run of a thread: session.thread_created/_status_running .. _status_idle
    ├── chat <model>          a model call: span.model_request_start .. span.model_request_end
    └── execute_tool <name>   a tool call: agent.tool_use .. agent.tool_result (by tool_use_id)

The lead's run goes from session.status_running to session.status_idle. A run is one handler
invocation: a run that never finished (its handler failed and was retried) ends, with an error
status, when its thread's next run starts.

Ids are derived, never random, so a redelivered event, or another collector run, exports the same
ids: the trace id from the session id; an agent span's id is the span id its events carry (the
handler's span, whose parent is the delegating lead's); a chat span's from its end event, a tool
span's from its tool_use_id. The lead's parent (the client's submit span) is not exported, so the
lead's span is the trace's root. Events may arrive in any order: an end seen without its start takes
the start it can infer (the model call's duration; the earliest event of the run).

Prompts, completions, tool inputs and outputs are not exported (the GenAI conventions make content
opt-in); error messages are redacted. Export never slows or stops the collector: ``add`` only updates
bounded state (an LRU of sessions) and a bounded queue, and a background task posts batches to
``<url>/v1/traces``. While the receiver is down it retries with backoff, logging once per failure
streak; spans beyond the queue are dropped and counted (``dropped``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, TypeVar

import httpx2
import msgspec
import structlog

from actors.redaction import redact
from schemas.trace import (
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    ModelRequestEnd,
    ModelRequestStart,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadStatusIdle,
    ThreadStatusRunning,
    ThreadStatusTerminated,
    event_kind,
)

__all__ = ["OtlpExporter", "SpanBuilder", "trace_id", "traces_url"]

log = structlog.get_logger("staffwork.otlp")

#: One span in the OTLP/JSON encoding, ready to send.
Span = dict[str, Any]
AttributeValue = str | int | float | bool | list[str]
V = TypeVar("V")

SCOPE = "staffwork"
PROVIDER = "anthropic"
TRACES_PATH = "/v1/traces"
_INTERNAL, _CLIENT = 1, 3  # SpanKind
_ERROR = 2  # StatusCode
_RETRYABLE = frozenset({429, 502, 503, 504})  # the OTLP/HTTP spec's retryable statuses
_MAX_BACKOFF = 30.0
_MAX_PENDING = 4096  # per session: runs, unmatched tool calls, runs with unmatched model calls
_MAX_STARTS = 64  # per run: model calls started and not yet ended
_HEX16 = re.compile(r"^[0-9a-f]{16}$")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def traces_url(url: str) -> str:
    """The receiver's traces endpoint: ``url`` itself if it ends with ``/v1/traces``, else appended."""
    url = url.rstrip("/")
    return url if url.endswith(TRACES_PATH) else url + TRACES_PATH


def trace_id(session_id: str) -> str:
    """A session's trace id: the first 16 bytes of sha256(session id), in hex."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:32]


def _derived_id(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:16]


def _nanos(time: datetime) -> int:
    if time.tzinfo is None:
        time = time.replace(tzinfo=UTC)
    return (time - _EPOCH) // timedelta(microseconds=1) * 1000


def _value(value: AttributeValue) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}  # int64 is a string in the JSON mapping
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, str):
        return {"stringValue": value}
    return {"arrayValue": {"values": [_value(item) for item in value]}}


def _attributes(values: dict[str, AttributeValue]) -> list[dict[str, Any]]:
    return [{"key": key, "value": _value(value)} for key, value in values.items()]


def _put(mapping: OrderedDict[str, V], key: str, value: V, limit: int) -> None:
    """Set ``key`` as the most recent entry; forget the oldest beyond ``limit``."""
    mapping[key] = value
    mapping.move_to_end(key)
    while len(mapping) > limit:
        mapping.popitem(last=False)


@dataclass
class _Run:
    """One run of a thread (one handler invocation): its ``invoke_agent`` span, once it ends."""

    span_id: str
    parent_span_id: str
    thread_id: str
    agent: str
    first_seen: int
    last_seen: int
    start: int | None = None
    lead: bool = False
    ended: bool = False


@dataclass
class _Session:
    session_id: str
    trace_id: str
    runs: OrderedDict[str, _Run] = field(default_factory=OrderedDict)
    model_starts: OrderedDict[str, list[tuple[int, str]]] = field(default_factory=OrderedDict)
    tool_calls: OrderedDict[str, AgentToolUse | AgentToolResult] = field(default_factory=OrderedDict)


class SpanBuilder:
    """Turns trace events into finished spans (no I/O). Its state is bounded: an LRU of sessions."""

    def __init__(self, *, max_sessions: int = 1024) -> None:
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, _Session] = OrderedDict()

    def add(self, event: AnyTraceEvent) -> list[Span]:
        """The spans ``event`` finishes (usually none)."""
        if not event.session_id or not event.thread_id:
            return []
        session = self._session(event.session_id)
        time = _nanos(event.time)
        run = self._run(session, event, time)
        match event:
            case SessionStatusRunning() | ThreadCreated() | ThreadStatusRunning():
                run.start = time if run.start is None else min(run.start, time)
                run.lead = run.lead or isinstance(event, SessionStatusRunning)
                return self._supersede(session, run)
            case SessionStatusIdle() | ThreadStatusIdle():
                run.lead = run.lead or isinstance(event, SessionStatusIdle)
                return self._end(session, run, time, stop_reason=event.stop_reason)
            case SessionStatusTerminated() | ThreadStatusTerminated():
                run.lead = run.lead or isinstance(event, SessionStatusTerminated)
                return self._end(session, run, time, stop_reason=event.reason or "terminated")
            case ModelRequestStart():
                starts = session.model_starts.get(run.span_id) or []
                starts.append((time, event.model))
                del starts[:-_MAX_STARTS]
                _put(session.model_starts, run.span_id, starts, _MAX_PENDING)
            case ModelRequestEnd():
                return [self._chat(session, run, event, time)]
            case AgentToolUse() | AgentToolResult():
                other = session.tool_calls.pop(event.tool_use_id, None)
                if isinstance(event, AgentToolUse) and isinstance(other, AgentToolResult):
                    return [self._tool(session, event, other)]
                if isinstance(event, AgentToolResult) and isinstance(other, AgentToolUse):
                    return [self._tool(session, other, event)]
                _put(session.tool_calls, event.tool_use_id, event, _MAX_PENDING)
        return []

    def _session(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is None:
            session = _Session(session_id=session_id, trace_id=trace_id(session_id))
        _put(self._sessions, session_id, session, self.max_sessions)
        return session

    def _run(self, session: _Session, event: AnyTraceEvent, time: int) -> _Run:
        span_id = _run_id(session, event)
        run = session.runs.get(span_id)
        if run is None:
            parent = event.parent_span_id if _HEX16.match(event.parent_span_id) else ""
            run = _Run(span_id, parent, event.thread_id, event.agent, first_seen=time, last_seen=time)
            _put(session.runs, span_id, run, _MAX_PENDING)
        run.first_seen = min(run.first_seen, time)
        run.last_seen = max(run.last_seen, time)
        return run

    def _supersede(self, session: _Session, started: _Run) -> list[Span]:
        """End the thread's earlier runs that never finished (their handler failed and was retried)."""
        assert started.start is not None
        stale = [
            run
            for run in session.runs.values()
            if run is not started
            and run.thread_id == started.thread_id
            and not run.ended
            and run.last_seen <= started.start
        ]
        error = "the run did not finish (its thread started again)"
        return [span for run in stale for span in self._end(session, run, run.last_seen, error=error)]

    def _end(
        self, session: _Session, run: _Run, end: int, *, stop_reason: str = "", error: str | None = None
    ) -> list[Span]:
        if run.ended:
            return []  # a second end (a duplicate): the span is out already
        run.ended = True
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.agent.name": run.agent,
            "gen_ai.conversation.id": session.session_id,
            "staffwork.thread_id": run.thread_id,
        }
        if stop_reason:
            attributes["staffwork.stop_reason"] = stop_reason
        if error is not None:
            attributes["error.type"] = "incomplete"
        return [
            _span(
                session,
                span_id=run.span_id,
                parent="" if run.lead else run.parent_span_id,
                name=f"invoke_agent {run.agent}",
                kind=_INTERNAL,
                start=run.first_seen if run.start is None else run.start,
                end=end,
                attributes=attributes,
                error=error,
            )
        ]

    def _chat(self, session: _Session, run: _Run, event: ModelRequestEnd, end: int) -> Span:
        # A run's model calls are sequential: its call is the latest one started before this end.
        starts = session.model_starts.get(run.span_id) or []
        before = [started for started in starts if started[0] <= end]
        request_model = ""
        if before:
            latest = max(before)
            starts.remove(latest)
            start, request_model = latest
        else:  # its start was not seen (an earlier collector run had it, or it comes later)
            start = end - int(event.duration_ms * 1_000_000)
        usage = event.usage
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": request_model,
            "gen_ai.response.model": event.model,
            "gen_ai.conversation.id": session.session_id,
            "gen_ai.agent.name": event.agent,
            "staffwork.thread_id": event.thread_id,
            # Anthropic's input_tokens leaves out cached tokens; the conventions' count includes them.
            "gen_ai.usage.input_tokens": usage.input_tokens
            + usage.cache_read_input_tokens
            + usage.cache_creation_input_tokens,
            "gen_ai.usage.output_tokens": usage.output_tokens,
            "gen_ai.usage.cache_read.input_tokens": usage.cache_read_input_tokens,
            "gen_ai.usage.cache_creation.input_tokens": usage.cache_creation_input_tokens,
            "staffwork.cost_usd": float(usage.cost_usd),
        }
        if not request_model:
            del attributes["gen_ai.request.model"]
        if event.stop_reason:
            attributes["gen_ai.response.finish_reasons"] = [event.stop_reason]
        error = None
        if event.error is not None:
            attributes["error.type"] = event.error.kind
            error = redact(f"{event.error.kind}: {event.error.message}")
        return _span(
            session,
            span_id=_derived_id(session.session_id, event.thread_id, "chat", event.msg_id),
            parent=run.span_id,
            name=f"chat {request_model or event.model}",
            kind=_CLIENT,
            start=start,
            end=end,
            attributes=attributes,
            error=error,
        )

    def _tool(self, session: _Session, use: AgentToolUse, result: AgentToolResult) -> Span:
        attributes: dict[str, AttributeValue] = {
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": use.name,
            "gen_ai.tool.call.id": use.tool_use_id,
            "gen_ai.tool.type": "function",
            "gen_ai.conversation.id": session.session_id,
            "gen_ai.agent.name": use.agent,
            "staffwork.thread_id": use.thread_id,
        }
        if result.is_error:
            attributes["error.type"] = "tool_error"
        return _span(
            session,
            span_id=_derived_id(session.session_id, use.thread_id, "tool", use.tool_use_id),
            parent=_run_id(session, use),
            name=f"execute_tool {use.name}",
            kind=_INTERNAL,
            start=_nanos(use.time),
            end=_nanos(result.time),
            attributes=attributes,
            error=f"the tool {use.name!r} returned an error" if result.is_error else None,
        )


def _run_id(session: _Session, event: AnyTraceEvent) -> str:
    """The span id of the run that emitted ``event``: the span its events carry (or one per thread)."""
    if _HEX16.match(event.span_id):
        return event.span_id
    return _derived_id(session.session_id, event.thread_id, "thread")


def _span(
    session: _Session,
    *,
    span_id: str,
    parent: str,
    name: str,
    kind: int,
    start: int,
    end: int,
    attributes: dict[str, AttributeValue],
    error: str | None,
) -> Span:
    span: Span = {"traceId": session.trace_id, "spanId": span_id}
    if parent:
        span["parentSpanId"] = parent
    span |= {
        "name": name,
        "kind": kind,
        "startTimeUnixNano": str(start),
        "endTimeUnixNano": str(max(start, end)),
        "attributes": _attributes(attributes),
    }
    if error is not None:
        span["status"] = {"code": _ERROR, "message": error}
    return span


class OtlpExporter:
    """Exports spans built from trace events to an OTLP/HTTP receiver, in the background.

    ``add`` never blocks and never raises. ``exported`` and ``dropped`` count spans.
    """

    def __init__(
        self,
        url: str,
        *,
        service_name: str = "staffwork",
        batch_size: int = 512,
        interval: float = 1.0,
        timeout: float = 10.0,
        max_queue: int = 8192,
        max_sessions: int = 1024,
    ) -> None:
        self.url = traces_url(url)
        scheme = httpx2.URL(self.url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"an OTLP/HTTP endpoint is an http(s) URL, not {url!r}")
        self.service_name = service_name
        self.batch_size = max(1, batch_size)
        self.interval = interval
        self.timeout = timeout
        self.max_queue = max(self.batch_size, max_queue)
        self.exported = 0
        self.dropped = 0
        self._builder = SpanBuilder(max_sessions=max_sessions)
        self._resource = {"attributes": _attributes({"service.name": service_name})}
        self._queue: deque[Span] = deque()
        self._wake = asyncio.Event()
        self._client: httpx2.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._failures = 0  # consecutive failed posts
        self._overflowing = False
        self._closed = False

    async def start(self) -> None:
        """Start the background flushes (every ``interval``, or as soon as a batch is full)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="otlp-exporter")

    def add(self, event: AnyTraceEvent) -> None:
        """Queue the spans ``event`` finishes. Never blocks, never raises."""
        if self._closed:
            return
        try:
            spans = self._builder.add(event)
        except Exception:  # a span is not worth a collector: log it and carry on
            log.exception("otlp_event_skipped", session_id=event.session_id, kind=event_kind(event))
            return
        for span in spans:
            if len(self._queue) < self.max_queue:
                self._queue.append(span)
                continue
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "otlp_queue_full", url=self.url, max_queue=self.max_queue, action="dropping spans"
                )
        if len(self._queue) >= self.batch_size and not self._failures:
            self._wake.set()

    async def close(self) -> None:
        """Stop the background task, send what is queued (within ``timeout``), close the client."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()  # the background task ends, after the post it may be making
        try:
            async with asyncio.timeout(self.timeout):
                if self._task is not None:
                    await asyncio.wait({self._task})
                await self._flush()
        except TimeoutError:
            log.warning("otlp_flush_timed_out", url=self.url, timeout_s=self.timeout)
        finally:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task})
            if self._queue:
                self.dropped += len(self._queue)
                log.warning("otlp_spans_dropped", url=self.url, count=len(self._queue))
                self._queue.clear()
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.aclose()
        log.info("otlp_exporter_closed", url=self.url, exported=self.exported, dropped=self.dropped)

    async def _run(self) -> None:
        while not self._closed:
            # Wait for a full batch (add() wakes us, except while backing off), close(), or the interval.
            delay = self.interval
            if self._failures:
                delay = min(self.interval * 2 ** (self._failures - 1), _MAX_BACKOFF)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return  # close() sends the rest
            try:
                await self._flush()
            except Exception:  # a bug must not end the exports for good
                log.exception("otlp_flush_failed", url=self.url)
                self._failures += 1

    async def _flush(self) -> None:
        """Post queued spans, a batch at a time, until the queue is empty or a post must be retried."""
        while self._queue:
            batch = list(itertools.islice(self._queue, self.batch_size))
            outcome = await self._post(batch)
            if outcome == "retry":
                return  # stays queued for a try after a backoff (on close: dropped and counted)
            for _ in batch:
                self._queue.popleft()
            self._overflowing = False
            if outcome == "ok":
                self.exported += len(batch)
            else:
                self.dropped += len(batch)

    async def _post(self, batch: list[Span]) -> Literal["ok", "retry", "drop"]:
        body = msgspec.json.encode(
            {
                "resourceSpans": [
                    {"resource": self._resource, "scopeSpans": [{"scope": {"name": SCOPE}, "spans": batch}]}
                ]
            }
        )
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=self.timeout)
        try:
            response = await self._client.post(
                self.url, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx2.HTTPError as exc:
            return self._failed(f"{type(exc).__name__}: {exc}", retry=True)
        if not response.is_success:
            retry = response.status_code in _RETRYABLE
            return self._failed(f"HTTP {response.status_code}: {response.text[:200]}", retry=retry)
        if self._failures:
            log.info("otlp_export_recovered", url=self.url, failed_posts=self._failures, dropped=self.dropped)
            self._failures = 0
        self._log_partial_success(response.content)
        return "ok"

    def _failed(self, error: str, *, retry: bool) -> Literal["retry", "drop"]:
        self._failures += 1
        if self._failures == 1:  # once per failure streak
            log.warning(
                "otlp_export_failed",
                url=self.url,
                error=error,
                action="retrying with backoff" if retry else "dropping the batch",
                queued=len(self._queue),
            )
        return "retry" if retry else "drop"

    def _log_partial_success(self, content: bytes) -> None:
        try:
            answer = msgspec.json.decode(content) if content else {}
            partial = answer.get("partialSuccess") or {}
            rejected = int(partial.get("rejectedSpans") or 0)
        except (msgspec.DecodeError, AttributeError, TypeError, ValueError):
            return
        if rejected:
            message = str(partial.get("errorMessage", ""))
            log.warning("otlp_spans_rejected", url=self.url, rejected=rejected, message=message)
