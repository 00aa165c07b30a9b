"""The trace collector: every trace event, stored exactly once in SQLite, queryable over NATS.

:class:`CollectorActor` (a batch actor on consumer ``collector``: every event subject, from the first
message) stores each event, redacted, under its stream, stream sequence and digest in a
:class:`TraceStore`, so a redelivery is never stored twice (and roots sharing the database lose
nothing), and hands each newly stored one to an optional
:class:`~actors.collector.otlp.OtlpExporter`. :class:`TraceQueries` answers ``<root>.api.trace`` with
the protocol of :mod:`schemas.trace` (requests of the earlier ``{"op": ...}`` protocol still work).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
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
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.errors import MessageRejected, Retryable, StaffworkError
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

#: Version 2: a stored message is identified by its stream, its sequence in it and a digest of its bytes
#: (version 1 keyed rows by the sequence alone, so a second root or a reset stream lost its events).
_VERSION = 2
_TABLE = """
CREATE TABLE IF NOT EXISTS events (
    stream TEXT NOT NULL,          -- the log stream it came from ('' : stored by version 1, stream unknown)
    seq INTEGER NOT NULL,          -- its sequence in that stream
    digest BLOB NOT NULL,          -- of the payload as it arrived (x'' : version 1)
    msg_id TEXT NOT NULL,          -- the event's msg_id (matches a version-1 row to its redelivery)
    session_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,
    time TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT NOT NULL,
    data TEXT NOT NULL             -- the event as JSON, secrets redacted
)
"""
_INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS events_key ON events (seq, stream, digest)",
    "CREATE INDEX IF NOT EXISTS events_session ON events (session_id, time)",
    "CREATE INDEX IF NOT EXISTS events_thread ON events (session_id, thread_id, time)",
    # Every query names its session: an index led by agent or kind made SQLite scan that agent's or
    # kind's events across every session (and cost every insert). Within a session, agent and kind
    # filter what events_session finds; kind also finds a session's end at once.
    "DROP INDEX IF EXISTS events_agent",
    "DROP INDEX IF EXISTS events_kind",
    "CREATE INDEX IF NOT EXISTS events_session_kind ON events (session_id, kind)",
)
#: version 1's rows, as version 2 keeps them: stream and digest unknown, the msg_id read from the data
_FROM_VERSION_1 = """
INSERT INTO events (stream, seq, digest, msg_id, session_id, thread_id, agent, kind, time, span_id,
                    parent_span_id, data)
SELECT '', seq, x'', CASE WHEN json_valid(data) THEN COALESCE(json_extract(data, '$.msg_id'), '') ELSE '' END,
       session_id, thread_id, agent, kind, time, span_id, parent_span_id, data
FROM events_v1
"""


#: A row of ``events``, in column order.
_Row = tuple[str, int, bytes, str, str, str, str, str, str, str, str, str]
#: Rows per INSERT statement: one statement inserts many rows (far cheaper than one execution per
#: row), within SQLite's historical limit of 999 bound parameters.
_ROWS_PER_INSERT = 64


def _digest(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=16).digest()


@functools.cache
def _insert(rows: int) -> str:
    """The statement inserting ``rows`` rows (the connection caches it prepared)."""
    return "INSERT OR IGNORE INTO events VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?,?,?,?)"] * rows)


@functools.cache
def _kind(cls: type[AnyTraceEvent]) -> str:
    return event_kind(cls)


def _row(stream: str, seq: int, event: AnyTraceEvent, raw: bytes) -> _Row:
    """The row of one event read from ``stream`` at ``seq`` (``raw``: its JSON as it arrived, or b"")."""
    payload = raw or encode(event)
    return (
        stream,
        seq,
        _digest(payload),
        event.msg_id,
        event.session_id,
        event.thread_id,
        event.agent,
        _kind(type(event)),
        event.time.isoformat(),
        event.span_id,
        event.parent_span_id,
        redact(payload.decode("utf-8", errors="replace")),
    )


class TraceStore:
    """The collector's SQLite database (WAL mode; one writer). Any number of roots may share it: each
    event is stored under its stream, its sequence there and a digest of its bytes (see ``add_many``).
    A database of version 1 (keyed by sequence alone) is migrated when it is opened: its rows are kept,
    with no stream, and every root's queries see them, as before."""

    def __init__(self, path: Path, *, busy_timeout: float = 5.0) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=busy_timeout)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self._prepare()
        self._lock = threading.Lock()  # one connection: the writer and the queries take turns

    def _columns(self) -> set[str]:
        return {row[1] for row in self.db.execute("PRAGMA table_info(events)")}

    def _prepare(self) -> None:
        """Create the schema, or migrate a version-1 database, in one transaction (another process
        opening the same file at once waits, then finds it done). A current database is only read,
        so it opens while another process holds the write lock."""
        if "stream" in self._columns():
            return
        self.db.execute("BEGIN IMMEDIATE")
        try:
            columns = self._columns()
            migrating = bool(columns) and "stream" not in columns
            if migrating:
                self.db.execute("ALTER TABLE events RENAME TO events_v1")
            self.db.execute(_TABLE)
            if migrating:
                kept = self.db.execute(_FROM_VERSION_1).rowcount
                self.db.execute("DROP TABLE events_v1")  # and its indexes, whose names the new ones take
                log.info("trace_store_migrated", path=str(self.path), version=_VERSION, rows=kept)
            for statement in _INDEXES:
                self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            if self.db.in_transaction:
                self.db.execute("ROLLBACK")
            raise

    def add(self, stream: str, seq: int, event: AnyTraceEvent, raw: bytes = b"") -> bool:
        """Store one event read from ``stream`` at ``seq``; False if it is stored already."""
        return self.add_many(stream, [(seq, event, raw)])[0]

    def add_many(self, stream: str, rows: Sequence[tuple[int, AnyTraceEvent, bytes]]) -> list[bool]:
        """Store events read from ``stream`` (sequence, event, the JSON it came as or b"") in one
        transaction; for each, whether it is new.

        A redelivery is the same stream, sequence and bytes: stored once. Another root's stream, or
        the same stream deleted and made again (its sequences start over, its messages differ), is
        another message. An event a version-1 collector stored (no stream known) is recognised by
        its sequence and msg_id."""
        values = [_row(stream, seq, event, raw) for seq, event, raw in rows]
        seqs = sorted({row[1] for row in values})
        with self._lock:
            self.db.execute("BEGIN IMMEDIATE")  # the write lock first: the check and the insert are one
            try:
                stored: set[tuple[int, bytes]] = set()  # (seq, digest) of this stream's rows
                earlier: set[tuple[int, str]] = set()  # (seq, msg_id) of version-1 rows
                for start in range(0, len(seqs), 500):  # within SQLite's limit on bound parameters
                    chunk = seqs[start : start + 500]
                    marks = ",".join("?" * len(chunk))
                    query = (
                        "SELECT stream, seq, digest, msg_id FROM events "
                        f"WHERE seq IN ({marks}) AND stream IN (?, '')"
                    )
                    for found_stream, seq, digest, msg_id in self.db.execute(query, [*chunk, stream]):
                        if found_stream:
                            stored.add((seq, digest))
                        else:
                            earlier.add((seq, msg_id))
                added: list[bool] = []
                fresh: list[_Row] = []
                for row in values:  # a message twice in one batch (a redelivery racing the first) is new once
                    new = (row[1], row[2]) not in stored and (row[1], row[3]) not in earlier
                    added.append(new)
                    if new:
                        fresh.append(row)
                        stored.add((row[1], row[2]))
                for start in range(0, len(fresh), _ROWS_PER_INSERT):
                    chunk_rows = fresh[start : start + _ROWS_PER_INSERT]
                    self.db.execute(_insert(len(chunk_rows)), [value for row in chunk_rows for value in row])
                self.db.execute("COMMIT")
            except BaseException:
                if self.db.in_transaction:
                    self.db.execute("ROLLBACK")
                raise
        return added

    def events(
        self,
        session_id: str,
        *,
        stream: str | None = None,
        thread_id: str = "",
        agent: str = "",
        kind: str = "",
        limit: int = 100_000,
    ) -> list[dict[str, Any]]:
        """A session's events in stream order: those read from ``stream`` (and version 1's, whose
        stream is unknown), or from any stream when it is None."""
        query = "SELECT data FROM events WHERE session_id = ?"
        args: list[Any] = [session_id]
        if stream is not None:
            query += " AND stream IN (?, '')"
            args.append(stream)
        for column, value in (("thread_id", thread_id), ("agent", agent), ("kind", kind)):
            if value:
                query += f" AND {column} = ?"
                args.append(value)
        query += " ORDER BY seq, rowid LIMIT ?"  # stream order: clocks of different hosts do not decide
        args.append(limit)
        with self._lock:
            rows = self.db.execute(query, args).fetchall()
        return [json.loads(row[0]) for row in rows]

    def sessions(self, limit: int = 50, *, stream: str | None = None) -> list[dict[str, Any]]:
        """The most recent sessions (of ``stream`` and version 1, or of every stream when None)."""
        with self._lock:
            return self._sessions(limit, stream)

    def _sessions(self, limit: int, stream: str | None) -> list[dict[str, Any]]:
        scope = "" if stream is None else "AND {}stream IN (:stream, '')"
        rows = self.db.execute(
            f"""
            SELECT session_id, MIN(time), MAX(time),
                   COUNT(DISTINCT CASE WHEN thread_id != '' THEN thread_id END),
                   COALESCE(SUM(CASE WHEN kind = 'span.model_request_end'
                                THEN json_extract(data, '$.usage.cost_usd') END), 0),
                   (SELECT json_extract(e2.data, '$.stop_reason') FROM events e2
                     WHERE e2.session_id = events.session_id AND e2.kind = 'session.status_idle'
                     {scope.format("e2.")}
                     ORDER BY e2.seq DESC LIMIT 1)
            FROM events WHERE session_id != '' {scope.format("")}
            GROUP BY session_id ORDER BY MAX(time) DESC LIMIT :limit
            """,
            {"limit": limit, "stream": stream},
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

    def count(self, session_id: str | None = None, *, stream: str | None = None) -> int:
        """How many events are stored (of one session; read from one stream)."""
        query = "SELECT COUNT(*) FROM events WHERE 1"
        args: list[Any] = []
        if session_id is not None:
            query += " AND session_id = ?"
            args.append(session_id)
        if stream is not None:
            query += " AND stream = ?"
            args.append(stream)
        with self._lock:
            return int(self.db.execute(query, args).fetchone()[0])

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
        if not batch:
            return
        stream = batch[0][1].bus.subjects.log_stream  # the consumer reads the root's log stream
        rows = [(ctx.stream_seq, event, ctx.raw) for event, ctx in batch]
        try:
            added = await asyncio.to_thread(self.store.add_many, stream, rows)
        except sqlite3.OperationalError as exc:  # locked, busy, disk full: the whole batch again later
            raise Retryable(f"trace store {self.store.path}: {exc}") from exc
        if self.exporter is not None:
            for (event, _), new in zip(batch, added, strict=True):
                if new:  # a redelivery is not exported twice
                    self.exporter.add(event)


class TraceQueries:
    """Answers ``<root>.api.trace`` from the store: the root's own events (and version 1's)."""

    def __init__(self, bus: Bus, store: TraceStore) -> None:
        self.bus = bus
        self.store = store
        self.stream = bus.subjects.log_stream
        self._responder: Responder | None = None

    async def start(self) -> None:
        self._responder = await self.bus.respond(self.bus.subjects.api_trace, self._answer, queue="collector")

    async def stop(self) -> None:
        if self._responder is not None:
            await self._responder.close()

    async def _answer(self, data: bytes) -> bytes:
        """Every request gets an answer: a query that does not decode (for any reason) is
        ``invalid_query``, one that fails is ``query_failed``."""
        try:
            query = _decode_query(data)
        except MessageRejected as exc:
            return encode(QueryFailed(error=ErrorInfo(kind="invalid_query", message=exc.reason)))
        except ValueError as exc:
            return encode(QueryFailed(error=ErrorInfo(kind="invalid_query", message=str(exc))))
        try:
            answer = await asyncio.to_thread(self._run, query)
        except (StaffworkError, msgspec.ValidationError) as exc:  # no such file, an undecodable row
            answer = QueryFailed(error=ErrorInfo(kind="query_failed", message=str(exc)))
        except Exception as exc:  # a bug or a row nested too deep: an answer all the same, never silence
            log.exception("trace_query_failed", query=type(query).__name__)
            answer = QueryFailed(error=ErrorInfo(kind="query_failed", message=f"{type(exc).__name__}: {exc}"))
        return encode(answer)

    def _run(self, query: TraceQuery) -> TraceAnswer:
        """Answer from the store (in a worker thread: the queries take turns with the writer)."""
        match query:
            case SessionsQuery(limit=limit):
                found = self.store.sessions(limit, stream=self.stream)
                return SessionsAnswer(sessions=msgspec.convert(found, list[SessionSummary]))
            case EventsQuery(session_id=session_id, thread_id=thread_id, agent=agent, kind=kind):
                rows = self.store.events(
                    session_id, stream=self.stream, thread_id=thread_id, agent=agent, kind=kind
                )
                return EventsAnswer(events=_EVENTS.decode(msgspec.json.encode(rows)))
            case ProvenanceQuery(session_id=session_id, path=path):
                rows = self.store.events(session_id, stream=self.stream)
                events = _EVENTS.decode(msgspec.json.encode(rows))
                return ProvenanceAnswer(origin=file_origin(events, path).report())


_EVENTS = msgspec.json.Decoder(list[AnyTraceEvent])
_QUERY: Decoder[TraceQuery] = Decoder(TraceQuery, max_bytes=64 * 1024)
_EARLIER: Decoder[dict[str, Any]] = Decoder(dict[str, Any], max_bytes=64 * 1024)
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
    except MessageRejected as exc:
        rejected = exc
    try:
        earlier = _EARLIER.decode(data)
    except MessageRejected:
        earlier = {}
    if "op" not in earlier:
        raise rejected
    op = earlier.pop("op")
    if not isinstance(op, str) or op not in _LEGACY_OPS:
        raise ValueError(f"unknown op {op!r} (ops: {', '.join(_LEGACY_OPS)})")
    return msgspec.convert(earlier, _LEGACY_OPS[op], strict=False)
