"""The trace collector: every trace event, stored exactly once in SQLite, queryable over NATS.

A durable consumer (``collector``) reads every event subject of the log stream from its first
message (``<root>.s.*.evt.>`` and ``<root>.sys.evt.>``). Each event is stored under its stream
sequence (the primary key), so a redelivery after a crash (kill -9 between the insert and the ack)
is ignored: never lost, never duplicated. Undecodable traffic is rejected by the runtime, which
publishes a ``bus.message_rejected`` event, and that event is stored like any other. Before
storing, strings that look like API keys or bearer tokens are redacted.

Queries (request/reply on ``<root>.api.trace``, JSON): ``{"op": "sessions"}``, ``{"op": "events",
"session_id": ..., "thread_id"?, "agent"?, "kind"?}``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import structlog

from bus.actor import BaseActor, Context
from bus.codec import encode
from bus.connection import Bus
from bus.lifecycle import run_actors
from bus.provision import ConsumerSpec
from bus.runtime import RuntimeSettings
from bus.state import Responder
from bus.subjects import Subjects
from schemas.base import Message
from schemas.trace import AnyTraceEvent, event_kind

log = structlog.get_logger("staffwork.collector")

_SECRETS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{10,}|sk-[A-Za-z0-9_\-]{20,}|AKIA[0-9A-Z]{16}|(?i:bearer)\s+[A-Za-z0-9._\-]{20,}|"
    r"xox[abpr]-[A-Za-z0-9\-]{10,}|gh[pousr]_[A-Za-z0-9]{20,})"
)
_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,       -- the log stream's sequence: one row per stored message, ever
    session_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,
    time TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT NOT NULL,
    data TEXT NOT NULL             -- the event as JSON, secrets redacted
);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id, time);
CREATE INDEX IF NOT EXISTS events_thread ON events (session_id, thread_id, time);
CREATE INDEX IF NOT EXISTS events_agent ON events (agent, time);
CREATE INDEX IF NOT EXISTS events_kind ON events (kind, time);
"""


def redact(text: str) -> str:
    """Replace anything that looks like an API key or a bearer token."""
    return _SECRETS.sub("[redacted]", text)


class TraceStore:
    """The collector's SQLite database (WAL mode; one writer)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def add(self, seq: int, event: AnyTraceEvent) -> bool:
        """Store an event under its stream sequence; False if that sequence is stored already."""
        data = redact(encode(event).decode())
        cursor = self.db.execute(
            "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                seq,
                event.session_id,
                event.thread_id,
                event.agent,
                event_kind(event),
                event.time.isoformat(),
                event.span_id,
                event.parent_span_id,
                data,
            ),
        )
        return cursor.rowcount == 1

    def events(
        self, session_id: str, *, thread_id: str = "", agent: str = "", kind: str = "", limit: int = 100_000
    ) -> list[dict[str, Any]]:
        query = "SELECT data FROM events WHERE session_id = ?"
        args: list[Any] = [session_id]
        for column, value in (("thread_id", thread_id), ("agent", agent), ("kind", kind)):
            if value:
                query += f" AND {column} = ?"
                args.append(value)
        query += " ORDER BY time, seq LIMIT ?"
        args.append(limit)
        return [json.loads(row[0]) for row in self.db.execute(query, args)]

    def sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        rows = self.db.execute(
            """
            SELECT session_id, MIN(time), MAX(time),
                   COUNT(DISTINCT CASE WHEN thread_id != '' THEN thread_id END),
                   COALESCE(SUM(CASE WHEN kind = 'span.model_request_end'
                                THEN json_extract(data, '$.usage.cost_usd') END), 0),
                   (SELECT json_extract(e2.data, '$.stop_reason') FROM events e2
                     WHERE e2.session_id = events.session_id AND e2.kind = 'session.status_idle'
                     ORDER BY e2.seq DESC LIMIT 1)
            FROM events WHERE session_id != ''
            GROUP BY session_id ORDER BY MAX(time) DESC LIMIT ?
            """,
            (limit,),
        )
        return [
            {
                "session_id": sid,
                "started": first,
                "last_event": last,
                "threads": threads,
                "cost_usd": cost,
                "status": "idle" if stop else "running",
                "stop_reason": stop or "",
            }
            for sid, first, last, threads, cost, stop in rows
        ]

    def count(self, session_id: str | None = None) -> int:
        if session_id is None:
            return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        return int(
            self.db.execute("SELECT COUNT(*) FROM events WHERE session_id = ?", (session_id,)).fetchone()[0]
        )

    def close(self) -> None:
        self.db.close()


class CollectorActor(BaseActor[AnyTraceEvent]):
    role = "collector"
    inbox = AnyTraceEvent

    def __init__(self, store: TraceStore, *, ack_wait: float = 30.0) -> None:
        self.store = store
        self.ack_wait = ack_wait

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        return ConsumerSpec(
            durable="collector",
            filter_subjects=(subjects.events("*"), f"{subjects.root}.sys.evt.>"),
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=10_000,
            deliver_new=False,  # everything the stream holds, from the first event
            description="trace collector",
        )

    async def handle(self, msg: AnyTraceEvent, ctx: Context) -> Message | None:
        self.store.add(ctx.stream_seq, msg)
        return None


class TraceQueries:
    """Answers ``<root>.api.trace`` from the store."""

    def __init__(self, bus: Bus, store: TraceStore) -> None:
        self.bus = bus
        self.store = store
        self._responder: Responder | None = None

    async def start(self) -> None:
        subject = f"{self.bus.subjects.root}.api.trace"
        self._responder = await self.bus.respond(subject, self._answer, queue="collector")

    async def stop(self) -> None:
        if self._responder is not None:
            await self._responder.close()

    async def _answer(self, data: bytes) -> bytes:
        try:
            request = msgspec.json.decode(data)
            if not isinstance(request, dict):
                raise ValueError("a query is a JSON object")
            op = request.get("op")
            if op == "sessions":
                answer: Any = await asyncio.to_thread(self.store.sessions, int(request.get("limit", 50)))
            elif op == "events":
                answer = await asyncio.to_thread(
                    self.store.events,
                    str(request["session_id"]),
                    thread_id=str(request.get("thread_id", "")),
                    agent=str(request.get("agent", "")),
                    kind=str(request.get("kind", "")),
                )
            else:
                raise ValueError(f"unknown op {op!r} (ops: sessions, events)")
        except (msgspec.DecodeError, ValueError, KeyError) as exc:
            return msgspec.json.encode({"error": str(exc)})
        return msgspec.json.encode({"result": answer})


async def serve_collector(
    bus: Bus, store: TraceStore, stop: asyncio.Event, *, on_ready: Callable[[], None] | None = None
) -> None:
    """Run the collector and its queries until ``stop`` is set."""
    queries = TraceQueries(bus, store)
    await queries.start()
    try:

        async def ready() -> None:
            if on_ready is not None:
                on_ready()

        await run_actors(bus, [CollectorActor(store)], stop, RuntimeSettings(concurrency=64), on_ready=ready)
    finally:
        await queries.stop()
