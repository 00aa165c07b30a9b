"""Liveness (issue 12): one bad message harms nothing else.

- Poison messages (2 KB of JSON nested ~1,000 deep makes msgspec raise ``RecursionError``): every
  consumer terminates one once with a ``bus.message_rejected`` event, the good messages around it go
  through at once, and every reader (listeners, responders, ``follow``, ``tail``, the client) skips
  it and answers.
- The collector's database shared by two roots, or kept across a reset stream, loses no event; a
  database written by the earlier version keeps working.
- A stray message on a thread's history subject is rejected with a trace event and ignored; the
  thread's work goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
from pathlib import Path

import msgspec
import pytest
import structlog
from nats.aio.client import Client as NATS

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.client import Client
from actors.lead.gateway import SubmitGateway
from actors.roles import running_agents
from actors.webhooks.actor import WebhookEvents
from bus.codec import Decoder, encode, peek_session
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import MessageRejected
from bus.history import ThreadLog
from bus.provision import StreamSettings, provision
from bus.runtime import RuntimeSettings
from schemas import SessionResult, SessionSubmit
from schemas.conversation import TextBlock, ThreadTurn, Turn
from schemas.session import SubmitReply
from schemas.thread import thread_id_for
from schemas.trace import (
    AgentMessage,
    EventsAnswer,
    EventsQuery,
    QueryFailed,
    SessionsAnswer,
    SessionsQuery,
    SessionStatusIdle,
    TraceAnswer,
    TraceQuery,
    event_kind,
)
from schemas.trace import MessageRejected as MessageRejectedEvent
from tests.helpers import (
    NatsServer,
    collector,
    consumer_state,
    eventually,
    inbox,
    round_trip,
    run_cli,
    running_actors,
    team,
)
from tests.jobs import Job, JobActor, JobDone, running

#: 2 KB each: msgspec gives up on them with RecursionError, which the decoder did not catch
POISON_OBJECT = b'{"a":' * 1000 + b"1" + b"}" * 1000
POISON_ARRAY = b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}"
POISONS = (POISON_OBJECT, POISON_ARRAY)
TOO_DEEP = "JSON nesting too deep"

_ANSWER = msgspec.json.Decoder(TraceAnswer)
_REPLY = msgspec.json.Decoder(SubmitReply)


async def ask(bus: Bus, query: TraceQuery | bytes, timeout: float = 3.0) -> TraceAnswer:
    payload = query if isinstance(query, bytes) else encode(query)
    return _ANSWER.decode(await bus.request(bus.subjects.api_trace, payload, timeout=timeout))


# --- 5. poison messages ------------------------------------------------------------------------------


@pytest.mark.parametrize("poison", POISONS, ids=["objects", "arrays"])
def test_the_decoder_rejects_a_poison_message_like_any_bad_one(poison: bytes) -> None:
    with pytest.raises(MessageRejected, match=TOO_DEEP) as rejected:
        Decoder(SessionSubmit).decode(poison, subject="sw.submit")
    assert (rejected.value.subject, rejected.value.size) == ("sw.submit", len(poison))
    assert peek_session(poison) == ""  # no session to name: the rejection goes to the system subject


async def test_a_worker_terminates_poison_once_and_handles_the_next_message_at_once(
    bus: Bus, nc: NATS
) -> None:
    subject = bus.subjects.task("ses_p", "jobs")
    rejections = await inbox(bus, bus.subjects.event("", "bus.message_rejected"), MessageRejectedEvent)
    done = await inbox(bus, bus.subjects.out("ses_p", "done"), JobDone)
    async with running(bus, JobActor(), RuntimeSettings(retry_delays=(0.05,))) as runtime:
        for poison in POISONS:
            await bus.publish_bytes(subject, poison)
        await bus.publish(subject, Job(session_id="ses_p", n=1))
        [reply] = await done.take(1, timeout=5)
        first, second = await rejections.take(2, timeout=5)
    assert (reply.n, reply.delivery) == (1, 1)
    assert {first.actor, second.actor} == {"jobs"}
    assert {first.subject, second.subject} == {subject}
    assert TOO_DEEP in first.reason
    assert TOO_DEEP in second.reason
    assert runtime.stats.rejected == 2  # each once: terminated, never redelivered
    assert await consumer_state(bus, nc, "jobs") == (0, 0, 0)
    for box in (rejections, done):
        await box.close()


async def test_the_collector_terminates_poison_and_stores_the_events_of_its_batch_at_once(
    bus: Bus, nc: NATS, tmp_path: Path
) -> None:
    """Batch mode: the poison is in the middle of a backlog that arrives as one batch."""
    subject = bus.subjects.event("ses_c", "agent.message")
    for n in range(20):
        await bus.emit(AgentMessage(session_id="ses_c", text=f"before {n}"))
    await bus.publish_bytes(subject, POISON_OBJECT)
    for n in range(20):
        await bus.emit(AgentMessage(session_id="ses_c", text=f"after {n}"))
    await round_trip(bus)
    async with collector(bus, tmp_path / "trace.db") as store:
        await eventually(lambda: store.count("ses_c") == 40 and store.count("") == 1, timeout=5)
        [rejected] = store.events("")
    assert (rejected["type"], rejected["actor"], rejected["subject"]) == (
        "bus.message_rejected.v1",
        "collector",
        subject,
    )
    assert TOO_DEEP in rejected["reason"]
    assert await consumer_state(bus, nc, bus.subjects.collector_consumer) == (0, 0, 0)


async def test_the_webhooks_consumer_terminates_poison_once(bus: Bus, nc: NATS) -> None:
    rejections = await inbox(bus, bus.subjects.event("", "bus.message_rejected"), MessageRejectedEvent)
    actor = WebhookEvents()
    async with running_actors(bus, [actor]):
        await bus.publish_bytes(bus.subjects.event("ses_w", "session.status_idle"), POISON_ARRAY)
        await bus.emit(SessionStatusIdle(session_id="ses_w", thread_id="lead", stop_reason="end_turn"))
        rejected = await rejections.next(timeout=5)
    assert (rejected.actor, TOO_DEEP in rejected.reason) == ("webhook_events", True)
    pending, ack_pending, redelivered = await consumer_state(bus, nc, bus.subjects.webhook_events_consumer)
    assert (pending, ack_pending, redelivered) == (0, 0, 0)
    await rejections.close()


async def test_a_listener_skips_poison_and_gets_the_next_message(bus: Bus, nc: NATS) -> None:
    subject = f"{bus.subjects.root}.test.listen"
    got: asyncio.Queue[Job] = asyncio.Queue()
    listener = await bus.listen(subject, Job, got.put_nowait)
    async with asyncio.timeout(10):  # until the subscription really receives (see helpers.subscribed)
        while True:
            await nc.publish(subject, encode(Job(session_id="ses_l", n=0)))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await got.get()
                    break
    with structlog.testing.capture_logs() as logs:
        for poison in POISONS:
            await nc.publish(subject, poison)
        await nc.publish(subject, encode(Job(session_id="ses_l", n=3)))
        async with asyncio.timeout(5):
            job = await got.get()
            while job.n == 0:  # a late second probe
                job = await got.get()
    await listener.close()
    assert job.n == 3
    rejected = [entry for entry in logs if entry["event"] == "listener_rejected"]
    assert len(rejected) == 2
    assert all(TOO_DEEP in entry["reason"] for entry in rejected)


@pytest.mark.parametrize("poison", POISONS, ids=["objects", "arrays"])
async def test_the_gateway_refuses_a_poison_submit_at_once(bus: Bus, poison: bytes) -> None:
    async with running_actors(bus, [SubmitGateway()]):
        answer = await bus.request(bus.subjects.api_submit, poison, timeout=3)
    reply = _REPLY.decode(answer)
    assert not reply.accepted
    assert reply.error is not None
    assert reply.error.kind == "invalid_request"
    assert TOO_DEEP in reply.error.message


@pytest.mark.parametrize("poison", POISONS, ids=["objects", "arrays"])
async def test_the_trace_api_answers_a_poison_query(bus: Bus, tmp_path: Path, poison: bytes) -> None:
    async with collector(bus, tmp_path / "trace.db"):
        answer = await ask(bus, poison)
        again = await ask(bus, SessionsQuery())  # and it still answers the next one
    assert isinstance(answer, QueryFailed)
    assert answer.error.kind == "invalid_query"
    assert TOO_DEEP in answer.error.message
    assert isinstance(again, SessionsAnswer)


async def test_client_wait_and_events_skip_poison(bus: Bus) -> None:
    sid = "ses_cw"
    await bus.publish_bytes(bus.subjects.out(sid, "result"), POISON_OBJECT)
    await bus.publish(bus.subjects.out(sid, "result"), SessionResult(session_id=sid, status="idle"))
    await bus.emit(AgentMessage(session_id=sid, agent="lead", thread_id="lead", text="one"))
    await bus.publish_bytes(bus.subjects.event(sid, "agent.message"), POISON_ARRAY)
    await bus.emit(SessionStatusIdle(session_id=sid, thread_id="lead", stop_reason="end_turn"))
    client = Client(bus)
    result = await client.wait(sid, timeout=5)
    async with asyncio.timeout(5):
        kinds = [event_kind(event) async for event in client.events(sid)]
    assert result.status == "idle"
    assert kinds == ["agent.message", "session.status_idle"]


async def test_tail_shows_poison_as_undecodable_and_goes_on(
    bus: Bus, nats_server: NatsServer, root: str
) -> None:
    subject = bus.subjects.event("ses_t", "agent.message")
    await bus.emit(AgentMessage(session_id="ses_t", text="before"))
    await bus.publish_bytes(subject, POISON_OBJECT)
    await bus.emit(AgentMessage(session_id="ses_t", text="after"))
    await round_trip(bus)
    args = ("--root", root, "--session", "ses_t", "--since", "1h", "--no-follow", "--json")
    code, out, err = await run_cli("tail", "--nats", nats_server.url, *args, timeout=30)
    assert code == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line.get("text", line["type"]) for line in lines] == ["before", "undecodable", "after"]
    assert TOO_DEEP in lines[1]["error"]


# --- 9. one trace database, many roots ---------------------------------------------------------------


async def emit_session(bus: Bus, session_id: str, count: int) -> None:
    for n in range(count):
        await bus.emit(AgentMessage(session_id=session_id, thread_id="lead", agent="lead", text=f"{n}"))
    await round_trip(bus)


async def test_two_roots_share_one_trace_database_and_lose_no_event(
    bus: Bus, nats_server: NatsServer, tmp_path: Path
) -> None:
    path = tmp_path / "trace.db"  # one data directory, as two roots on one machine share by default
    other = await Bus.connect(nats_server.url, root=f"{bus.subjects.root}x", name="test-other")
    try:
        await provision(other, settings=StreamSettings(max_age=3600))
        async with collector(bus, path) as first, collector(other, path) as second:
            await emit_session(bus, "ses_one", 50)  # both streams number their messages from 1
            await emit_session(other, "ses_two", 50)
            await eventually(
                lambda: first.count("ses_one") == 50 and second.count("ses_two") == 50, timeout=5
            )
            mine = await ask(bus, SessionsQuery())
            theirs = await ask(other, SessionsQuery())
            events = await ask(bus, EventsQuery(session_id="ses_two"))
    finally:
        await other.close()
    assert isinstance(mine, SessionsAnswer)
    assert isinstance(theirs, SessionsAnswer)
    assert [s.session_id for s in mine.sessions] == ["ses_one"]  # each root sees its own sessions
    assert [s.session_id for s in theirs.sessions] == ["ses_two"]
    assert events == EventsAnswer(events=[])


async def test_a_reset_stream_is_another_stream_to_the_collector(bus: Bus, nc: NATS, tmp_path: Path) -> None:
    path = tmp_path / "trace.db"
    async with collector(bus, path) as store:
        await emit_session(bus, "ses_before", 10)
        await eventually(lambda: store.count("ses_before") == 10, timeout=5)
    await nc.jetstream().delete_stream(bus.subjects.log_stream)  # an operator resets the log
    await provision(bus, settings=StreamSettings(max_age=3600))
    await emit_session(bus, "ses_after", 10)  # sequences 1 to 10 again
    async with collector(bus, path) as store:
        await eventually(lambda: store.count("ses_after") == 10, timeout=5)
        assert store.count("ses_before") == 10


#: the schema of the trace database before version 2: one row per stream sequence, whatever the stream
_VERSION_1 = """
CREATE TABLE events (
    seq INTEGER PRIMARY KEY, session_id TEXT NOT NULL, thread_id TEXT NOT NULL, agent TEXT NOT NULL,
    kind TEXT NOT NULL, time TEXT NOT NULL, span_id TEXT NOT NULL, parent_span_id TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX events_session ON events (session_id, time);
CREATE INDEX events_thread ON events (session_id, thread_id, time);
CREATE INDEX events_agent ON events (agent, time);
CREATE INDEX events_kind ON events (kind, time);
"""


async def test_a_version_1_database_is_migrated_and_keeps_working(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "trace.db"
    earlier = [
        AgentMessage(session_id="ses_old", thread_id="lead", agent="lead", text=f"{n}") for n in range(3)
    ]
    db = sqlite3.connect(path, isolation_level=None)
    db.executescript(_VERSION_1)
    for seq, event in enumerate(earlier, 1):
        row = (
            seq,
            "ses_old",
            "lead",
            "lead",
            "agent.message",
            event.time.isoformat(),
            "",
            "",
            encode(event).decode(),
        )
        db.execute("INSERT INTO events VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", row)
    db.close()
    async with collector(bus, path) as store:  # sequences 1 and 2 of this root's stream are new events
        await emit_session(bus, "ses_new", 2)
        await eventually(lambda: store.count("ses_new") == 2, timeout=5)
        old = await ask(bus, EventsQuery(session_id="ses_old"))
        sessions = await ask(bus, SessionsQuery())
        # a redelivery of what version 1 stored (same sequence, same msg_id) is not stored again
        stream = bus.subjects.log_stream
        assert store.add_many(stream, [(1, earlier[0], b"")]) == [False]
        assert store.add_many(stream, [(3, earlier[1], b"")]) == [True]  # not what seq 3 was
    assert isinstance(old, EventsAnswer)
    assert [event.msg_id for event in old.events] == [event.msg_id for event in earlier]
    assert isinstance(sessions, SessionsAnswer)
    assert {s.session_id for s in sessions.sessions} == {"ses_old", "ses_new"}


# --- 3. a stray message on a thread's history ----------------------------------------------------------


def turn(session_id: str, thread_id: str, index: int, words: str) -> ThreadTurn:
    content = Turn(role="user", content=[TextBlock(text=words)])
    return ThreadTurn(session_id=session_id, thread_id=thread_id, agent="logs", index=index, turn=content)


async def test_strays_on_a_history_subject_are_rejected_and_an_append_goes_past_them(bus: Bus) -> None:
    sid, thread = "ses_h", "t-1"
    subject = bus.subjects.history(sid, thread)
    rejections = await inbox(bus, bus.subjects.event(sid, "bus.message_rejected"), MessageRejectedEvent)
    log = ThreadLog(bus)
    history = await log.load(sid, thread)
    await log.append(history, turn(sid, thread, 0, "the task"))

    async def stray(payload: bytes, *, chained: bool = True, msg_id: str = "") -> None:
        """Publish on the thread's subject; ``chained``: with the precondition an append states."""
        stored = [m.seq async for m in read_subject(bus, bus.subjects.log_stream, subject)]
        headers = {"Nats-Expected-Last-Subject-Sequence": str(stored[-1])} if chained else {}
        await bus.publish_bytes(
            subject, payload, headers=headers | ({"Nats-Msg-Id": msg_id} if msg_id else {})
        )

    await stray(b"{not json")
    await stray(POISON_OBJECT)
    await stray(encode(turn(sid, "t-other", 1, "another thread's entry")))
    await stray(encode(turn(sid, thread, 0, "index 0 again")))
    # without the precondition, and with the Nats-Msg-Id the next real append uses
    taken = f"{sid}.{thread}.1"
    await stray(
        encode(turn(sid, thread, 1, "appended without the precondition")), chained=False, msg_id=taken
    )
    with structlog.testing.capture_logs() as logs:
        await log.append(history, turn(sid, thread, 1, "the real second entry"))  # the stale view goes on
    assert [entry["msg_id"] for entry in logs if entry["event"] == "history_msg_id_taken"] == [taken]
    reloaded = await log.load(sid, thread)
    reports = await rejections.take(5, timeout=5)
    assert [e.turn.text for e in reloaded.entries] == ["the task", "the real second entry"]
    assert len(reloaded.rejected) == 5
    reasons = [r.reason for r in reports]
    assert "JSON is malformed" in reasons[0]
    assert TOO_DEEP in reasons[1]
    assert (
        "an entry of session 'ses_h' thread 't-other' on the log of session 'ses_h' thread 't-1'"
        in reasons[2]
    )
    assert "index 0 does not follow the 1 entries before it" in reasons[3]
    assert (
        "not appended after the message before it: Nats-Expected-Last-Subject-Sequence is None" in reasons[4]
    )
    assert {(r.actor, r.subject, r.thread_id) for r in reports} == {("history", subject, thread)}
    await rejections.close()


class StrayBeforeAnswering:
    """The scripted model, but a stray lands on the thread's history while the subagent's model call
    runs: between the worker's load and its next append."""

    name = "scripted"

    def __init__(self, bus: Bus, inner: ScriptedModel) -> None:
        self.bus = bus
        self.inner = inner
        self.strays = 0

    async def complete(self, request: ModelRequest) -> ModelResponse:
        if request.agent == "logs" and not self.strays:
            self.strays += 1
            stray = turn(request.session_id, request.thread_id, 1, "a foreign entry")
            await self.bus.publish_bytes(
                self.bus.subjects.history(request.session_id, request.thread_id), encode(stray)
            )
        return await self.inner.complete(request)


async def test_a_stray_history_entry_mid_thread_does_not_leave_the_lead_waiting(bus: Bus) -> None:
    sid = "ses_stray"
    thread = thread_id_for("toolu_s")
    lead = [calls(("toolu_s", "delegate", {"agent": "logs", "task": "look"})), text("done")]
    model = StrayBeforeAnswering(bus, ScriptedModel({"lead": lead, "logs": [text("found it")]}))
    rejections = await inbox(bus, bus.subjects.event(sid, "bus.message_rejected"), MessageRejectedEvent)
    async with running_agents(bus, model, agents=["logs"]):
        await bus.publish(
            bus.subjects.submit, SessionSubmit(session_id=sid, task="x", team_spec=team("logs"))
        )
        result = await Client(bus).wait(sid, timeout=20)
        rejected = await rejections.next(timeout=5)
    assert result.status == "idle", result.final_text
    assert model.strays == 1
    replies = model.inner.calls_by("lead")[1].request.messages[-1].content
    assert "found it" in json.dumps(msgspec.to_builtins(replies))
    assert (rejected.thread_id, rejected.actor) == (thread, "subagent:logs")
    assert "Nats-Expected-Last-Subject-Sequence is None" in rejected.reason
    await rejections.close()
