"""The trace collector: every trace event, stored exactly once in SQLite, queryable over NATS.

:class:`CollectorActor` (a batch actor on consumer ``collector``: every event subject, from the first
message) stores each event, redacted, under its stream sequence in a :class:`TraceStore`, so a
redelivery is never stored twice, and hands each newly stored one to an optional
:class:`~actors.collector.otlp.OtlpExporter`. :class:`TraceQueries` answers ``<root>.api.trace`` with
the protocol of :mod:`schemas.trace` (requests of the earlier ``{"op": ...}`` protocol still work).
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from collections.abc import Sequence
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
from bus.provision import ConsumerSpec
from bus.state import Responder
from bus.subjects import Subjects
from schemas.base import ErrorInfo, Message
from schemas.trace import (
    AnyTraceEvent,
    EventsAnswer,
    EventsQuery,
    ProvenanceAnswer,
    ProvenanceQuery,
    QueryFailed,
    SessionsAnswer,
    SessionsQuery,
    SessionSummary,
    TraceAnswer,
    TraceQuery,
    event_kind,
)

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
        self,
        store: TraceStore,
        *,
        ack_wait: float = 30.0,
        exporter: OtlpExporter | None = None,
        owns_store: bool = False,
    ) -> None:
        self.store = store
        self.ack_wait = ack_wait
        self.exporter = exporter
        self.owns_store = owns_store  # close the store on stop (the role opened it)
        self._queries: TraceQueries | None = None

    async def on_start(self, bus: Bus) -> None:
        """Answer queries on ``<root>.api.trace`` and start exporting, before the first event."""
        self._queries = TraceQueries(bus, self.store)
        await self._queries.start()
        if self.exporter is not None:
            try:
                await self.exporter.start()
            except BaseException:
                await self._queries.stop()
                raise

    async def on_stop(self) -> None:
        if self.exporter is not None:
            await self.exporter.close()  # sends what is queued, within its timeout; never raises
        if self._queries is not None:
            await self._queries.stop()
            self._queries = None
        if self.owns_store:
            self.store.close()

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
            query = _decode_query(data)
        except (msgspec.DecodeError, ValueError) as exc:  # msgspec's ValidationError is a DecodeError
            return encode(QueryFailed(error=ErrorInfo(kind="invalid_query", message=str(exc))))
        try:
            answer = await asyncio.to_thread(self._run, query)
        except (StaffworkError, msgspec.ValidationError) as exc:  # no such file, an undecodable row
            answer = QueryFailed(error=ErrorInfo(kind="query_failed", message=str(exc)))
        return encode(answer)

    def _run(self, query: TraceQuery) -> TraceAnswer:
        """Answer from the store (in a worker thread: the queries take turns with the writer)."""
        match query:
            case SessionsQuery(limit=limit):
                summaries = msgspec.convert(self.store.sessions(limit), list[SessionSummary])
                return SessionsAnswer(sessions=summaries)
            case EventsQuery(session_id=session_id, thread_id=thread_id, agent=agent, kind=kind):
                rows = self.store.events(session_id, thread_id=thread_id, agent=agent, kind=kind)
                return EventsAnswer(events=_EVENTS.decode(msgspec.json.encode(rows)))
            case ProvenanceQuery(session_id=session_id, path=path):
                events = _EVENTS.decode(msgspec.json.encode(self.store.events(session_id)))
                return ProvenanceAnswer(origin=file_origin(events, path).report())


_EVENTS = msgspec.json.Decoder(list[AnyTraceEvent])
_QUERY = msgspec.json.Decoder(TraceQuery)
#: the ``op`` of each request of the earlier protocol, and the query it is now
_LEGACY_OPS: dict[str, type[TraceQuery]] = {
    "sessions": SessionsQuery,
    "events": EventsQuery,
    "provenance": ProvenanceQuery,
}


def _decode_query(data: bytes) -> TraceQuery:
    """A typed query (``{"type": "trace.query.events.v1", ...}``), or a request of the earlier
    protocol (``{"op": "events", ...}``) as the query it is now."""
    try:
        return _QUERY.decode(data)
    except msgspec.ValidationError:
        earlier = msgspec.json.decode(data)
        if not (isinstance(earlier, dict) and "op" in earlier):
            raise
    op = earlier.pop("op")
    if not isinstance(op, str) or op not in _LEGACY_OPS:
        raise ValueError(f"unknown op {op!r} (ops: {', '.join(_LEGACY_OPS)})")
    return msgspec.convert(earlier, _LEGACY_OPS[op], strict=False)
