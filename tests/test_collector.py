"""The trace collector: every event stored exactly once (even across kill -9), queries, redaction."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import nats.errors
import pytest
import structlog

from actors.agent.models.offline import OfflineModel
from actors.collector.actor import TraceStore, serve_collector
from actors.collector.otlp import OtlpExporter
from actors.collector.redaction import redact
from actors.roles import running_agents
from bus.connection import Bus
from bus.direct import read_subject
from schemas import SessionSubmit
from schemas.trace import AgentMessage, AgentToolResult, AnyTraceEvent
from tests.agents import submit_and_wait, team
from tests.conftest import NatsServer
from tests.procs import ready_process


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``check()`` holds (state another process or task is producing), within ``timeout``."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - the state is in another process (SQLite), nothing to await
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def collector(bus: Bus, path: Path, exporter: OtlpExporter | None = None) -> AsyncIterator[TraceStore]:
    store = TraceStore(path)
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.ensure_future(serve_collector(bus, store, stop, on_ready=ready.set, exporter=exporter))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield store
    finally:
        stop.set()
        await task
        store.close()


async def stored_in_stream(bus: Bus, session_id: str) -> int:
    return len([m async for m in read_subject(bus, bus.subjects.log_stream, bus.subjects.events(session_id))])


async def test_a_sessions_events_are_stored_once_and_queryable(bus: Bus, tmp_path: Path) -> None:
    async with collector(bus, tmp_path / "trace.db") as store:
        async with running_agents(bus, OfflineModel(), agents=["logs", "metrics"]):
            result = await submit_and_wait(bus, SessionSubmit(task="look", team_spec=team("logs", "metrics")))
        expected = await stored_in_stream(bus, result.session_id)
        await eventually(lambda: store.count(result.session_id) == expected)
        sessions = await bus._nc.request(f"{bus.subjects.root}.api.trace", b'{"op": "sessions"}', timeout=5)
        events = await bus._nc.request(
            f"{bus.subjects.root}.api.trace",
            json.dumps({"op": "events", "session_id": result.session_id}).encode(),
            timeout=5,
        )
        bad = await bus._nc.request(f"{bus.subjects.root}.api.trace", b'{"op": "drop"}', timeout=5)
    [session] = [s for s in json.loads(sessions.data)["result"] if s["session_id"] == result.session_id]
    assert session["threads"] == 3  # the lead and two subagent threads
    assert session["status"] == "idle"
    kinds = [e["type"].rsplit(".", 1)[0] for e in json.loads(events.data)["result"]]
    assert len(kinds) == expected
    assert kinds[0] == "session.status_running"
    assert kinds.count("session.thread_created") == 2
    assert json.loads(bad.data) == {"error": "unknown op 'drop' (ops: sessions, events, provenance)"}


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
        await bus._nc.flush()

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
    decoder = msgspec.json.Decoder(AnyTraceEvent)
    fixture = Path(__file__).parent / "fixtures" / "incident-trace.jsonl"
    events = [
        msgspec.structs.replace(decoder.decode(line), session_id="ses_p")
        for line in fixture.read_bytes().splitlines()
    ]

    async def ask(query: dict[str, str]) -> Any:
        answer = await bus._nc.request(bus.subjects.api_trace, json.dumps(query).encode(), timeout=5)
        return json.loads(answer.data)

    async with collector(bus, tmp_path / "trace.db") as store:
        for event in events:
            await bus.emit(event)
        await eventually(lambda: store.count("ses_p") == len(events))
        thread = await ask({"op": "events", "session_id": "ses_p", "thread_id": "t-toolu_off_lead_1_1"})
        origin = await ask({"op": "provenance", "session_id": "ses_p", "path": "incident-report.md"})
        missing = await ask({"op": "provenance", "session_id": "ses_p", "path": "nope.md"})
    assert {e["agent"] for e in thread["result"]} == {"logs"}
    assert len(thread["result"]) == sum(e.thread_id == "t-toolu_off_lead_1_1" for e in events)
    document = origin["result"]
    assert (document["path"], document["agent"], len(document["sources"])) == (
        "incident-report.md",
        "lead",
        4,
    )
    assert {s["thread"]["agent"] for s in document["sources"]} == {"deploys", "logs", "metrics", "tickets"}
    assert missing == {
        "error": "no file 'nope.md' was written in this session (files written: incident-report.md)"
    }


async def test_a_locked_database_delays_the_events_and_loses_none(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "trace.db"
    TraceStore(path).close()  # the schema exists
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # another process holds the write lock (a backup, say)
    store = TraceStore(path, busy_timeout=0.1)
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.ensure_future(serve_collector(bus, store, stop, on_ready=ready.set))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        retried = await bus._nc.subscribe(f"{bus.subjects.root}.s.*.evt.session.error")
        with structlog.testing.capture_logs() as logs:
            for n in range(20):
                await bus.emit(AgentMessage(session_id="ses_lock", text=f"event {n}"))
            await eventually(lambda: any(entry["event"] == "batch_retry" for entry in logs))
            blocker.execute("ROLLBACK")  # the lock goes away; the batch comes back after its delay
            await eventually(lambda: store.count("ses_lock") == 20)
        assert store.count() == 20  # and no session.error events about the collector's own failure
        with pytest.raises(nats.errors.TimeoutError):
            await retried.next_msg(timeout=0.2)
    finally:
        stop.set()
        await task
        store.close()
        blocker.close()
