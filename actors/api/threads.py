"""Reading a session (``/v1/sessions/{id}/events``, ``…/events/stream``, ``…/threads``): its events
listed and streamed, its threads and each thread's events.

Everything is read from the session's log (``<root>.s.<session>.evt.>`` in ``<key>_log``) and
translated by :mod:`actors.api.events`; nothing else is kept. A session's threads are the lead's
(``lead``, the primary: ``parent_thread_id`` null) and one per ``session.thread_created``; a thread's
id is staffwork's thread id, the one webhooks carry as ``session_thread_id``; its status is its
latest status event's (``running`` until one says otherwise).

The stream replays, unlike the hosted one, where that is what a program written for the hosted one
wants (:class:`Replay`): opened while the session works, it sends the current turn's stored events
first (a client that reconnects misses nothing), then the live ones; opened while it is idle, only
what happens from then on (so a program that opens the stream, sends a follow-up and reads until
``session.status_idle`` is not handed the earlier turn's idle); ``?replay=all`` sends every stored
event first.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from actors.api.errors import ApiError, bad_request
from actors.api.events import LEAD, ApiEvent, Translator, stored_events, translate
from actors.api.http import Call, page, route
from actors.api.session_records import ApiSession, load_session
from actors.api.values import rfc3339
from actors.sessions.directory import SessionDirectory
from bus.connection import Bus
from schemas.trace import AnyTraceEvent, ThreadCreated, UserEvent

PING_SECONDS = 15.0
PING = b'event: ping\ndata: {"type": "ping"}\n\n'
MAX_LIMIT = 1000
_THREAD_STATUS = {
    "session.thread_status_running": "running",
    "session.thread_status_idle": "idle",
    "session.thread_status_terminated": "terminated",
    "session.status_running": "running",
    "session.status_idle": "idle",
    "session.status_terminated": "terminated",
}
# --- list --------------------------------------------------------------------------------------------


def _time_filters(call: Call) -> list[tuple[str, datetime]]:
    filters = []
    for op in ("gt", "gte", "lt", "lte"):
        if value := call.query(f"created_at[{op}]"):
            try:
                when = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                raise bad_request(
                    f"query parameter created_at[{op}]={value!r} is not an RFC 3339 time"
                ) from None
            filters.append((op, when if when.tzinfo else when.replace(tzinfo=UTC)))
    return filters


def _kept(event: dict[str, Any], filters: list[tuple[str, datetime]]) -> bool:
    when = datetime.fromisoformat(str(event["processed_at"]).replace("Z", "+00:00"))
    checks = {"gt": when.__gt__, "gte": when.__ge__, "lt": when.__lt__, "lte": when.__le__}
    return all(checks[op](bound) for op, bound in filters)


def events_page(call: Call, shown: list[ApiEvent]) -> dict[str, Any]:
    """A page of ``shown`` with the list's query: ``types[]``, ``order`` (asc, the default, or
    desc), ``created_at[gt|gte|lt|lte]`` on ``processed_at``, ``limit`` (up to 1000), ``page``."""
    order = call.query("order", "asc")
    if order not in ("asc", "desc"):
        raise bad_request(f"query parameter order={order!r} must be 'asc' or 'desc'")
    types = set(call.query_list("types"))
    filters = _time_filters(call)
    data = [e.data for e in shown if (not types or e.type in types) and _kept(e.data, filters)]
    if order == "desc":
        data.reverse()
    return page(call, data, max_limit=MAX_LIMIT)


# --- stream ----------------------------------------------------------------------------------------


class EventStream(StreamingResponse):
    """A streaming response that always closes its body when it ends, however it ends (the client
    went away, the server stops): the body's consumer is never left behind."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = self.body_iterator
        try:
            await super().__call__(scope, receive, send)
        finally:
            if isinstance(body, AsyncIterator) and hasattr(body, "aclose"):
                await body.aclose()


def frame(event: dict[str, Any]) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + msgspec.json.encode(event) + b"\n\n"


class Replay:
    """Which of a session's events a new stream shows: all of them (``all``), those from the start of
    turn ``turn`` on (``turn``: the turn starts at its ``user.message``), or those from ``opened`` on
    (``live``). Every event still goes through the translator, which needs the whole log."""

    def __init__(self, mode: str, *, turn: int = 0, opened: datetime | None = None) -> None:
        self.mode, self.turn = mode, turn
        self.opened = opened or datetime.now(UTC)
        self.showing = mode == "all"
        self._messages = 0

    def shows(self, event: AnyTraceEvent) -> bool:
        if not self.showing:
            if self.mode == "turn" and isinstance(event, UserEvent) and event.event_type == "user.message":
                self._messages += 1
                self.showing = self._messages > self.turn
            elif self.mode == "live":
                self.showing = event.time >= self.opened
        return self.showing


async def replay_for(call: Call, session_id: str) -> Replay:
    """The stream's replay: ``?replay=all``, else the current turn's if the session works, else live."""
    if call.query("replay") == "all":
        return Replay("all")
    record = await SessionDirectory(call.bus).get(session_id)
    if record is not None and record.status in ("pending", "running"):
        return Replay("turn", turn=record.turn)
    return Replay("live")


async def sse(
    bus: Bus, session_id: str, replay: Replay, *, thread_id: str | None = None
) -> AsyncIterator[bytes]:
    """The session's events (the primary view, or ``thread_id``'s) as SSE frames: stored ones as
    ``replay`` says, then live ones, a ping while nothing happens. Runs until the client goes away."""
    yield PING  # the headers and a first frame at once: the SDK returns from stream() on them
    translator = Translator()
    events = bus.follow(bus.subjects.events(session_id), AnyTraceEvent)
    pending: asyncio.Future[AnyTraceEvent] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=PING_SECONDS)
            if not done:
                yield PING
                continue
            try:
                event = pending.result()
            except StopAsyncIteration:  # the bus connection is closing
                return
            pending = None
            shows = replay.shows(event)
            for shown in translator(event):
                if shows and (shown.primary if thread_id is None else shown.in_thread(thread_id)):
                    yield frame(shown.data)
    finally:
        if pending is not None:
            pending.cancel()
            await asyncio.wait({pending})  # it ends (the consumer with it) before the generator closes
            if not pending.cancelled():
                pending.exception()  # retrieved: a failure while closing is not worth a warning
        await events.aclose()


def stream_response(body: AsyncIterator[bytes]) -> EventStream:
    headers = {"cache-control": "no-cache", "x-accel-buffering": "no"}
    return EventStream(body, media_type="text/event-stream", headers=headers)


# --- endpoints: the session's events ----------------------------------------------------------------


async def list_events(call: Call) -> object:
    session = await load_session(call, call.path("session_id"))
    shown = translate(await stored_events(call.bus, session.id))
    return events_page(call, [e for e in shown if e.primary])


async def stream(call: Call) -> object:
    session = await load_session(call, call.path("session_id"))
    return stream_response(sse(call.bus, session.id, await replay_for(call, session.id)))


# --- threads ----------------------------------------------------------------------------------------


def _threads(session: ApiSession, events: list[AnyTraceEvent], shown: list[ApiEvent]) -> list[dict[str, Any]]:
    """The session's threads, oldest first, as the SDK's ``BetaManagedAgentsSessionThread``."""
    if not session.started:
        return []
    agents = {a["name"]: a for a in (session.agent.get("multiagent") or {}).get("agents", [])}
    lead = {k: v for k, v in session.agent.items() if k != "multiagent"}
    started = events[0].time if events else datetime.now(UTC)
    threads: dict[str, dict[str, Any]] = {LEAD: _thread(session.id, LEAD, None, lead, started)}
    for event in events:
        if isinstance(event, ThreadCreated) and event.thread_id not in threads:
            agent = _roster_agent(session, agents, event.agent, lead)
            parent = event.parent_thread_id or LEAD
            threads[event.thread_id] = _thread(session.id, event.thread_id, parent, agent, event.time)
    for item in shown:
        status = _THREAD_STATUS.get(item.type)
        thread = item.data.get("session_thread_id", item.thread_id or LEAD)
        if (
            status is not None
            and thread in threads
            and item.type.startswith("session.thread_") == (thread != LEAD)
        ):
            threads[thread] |= {"status": status, "updated_at": item.data["processed_at"]}
            threads[thread]["stats"] = threads[thread]["stats"] or {}  # null until a first transition
            if status == "idle":
                threads[thread]["usage"] = threads[thread]["usage"] or {}  # null until a first idle
    return list(threads.values())


def _roster_agent(
    session: ApiSession, agents: dict[str, dict[str, Any]], name: str, lead: dict[str, Any]
) -> dict[str, Any]:
    """The snapshot of the roster agent that runs as staffwork agent ``name`` (by the team's order)."""
    for spec, snapshot in zip(
        session.team.agents, (session.agent.get("multiagent") or {}).get("agents", []), strict=False
    ):
        if spec.name == name:
            return dict(snapshot)
    return agents.get(name) or {**lead, "name": name}


def _thread(
    session_id: str, id: str, parent: str | None, agent: dict[str, Any], when: datetime
) -> dict[str, Any]:
    return {
        "id": id,
        "type": "session_thread",
        "session_id": session_id,
        "parent_thread_id": parent,
        "agent": agent,
        "status": "running",
        "stats": None,
        "usage": None,
        "workflow_run_id": None,
        "created_at": rfc3339(when),
        "updated_at": rfc3339(when),
        "archived_at": None,
    }


async def _read(call: Call) -> tuple[ApiSession, list[dict[str, Any]], list[ApiEvent]]:
    session = await load_session(call, call.path("session_id"))
    events = await stored_events(call.bus, session.id)
    shown = translate(events)
    return session, _threads(session, events, shown), shown


async def list_threads(call: Call) -> object:
    _, threads, _ = await _read(call)
    statuses = set(call.query_list("statuses"))
    return page(call, [t for t in threads if not statuses or t["status"] in statuses])


def _find(threads: list[dict[str, Any]], id: str, session_id: str) -> dict[str, Any]:
    for thread in threads:
        if thread["id"] == id:
            return thread
    raise ApiError(404, f"thread {id!r} not found in session {session_id!r}")


async def retrieve_thread(call: Call) -> object:
    session, threads, _ = await _read(call)
    return _find(threads, call.path("thread_id"), session.id)


async def thread_events(call: Call) -> object:
    session, threads, shown = await _read(call)
    thread = _find(threads, call.path("thread_id"), session.id)["id"]
    return events_page(call, [e for e in shown if e.in_thread(thread)])


async def thread_stream(call: Call) -> object:
    session, threads, _ = await _read(call)
    thread = _find(threads, call.path("thread_id"), session.id)["id"]
    return stream_response(sse(call.bus, session.id, await replay_for(call, session.id), thread_id=thread))


routes: list[Route] = [
    route("/v1/sessions/{session_id}/events", list_events),
    route("/v1/sessions/{session_id}/events/stream", stream),
    route("/v1/sessions/{session_id}/threads", list_threads),
    route("/v1/sessions/{session_id}/threads/{thread_id}", retrieve_thread),
    route("/v1/sessions/{session_id}/threads/{thread_id}/events", thread_events),
    route("/v1/sessions/{session_id}/threads/{thread_id}/stream", thread_stream),
]
