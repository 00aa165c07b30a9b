"""The trace collector: every event stored exactly once (even across kill -9), queries, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
from pathlib import Path

import msgspec
import pytest
import structlog

from actors.agent.models.offline import OfflineModel
from actors.collector.actor import TraceStore
from actors.collector.redaction import redact
from actors.roles import running_agents
from bus.codec import encode
from bus.connection import Bus
from bus.direct import read_subject
from schemas import ErrorInfo, SessionSubmit
from schemas.trace import (
    AgentMessage,
    AgentToolResult,
    EventsAnswer,
    EventsQuery,
    ProvenanceAnswer,
    ProvenanceQuery,
    QueryFailed,
    SessionErrorEvent,
    SessionsAnswer,
    SessionsQuery,
    TraceAnswer,
    TraceQuery,
    event_kind,
)
from tests.helpers import (
    NatsServer,
    collector,
    eventually,
    inbox,
    incident_trace,
    ready_process,
    round_trip,
    submit_and_wait,
    team,
)

_ANSWER = msgspec.json.Decoder(TraceAnswer)


async def ask(bus: Bus, query: TraceQuery | bytes) -> TraceAnswer:
    """The collector's answer on ``<root>.api.trace`` (``bytes``: a request as another client sends it)."""
    payload = query if isinstance(query, bytes) else encode(query)
    return _ANSWER.decode(await bus.request(bus.subjects.api_trace, payload, timeout=5))


async def stored_in_stream(bus: Bus, session_id: str) -> int:
    return len([m async for m in read_subject(bus, bus.subjects.log_stream, bus.subjects.events(session_id))])


async def test_a_sessions_events_are_stored_once_and_queryable(bus: Bus, tmp_path: Path) -> None:
    async with collector(bus, tmp_path / "trace.db") as store:
        async with running_agents(bus, OfflineModel(), agents=["logs", "metrics"]):
            result = await submit_and_wait(bus, SessionSubmit(task="look", team_spec=team("logs", "metrics")))
        expected = await stored_in_stream(bus, result.session_id)
        await eventually(lambda: store.count(result.session_id) == expected)
        sessions = await ask(bus, SessionsQuery())
        events = await ask(bus, EventsQuery(session_id=result.session_id))
        unknown = await ask(bus, b'{"type": "trace.query.drop.v1"}')
        earlier = await ask(bus, b'{"op": "sessions", "limit": 1}')  # the protocol before the types
        bad = await ask(bus, b'{"op": "drop"}')
    assert isinstance(sessions, SessionsAnswer)
    [session] = [s for s in sessions.sessions if s.session_id == result.session_id]
    assert session.threads == 3  # the lead and two subagent threads
    assert session.status == "idle"
    assert isinstance(events, EventsAnswer)
    kinds = [event_kind(event) for event in events.events]
    assert len(kinds) == expected
    assert kinds[0] == "session.status_running"
    assert kinds.count("session.thread_created") == 2
    assert isinstance(unknown, QueryFailed)
    assert unknown.error.kind == "invalid_query"
    assert "'trace.query.drop.v1'" in unknown.error.message
    assert earlier == SessionsAnswer(sessions=sessions.sessions[:1])
    assert bad == QueryFailed(
        error=ErrorInfo(kind="invalid_query", message="unknown op 'drop' (ops: sessions, events, provenance)")
    )


async def test_secrets_are_redacted_and_malformed_traffic_is_recorded(bus: Bus, tmp_path: Path) -> None:
    async with collector(bus, tmp_path / "trace.db") as store:
        await bus.emit(
            AgentToolResult(
                session_id="ses_r", tool_use_id="t1", content="key=sk-ant-api03-abcdefghijklmnop done"
            )
        )
        await bus.publish_bytes(bus.subjects.event("ses_r", "agent.message"), b"{not json")
        await bus.emit(
            AgentMessage(session_id="ses_r", text="Authorization: Bearer abcdefghijklmnopqrstuvwxyz012345")
        )
        await eventually(lambda: store.count("ses_r") == 2 and store.count("") == 1)
        rows = store.events("ses_r")
        system = store.events("")  # the garbage named no session: its rejection is a system event
    texts = json.dumps(rows)
    assert "sk-ant-api03" not in texts
    assert "abcdefghijklmnopqrstuvwxyz012345" not in texts
    assert texts.count("[redacted]") == 2
    [rejected] = [r for r in system if r["type"] == "bus.message_rejected.v1"]
    assert rejected["actor"] == "collector"
    assert "malformed" in rejected["reason"]
    assert redact("no secrets here") == "no secrets here"


@pytest.mark.slow
async def test_kill_9_mid_stream_then_restart_stores_every_event_exactly_once(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    db = tmp_path / "trace.db"
    count = 20_000  # the collector stores ~15,000/s: it is killed while events are still coming

    def stored() -> int:
        if not db.exists():
            return 0
        with contextlib.closing(sqlite3.connect(db)) as conn:
            return int(
                conn.execute("SELECT COUNT(*) FROM events WHERE session_id = 'ses_busy'").fetchone()[0]
            )

    args = ("actor", "collector", "--nats", nats_server.url, "--root", bus.subjects.root, "--db", str(db))

    async def publish() -> None:
        for n in range(count):
            await bus.emit(AgentMessage(session_id="ses_busy", text=f"event {n}"))
        await round_trip(bus)

    async with ready_process("actors.cli", *args, ready_word=b"collector ready") as first:
        publishing = asyncio.ensure_future(publish())
        await eventually(lambda: stored() > 300)
        first.send_signal(signal.SIGKILL)  # in the middle of the stream
        await first.wait()
        await publishing
    partial = stored()
    assert partial < count
    async with ready_process("actors.cli", *args, ready_word=b"collector ready"):
        await eventually(lambda: stored() == count, timeout=60)
    with contextlib.closing(sqlite3.connect(db)) as conn:
        distinct = conn.execute(
            "SELECT COUNT(DISTINCT json_extract(data, '$.msg_id')) FROM events WHERE session_id = 'ses_busy'"
        ).fetchone()[0]
        texts = {row[0] for row in conn.execute("SELECT json_extract(data, '$.text') FROM events")}
    assert distinct == count  # none twice
    assert texts == {f"event {n}" for n in range(count)}  # none lost


async def test_one_thread_and_one_files_provenance_are_queryable(bus: Bus, tmp_path: Path) -> None:
    events = incident_trace("ses_p")
    thread_id = "t-toolu_off_lead_1_1"  # one of the fixture's subagent threads

    async with collector(bus, tmp_path / "trace.db") as store:
        for event in events:
            await bus.emit(event)
        await eventually(lambda: store.count("ses_p") == len(events))
        thread = await ask(bus, EventsQuery(session_id="ses_p", thread_id=thread_id))
        request = {"op": "events", "session_id": "ses_p", "thread_id": thread_id}  # before the types
        earlier = await ask(bus, json.dumps(request).encode())
        origin = await ask(bus, ProvenanceQuery(session_id="ses_p", path="incident-report.md"))
        missing = await ask(bus, ProvenanceQuery(session_id="ses_p", path="nope.md"))
    assert thread == EventsAnswer(events=[e for e in events if e.thread_id == thread_id])
    assert {e.agent for e in thread.events} == {"logs"}
    assert earlier == thread
    assert isinstance(origin, ProvenanceAnswer)
    document = origin.origin
    assert (document.path, document.agent, len(document.sources)) == ("incident-report.md", "lead", 4)
    agents = {source.thread.agent for source in document.sources if source.thread is not None}
    assert agents == {"deploys", "logs", "metrics", "tickets"}
    assert missing == QueryFailed(
        error=ErrorInfo(
            kind="query_failed",
            message="no file 'nope.md' was written in this session (files written: incident-report.md)",
        )
    )


async def test_a_locked_database_delays_the_events_and_loses_none(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "trace.db"
    TraceStore(path).close()  # the schema exists
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a backup, say)
    try:
        async with collector(bus, path, busy_timeout=0.1) as store:
            every_session = bus.subjects.events("*").replace(".evt.>", ".evt.session.error")
            retried = await inbox(bus, every_session, SessionErrorEvent)
            with structlog.testing.capture_logs() as logs:
                for n in range(20):
                    await bus.emit(AgentMessage(session_id="ses_lock", text=f"event {n}"))
                await eventually(lambda: any(entry["event"] == "batch_retry" for entry in logs))
                blocker.execute("ROLLBACK")  # the lock goes away; the batch comes back after its delay
                await eventually(lambda: store.count("ses_lock") == 20)
            assert store.count() == 20  # and no session.error events about the collector's own failure
            with pytest.raises(TimeoutError):
                await retried.next(timeout=0.2)
    finally:
        blocker.close()


@pytest.mark.parametrize(
    "secret",
    [
        "sk-ant-api03-abcdefghijklmnop",
        "sk-proj-abcdefghijklmnopqrstuv",
        "AKIAABCDEFGHIJKLMNOP",
        "Bearer abcdefghijklmnopqrstuvwxyz",
        "BEARER abcdefghijklmnopqrstuvwxyz",
        "xoxb-1234567890-abcdef",
        *(f"gh{kind}_abcdefghijklmnopqrstuvwxyz" for kind in "pousr"),
        "whsec_abcdefghijklmnopqrstu",
    ],
)
def test_every_kind_of_secret_passes_the_pre_check_and_is_redacted(secret: str) -> None:
    assert redact(f'{{"text": "key {secret} here"}}') == '{"text": "key [redacted] here"}'


def test_a_batch_larger_than_one_insert_is_stored_once_with_its_redeliveries(tmp_path: Path) -> None:
    store = TraceStore(tmp_path / "trace.db")
    try:
        events = [AgentMessage(session_id="ses_many", text=f"event {n}") for n in range(300)]
        batch = [(n + 1, event, encode(event)) for n, event in enumerate(events)]
        first = store.add_many("log", [*batch[:150], batch[10]])  # a redelivery racing the first
        again = store.add_many("log", batch)  # 150 redelivered, 150 new
        assert first == [True] * 150 + [False]
        assert again == [False] * 150 + [True] * 150
        assert store.count("ses_many") == 300
        assert [event["text"] for event in store.events("ses_many")] == [f"event {n}" for n in range(300)]
    finally:
        store.close()
