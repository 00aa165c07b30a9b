"""Subjects, provisioning, publishing with dedup and trace context, connection errors."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.client import Client as NATS

from bus.connection import MSG_ID, TRACEPARENT, Bus
from bus.errors import BusError, BusUnavailable, ConfigError, HistoryConflict, ProvisionError, ServerRefused
from bus.history import ThreadLog
from bus.provision import StreamSettings, agent_consumer, ensure_consumer, provision
from bus.subjects import Subjects
from bus.tracing import SpanContext, current_span
from schemas import SessionSubmit
from schemas.conversation import ContentBlock, TextBlock, ThreadTurn, Turn
from schemas.session import SessionCancel
from schemas.trace import ThreadCreated
from tests.helpers import NatsServer, subscribed


def test_subjects_keep_the_session_in_a_fixed_position() -> None:
    s = Subjects("sw")
    assert s.submit == "sw.submit"
    assert s.task("ses_1", "logs") == "sw.s.ses_1.task.logs"
    assert s.reply("ses_1", "thr_1") == "sw.s.ses_1.reply.thr_1"
    assert s.event("ses_1", "session.thread_created") == "sw.s.ses_1.evt.session.thread_created"
    assert s.event("", "bus.message_rejected") == "sw.sys.evt.bus.message_rejected"
    assert s.ctl("ses_1") == "sw.s.ses_1.ctl"
    assert s.session("ses_1") == "sw.s.ses_1.>"
    assert s.session_of("sw.s.ses_1.task.logs") == "ses_1"
    assert s.session_of("sw.submit") == ""
    dotted = Subjects("acme.prod")
    assert dotted.submit == "acme.prod.submit"
    assert dotted.log_stream == "acme_prod_log"


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.task("ses.1", "logs"), "session id 'ses.1' is not a valid subject token"),
        (lambda s: s.task("ses_1", "lo gs"), "agent name 'lo gs' is not a valid subject token"),
        (lambda s: s.task("ses_1", "*"), "agent name '*' is not a valid subject token"),
        (lambda s: s.reply("ses_1", ">"), "thread id '>' is not a valid subject token"),
        (lambda s: s.task("", "logs"), "session id '' is not a valid subject token"),
        (lambda s: s.event("ses_1", "Bad Kind"), "event kind 'Bad Kind' is not valid"),
        (lambda s: Subjects("sw..x"), "subject root part '' is not a valid subject token"),
        (lambda s: Subjects("sw.>"), "subject root part '>' is not a valid subject token"),
    ],
)
def test_bad_tokens_are_named(call: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        call(Subjects("sw"))  # type: ignore[operator]
    assert message in str(info.value)


async def test_provisioning_is_idempotent(bus: Bus, nc: NATS) -> None:
    await provision(bus, settings=StreamSettings(max_age=3600), agents=("logs",))
    await provision(bus, settings=StreamSettings(max_age=3600), agents=("logs",))
    js = nc.jetstream()
    stream = await js.stream_info(bus.subjects.log_stream)
    assert stream.config.subjects == [
        bus.subjects.submit,
        f"{bus.subjects.root}.s.>",
        f"{bus.subjects.root}.sys.>",
    ]
    names = {c.name for c in await js.consumers_info(bus.subjects.log_stream)}
    assert names == {"lead", "agent_logs", "grader", "webhooks", "webhook_deliveries"}
    await js.key_value(bus.subjects.sessions_bucket)
    await js.key_value(bus.subjects.registry_bucket)
    await js.object_store(bus.subjects.files_bucket)


async def test_provisioning_reconciles_changed_settings(bus: Bus, nc: NATS) -> None:
    await provision(bus, settings=StreamSettings(max_age=7200))
    js = nc.jetstream()
    stream = await js.stream_info(bus.subjects.log_stream)
    assert stream.config.max_age == 7200
    spec = agent_consumer(bus.subjects, "logs")
    await ensure_consumer(bus, spec)
    await ensure_consumer(bus, type(spec)(**{**spec.__dict__, "ack_wait": 90.0}))
    info = await js.consumer_info(bus.subjects.log_stream, "agent_logs")
    assert info.config.ack_wait == 90.0


async def test_publish_dedups_on_msg_id_and_carries_trace_context(bus: Bus, nc: NATS) -> None:
    sub = await nc.subscribe(bus.subjects.submit)  # a raw subscription: the headers as they were sent
    await nc.flush()
    msg = SessionSubmit(session_id="ses_1", task="x")
    span = SpanContext.new_root()
    token = current_span.set(span)
    try:
        first = await bus.publish(bus.subjects.submit, msg)
        second = await bus.publish(bus.subjects.submit, msg)
    finally:
        current_span.reset(token)
    assert first == second  # the repeat was recognised as a duplicate, not stored again
    assert await bus.stream_messages(bus.subjects.log_stream) == 1
    got = await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    assert got.headers is not None
    assert got.headers[MSG_ID] == msg.msg_id
    assert SpanContext.from_traceparent(got.headers[TRACEPARENT]) == SpanContext(span.trace_id, span.span_id)


async def test_emit_puts_events_on_their_session_subject(bus: Bus, nc: NATS) -> None:
    sub = await nc.subscribe(bus.subjects.events("ses_9"))
    probe = bus.subjects.event("ses_9", "probe")
    await subscribed(nc, sub, probe)
    await bus.emit(ThreadCreated(session_id="ses_9", thread_id="thr_1", agent="logs"))
    got = await sub.next_msg(timeout=5)
    while got.subject == probe:  # a late second probe
        got = await sub.next_msg(timeout=5)
    await sub.unsubscribe()
    assert got.subject == f"{bus.subjects.root}.s.ses_9.evt.session.thread_created"


async def test_publish_outside_any_stream_is_a_clear_error(nats_server: NatsServer) -> None:
    bus = await Bus.connect(nats_server.url, root="never_provisioned")
    try:
        with pytest.raises(BusError, match=r"no stream stores subject 'never_provisioned\.submit'"):
            await bus.publish(bus.subjects.submit, SessionSubmit(session_id="s", task="x"), timeout=2)
    finally:
        await bus.close()


async def test_unreachable_server_fails_fast_with_the_cause() -> None:
    with pytest.raises(
        BusUnavailable, match=r"cannot reach NATS at nats://127.0.0.1:1: .*(refused|Connect call failed)"
    ):
        await Bus.connect("nats://127.0.0.1:1", timeout=5)


def test_traceparent_parsing() -> None:
    span = SpanContext.new_root()
    assert SpanContext.from_traceparent(span.traceparent) == span
    child = span.child()
    assert (child.trace_id, child.parent_span_id) == (span.trace_id, span.span_id)
    for bad in (None, "", "garbage", "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "01-abc"):
        assert SpanContext.from_traceparent(bad) is None


async def test_provisioning_without_jetstream_says_so(plain_nats_server: NatsServer) -> None:
    bus = await Bus.connect(plain_nats_server.url, root="nojs")
    try:
        with pytest.raises(
            ProvisionError, match=r"JetStream is not available on this server \(start nats-server"
        ):
            await provision(bus)
    finally:
        await bus.close()


async def test_kv_keys_lists_every_live_key_without_racing(bus: Bus, nc: NATS) -> None:
    kv = await bus.kv(bus.subjects.sessions_bucket)
    assert await kv.keys() == []
    for n in range(300):
        await kv.put(f"k{n:03d}", b"v")
    await kv.put("other", b"v")
    raw = await nc.jetstream().key_value(bus.subjects.sessions_bucket)
    await raw.delete("k000")
    await raw.purge("k001")
    for _ in range(5):  # nats-py's keys() could miss keys still in flight; ours knows the count first
        keys = await kv.keys()
        assert len(keys) == 299
        assert "k000" not in keys
        assert "k001" not in keys
    assert await kv.keys("other") == ["other"]


async def test_kv_values_reads_the_live_keys_of_a_pattern_in_one_go(bus: Bus, nc: NATS) -> None:
    kv = await bus.kv(bus.subjects.api_bucket)
    for key in ("acme.agent.a1", "acme.agent.a2", "acme.agentv.a1-v1", "acme.env.e1", "globex.agent.g1"):
        await kv.put(key, key.encode())
    raw = await nc.jetstream().key_value(bus.subjects.api_bucket)
    await raw.delete("acme.agent.a2")
    assert await kv.values("acme.agent.*") == [("acme.agent.a1", b"acme.agent.a1")]
    assert [key for key, _ in await kv.values("*.agent.*")] == ["acme.agent.a1", "globex.agent.g1"]
    assert len(await kv.values()) == 4


async def test_two_workers_extending_one_thread_conflict_and_the_loser_is_told(bus: Bus) -> None:
    """The server refuses the second append at the same index (expected last subject sequence); the
    loser gets :class:`HistoryConflict`, never a generic bus error, and the log keeps one entry."""
    log = ThreadLog(bus)
    first, second = await log.load("ses_h", "t-1"), await log.load("ses_h", "t-1")

    def turn(text: str) -> ThreadTurn:
        content: list[ContentBlock] = [TextBlock(text=text)]
        user = Turn(role="user", content=content)
        return ThreadTurn(session_id="ses_h", thread_id="t-1", agent="a", index=0, turn=user)

    await log.append(first, turn("from the first worker"))
    with pytest.raises(HistoryConflict) as lost:
        await log.append(second, turn("from the second worker"))
    assert isinstance(lost.value.__cause__, ServerRefused)
    stored = await log.load("ses_h", "t-1")
    assert [e.turn.content[0] for e in stored.entries] == [TextBlock(text="from the first worker")]


async def test_a_cancelled_settle_does_not_strand_what_the_server_sends_after_it(bus: Bus) -> None:
    """nats-py fails its read loop on the PONG of a flush cancelled midway (the waiter is a cancelled
    future), and what arrived with that PONG waits in its buffer until more bytes come; settle()
    lets its flush finish instead, so a message sent right after arrives at once."""
    for _ in range(20):
        got: asyncio.Queue[SessionCancel] = asyncio.Queue()
        listener = await bus.listen("_INBOX.settle-test", SessionCancel, got.put_nowait)
        await bus.settle()
        settling = asyncio.ensure_future(bus.settle())
        for _ in range(100):  # until its PING is out and its PONG awaited
            await asyncio.sleep(0)
            if bus._nc._pongs:
                break
        assert bus._nc._pongs
        settling.cancel()
        await bus.publish_core("_INBOX.settle-test", SessionCancel(session_id="ses_x"))
        async with asyncio.timeout(2):  # stranded, it would wait for the server's next PING (2 min)
            assert (await got.get()).session_id == "ses_x"
        await listener.close()
