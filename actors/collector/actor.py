"""The trace collector: every trace event, stored exactly once in SQLite, queryable over NATS.

A durable consumer (``collector``) reads every event subject of the log stream from its first
message (``<root>.s.*.evt.>`` and ``<root>.sys.evt.>``). Each event is stored under its stream
sequence (the primary key), so a redelivery after a crash (kill -9 between the insert and the ack)
is ignored: never lost, never duplicated. Undecodable traffic is rejected by the runtime, which
publishes a ``bus.message_rejected`` event, and that event is stored like any other. Before
storing, strings that look like API keys or bearer tokens are redacted. Given an
:class:`~actors.collector.otlp.OtlpExporter`, each newly stored event also goes to it, to be exported as
OpenTelemetry spans (OTLP/HTTP JSON).

Queries (request/reply on ``<root>.api.trace``, JSON): ``{"op": "sessions"}``, ``{"op": "events",
"session_id": ..., "thread_id"?, "agent"?, "kind"?}``, ``{"op": "provenance", "session_id": ...,
"path": ...}``. Each answers ``{"result": ...}`` or ``{"error": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import structlog

from actors.collector.otlp import OtlpExporter
from actors.collector.redaction import redact
from actors.views.provenance import file_origin
from bus.actor import BaseActor, Context
from bus.codec import encode
from bus.connection import Bus
from bus.errors import Retryable, StaffworkError
from bus.lifecycle import run_actors
from bus.provision import ConsumerSpec
from bus.runtime import RuntimeSettings
from bus.state import Responder
from bus.subjects import Subjects
from schemas.base import Message
from schemas.trace import AnyTraceEvent, event_kind

log = structlog.get_logger("staffwork.collector")

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


class TraceStore:
    """The collector's SQLite database (WAL mode; one writer)."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)
        self._lock = threading.Lock()  # one connection: the writer and the queries take turns

    def add(self, seq: int, event: AnyTraceEvent, raw: bytes = b"") -> bool:
        """Store an event under its stream sequence; False if that sequence is stored already."""
        return self.add_many([(seq, event, raw)])[0]

    def add_many(self, rows: Sequence[tuple[int, AnyTraceEvent, bytes]]) -> list[bool]:
        """Store events (stream sequence, event, the JSON it came as or b"") in one transaction; for
        each, whether it is new (False: that sequence is stored already, a redelivery)."""
        values = [
            (
                seq,
                event.session_id,
                event.thread_id,
                event.agent,
                event_kind(event),
                event.time.isoformat(),
                event.span_id,
                event.parent_span_id,
                redact((raw or encode(event)).decode("utf-8", errors="replace")),
            )
            for seq, event, raw in rows
        ]
        seqs = [row[0] for row in values]
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")  # the write lock first: the check and the insert are one
            try:
                stored: set[int] = set()
                for start in range(0, len(seqs), 500):  # within SQLite's limit on bound parameters
                    chunk = seqs[start : start + 500]
                    query = f"SELECT seq FROM events WHERE seq IN ({','.join('?' * len(chunk))})"
                    stored.update(seq for (seq,) in self.db.execute(query, chunk))
                fresh = [row for row in values if row[0] not in stored]
                self.db.executemany("INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", fresh)
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        added = []
        for seq in seqs:  # a sequence twice in one batch (a redelivery racing the first) is new once
            added.append(seq not in stored)
            stored.add(seq)
        return added

    def events(
        self, session_id: str, *, thread_id: str = "", agent: str = "", kind: str = "", limit: int = 100_000
    ) -> list[dict[str, Any]]:
        query = "SELECT data FROM events WHERE session_id = ?"
        args: list[Any] = [session_id]
        for column, value in (("thread_id", thread_id), ("agent", agent), ("kind", kind)):
            if value:
                query += f" AND {column} = ?"
                args.append(value)
        query += " ORDER BY seq LIMIT ?"  # stream order: clocks of different hosts do not decide
        args.append(limit)
        with self._lock:
            rows = self.db.execute(query, args).fetchall()
        return [json.loads(row[0]) for row in rows]

    def sessions(self, limit: int = 50) -> list[dict[str, Any]]:
        with self._lock:
            return self._sessions(limit)

    def _sessions(self, limit: int) -> list[dict[str, Any]]:
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
        with self._lock:
            if session_id is None:
                return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
            query = "SELECT COUNT(*) FROM events WHERE session_id = ?"
            return int(self.db.execute(query, (session_id,)).fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self.db.close()


class CollectorActor(BaseActor[AnyTraceEvent]):
    role = "collector"
    inbox = AnyTraceEvent
    report_failures = False  # a session.error event about an event would come back to the collector

    def __init__(
        self, store: TraceStore, *, ack_wait: float = 30.0, exporter: OtlpExporter | None = None
    ) -> None:
        self.store = store
        self.ack_wait = ack_wait
        self.exporter = exporter

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        return ConsumerSpec(
            durable=subjects.collector_consumer,
            filter_subjects=(subjects.events("*"), subjects.system_events()),
            ack_wait=self.ack_wait,
            max_deliver=-1,
            max_ack_pending=10_000,
            deliver_new=False,  # everything the stream holds, from the first event
            description="trace collector",
        )

    async def handle(self, msg: AnyTraceEvent, ctx: Context) -> Message | None:
        await self.handle_batch([(msg, ctx)])
        return None

    async def handle_batch(self, batch: Sequence[tuple[AnyTraceEvent, Context]]) -> None:
        """One transaction for the batch, in a worker thread (the next batch arrives meanwhile); the
        runtime acks the batch after it returns."""
        rows = [(ctx.stream_seq, event, ctx.raw) for event, ctx in batch]
        try:
            added = await asyncio.to_thread(self.store.add_many, rows)
        except sqlite3.OperationalError as exc:  # locked, busy, disk full: the whole batch again later
            raise Retryable(f"trace store {self.store.path}: {exc}") from exc
        if self.exporter is not None:
            for (event, _), new in zip(batch, added, strict=True):
                if new:  # a redelivery is not exported twice
                    self.exporter.add(event)


class TraceQueries:
    """Answers ``<root>.api.trace`` from the store."""

    def __init__(self, bus: Bus, store: TraceStore) -> None:
        self.bus = bus
        self.store = store
        self._responder: Responder | None = None

    async def start(self) -> None:
        self._responder = await self.bus.respond(self.bus.subjects.api_trace, self._answer, queue="collector")

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
            elif op == "provenance":
                answer = await asyncio.to_thread(
                    self._provenance, str(request["session_id"]), str(request["path"])
                )
            else:
                raise ValueError(f"unknown op {op!r} (ops: sessions, events, provenance)")
        except (msgspec.DecodeError, ValueError, KeyError, StaffworkError) as exc:
            return msgspec.json.encode({"error": str(exc)})
        return msgspec.json.encode({"result": answer})

    def _provenance(self, session_id: str, path: str) -> dict[str, Any]:
        rows = self.store.events(session_id)
        events = _EVENTS.decode(msgspec.json.encode(rows))
        return file_origin(events, path).to_dict()


_EVENTS = msgspec.json.Decoder(list[AnyTraceEvent])


async def serve_collector(
    bus: Bus,
    store: TraceStore,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[], None] | None = None,
    exporter: OtlpExporter | None = None,
) -> None:
    """Run the collector and its queries until ``stop`` is set (exporting spans if given an exporter)."""
    queries = TraceQueries(bus, store)
    await queries.start()
    try:
        if exporter is not None:
            await exporter.start()

        async def ready() -> None:
            if on_ready is not None:
                on_ready()

        actor = CollectorActor(store, exporter=exporter)
        settings = RuntimeSettings(concurrency=1024, batch_size=256)  # batches: see handle_batch
        await run_actors(bus, [actor], stop, settings, on_ready=ready)
    finally:
        if exporter is not None:
            await exporter.close()  # sends what is queued, within its timeout; never raises
        await queries.stop()
