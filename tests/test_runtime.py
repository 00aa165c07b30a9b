"""The actor runtime in one process: concurrency, rejection of bad input, heartbeats, retries, failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterator, MutableMapping, Sequence
from typing import Any

import nats.errors
import pytest
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from bus.actor import Context
from bus.codec import encode
from bus.connection import REPLY_TO, Bus
from bus.provision import ensure_consumer
from bus.runtime import RuntimeSettings
from schemas.base import ErrorInfo, Message
from schemas.trace import MessageRejected, SessionErrorEvent
from tests.helpers import Inbox, consumer_state, inbox
from tests.jobs import Job, JobActor, JobDone, running


async def jobs_state(bus: Bus, nc: NATS) -> tuple[int | None, int | None, int | None]:
    """(pending, ack pending, redelivered) of the jobs consumer.

    Call it after the runtime stopped: stopping waits for every handler, and a handler acks only after
    its reply is out, so a reply in hand does not yet mean an ack was sent.
    """
    return await consumer_state(bus, nc, "jobs")


async def done_on(bus: Bus, session_id: str) -> Inbox[JobDone]:
    return await inbox(bus, bus.subjects.out(session_id, "done"), JobDone)


async def test_200_messages_concurrency_8_all_handled_once(bus: Bus, nc: NATS) -> None:
    actor = JobActor()
    done = await done_on(bus, "ses_a")
    async with running(bus, actor, RuntimeSettings(concurrency=8)):
        for n in range(200):
            await bus.publish(bus.subjects.task("ses_a", "jobs"), Job(session_id="ses_a", n=n, sleep=0.005))
        replies = await done.take(200)
        assert sorted(r.n for r in replies) == list(range(200))
        assert all(r.delivery == 1 for r in replies)
    assert await jobs_state(bus, nc) == (0, 0, 0)
    assert all(d == [1] for d in actor.deliveries.values())
    assert len(actor.deliveries) == 200
    assert 2 <= actor.max_active <= 8
    await done.close()


async def test_bad_messages_are_rejected_and_the_next_good_one_is_handled(bus: Bus, nc: NATS) -> None:
    subject = bus.subjects.task("ses_b", "jobs")
    rejected_sub = await inbox(bus, f"{bus.subjects.root}.*.evt.bus.message_rejected", MessageRejected)
    session_rejected_sub = await inbox(
        bus, bus.subjects.event("ses_b", "bus.message_rejected"), MessageRejected
    )
    done = await done_on(bus, "ses_b")
    with structlog.testing.capture_logs() as logs:
        async with running(bus, JobActor(), RuntimeSettings(max_bytes=1000)):
            await bus.publish_bytes(subject, b"\x00garbage{")
            await bus.publish_bytes(
                subject, json.dumps({"type": "test.nope.v1", "session_id": "ses_b"}).encode()
            )
            await bus.publish_bytes(subject, encode(Job(session_id="ses_b", n=1, fail="x" * 2000)))
            await bus.publish(subject, Job(session_id="ses_b", n=7))
            [reply] = await done.take(1)
            assert reply.n == 7
    assert await jobs_state(bus, nc) == (0, 0, 0)  # terminated, not waiting for redelivery
    reasons = [entry["reason"] for entry in logs if entry["event"] == "message_rejected"]
    assert len(reasons) == 3
    assert "JSON is malformed" in reasons[0]
    assert "Invalid value 'test.nope.v1' - at `$.type`" in reasons[1]
    assert "payload of 2" in reasons[2]
    assert "over the 1000-byte limit" in reasons[2]
    no_session = await rejected_sub.next(timeout=5)
    assert no_session.session_id == ""
    assert no_session.subject == subject
    assert no_session.actor == "jobs"
    with_session = [await session_rejected_sub.next(timeout=5)]
    assert with_session[0].session_id == "ses_b"
    for sub in (rejected_sub, session_rejected_sub, done):
        await sub.close()


async def test_handler_longer_than_ack_wait_is_not_redelivered(bus: Bus, nc: NATS) -> None:
    actor = JobActor(ack_wait=0.5)
    done = await done_on(bus, "ses_c")
    async with running(bus, actor):
        await bus.publish(bus.subjects.task("ses_c", "jobs"), Job(session_id="ses_c", n=1, sleep=2.0))
        [reply] = await done.take(1)
        assert reply.delivery == 1
    assert await jobs_state(bus, nc) == (0, 0, 0)
    assert actor.deliveries == {1: [1]}
    await done.close()


async def test_retryable_failure_is_retried(bus: Bus) -> None:
    actor = JobActor()
    done = await done_on(bus, "ses_d")
    async with running(bus, actor):
        await bus.publish(bus.subjects.task("ses_d", "jobs"), Job(session_id="ses_d", n=1, fail="retry"))
        [reply] = await done.take(1)
        assert reply.delivery == 2
        assert not reply.error
    assert actor.deliveries == {1: [1, 2]}
    await done.close()


async def test_failure_becomes_a_typed_reply_and_an_error_event(bus: Bus, nc: NATS) -> None:
    done = await done_on(bus, "ses_e")
    errors = await inbox(bus, bus.subjects.event("ses_e", "session.error"), SessionErrorEvent)
    actor = JobActor()
    async with running(bus, actor):
        await bus.publish(bus.subjects.task("ses_e", "jobs"), Job(session_id="ses_e", n=3, fail="crash"))
        await bus.publish(bus.subjects.task("ses_e", "jobs"), Job(session_id="ses_e", n=4))
        replies = {r.n: r for r in await done.take(2)}
        assert replies[3].delivery == -1
        assert replies[3].error == "job 3 crashed"
        assert replies[4].delivery == 1
        event = await errors.next(timeout=5)
        assert (event.error.kind, event.error.message) == ("RuntimeError", "job 3 crashed")
        assert event.span_id  # the handler's span
    assert await jobs_state(bus, nc) == (0, 0, 0)
    assert actor.deliveries[3] == [1]  # terminated, not redelivered
    for sub in (done, errors):
        await sub.close()


async def test_reply_to_header_routes_the_reply(bus: Bus) -> None:
    reply_to = f"_INBOX.{uuid.uuid4().hex}"
    sub = await inbox(bus, reply_to, JobDone)
    async with running(bus, JobActor()):
        await bus.publish(
            bus.subjects.task("ses_f", "jobs"), Job(session_id="ses_f", n=5), headers={REPLY_TO: reply_to}
        )
        [reply] = await sub.take(1)
        assert reply.n == 5
    await sub.close()


async def test_stop_with_nothing_in_flight_is_prompt(bus: Bus) -> None:
    async with asyncio.timeout(3):  # far below the pull request's expiry: stop does not wait for it
        async with running(bus, JobActor(), RuntimeSettings(pull_expires=30.0)):
            pass


class LogWaiter:
    """A structlog processor that records events and wakes a waiter after ``count`` named ``event``."""

    def __init__(self, event: str, count: int) -> None:
        self.event, self.count = event, count
        self.entries: list[MutableMapping[str, Any]] = []
        self.reached = asyncio.Event()

    def __call__(
        self, logger: object, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if event_dict.get("event") == self.event:
            self.entries.append(event_dict)
            if len(self.entries) >= self.count:
                self.reached.set()
        raise structlog.DropEvent


@contextlib.contextmanager
def waiting_for_logs(event: str, count: int) -> Iterator[LogWaiter]:
    waiter = LogWaiter(event, count)
    old = structlog.get_config()
    structlog.configure(processors=[waiter], cache_logger_on_first_use=False)
    try:
        yield waiter
    finally:
        structlog.configure(**old)


async def test_missing_consumer_backs_off_instead_of_spinning(bus: Bus) -> None:
    """Bound to a consumer that does not exist: a clear warning, and pulls slow down exponentially."""
    with waiting_for_logs("pull_status", 4) as logs:
        async with running(bus, JobActor(), RuntimeSettings(create_consumer=False)):
            started = asyncio.get_running_loop().time()
            async with asyncio.timeout(20):
                await logs.reached.wait()
            elapsed = asyncio.get_running_loop().time() - started
    assert elapsed >= 0.1 + 0.2 + 0.4  # the backoff before pulls 2, 3 and 4 (a spin takes ~1 ms)
    assert logs.entries[0]["status"] == "503"
    assert "no consumer 'jobs'" in str(logs.entries[0]["description"])
    assert [e["consecutive"] for e in logs.entries[:4]] == [1, 2, 3, 4]


async def test_consumer_batch_cap_is_respected(bus: Bus) -> None:
    """A consumer that allows at most 2 messages per pull still gets all its work done."""
    spec = JobActor().consumer(bus.subjects)
    stream = bus.subjects.log_stream
    config = {
        "durable_name": spec.durable,
        "filter_subject": spec.filter_subjects[0],
        "ack_policy": "explicit",
        "deliver_policy": "new",
        "max_batch": 2,
    }
    request = json.dumps({"stream_name": stream, "config": config, "action": "create"}).encode()
    answer = await bus.request(f"$JS.API.CONSUMER.CREATE.{stream}.{spec.durable}", request, timeout=5)
    assert b'"error"' not in answer, answer
    done = await done_on(bus, "ses_g")
    async with running(bus, JobActor(), RuntimeSettings(concurrency=8, create_consumer=False)) as runtime:
        for n in range(10):
            await bus.publish(bus.subjects.task("ses_g", "jobs"), Job(session_id="ses_g", n=n))
        assert sorted(r.n for r in await done.take(10)) == list(range(10))
        assert runtime._max_batch == 2
    await done.close()


async def test_heartbeats_cover_a_slow_reply(bus: Bus, nc: NATS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Publishing the reply outlasts ack_wait: the message is still not redelivered."""
    publish = bus.publish

    async def slow_publish(subject: str, msg: object, **kwargs: object) -> int:
        if subject.endswith(".out.done"):
            await asyncio.sleep(1.5)  # the bus is slow to confirm (ack_wait is 0.5 s)
        return await publish(subject, msg, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(bus, "publish", slow_publish)
    actor = JobActor(ack_wait=0.5)
    done = await done_on(bus, "ses_h")
    async with running(bus, actor):
        await publish(bus.subjects.task("ses_h", "jobs"), Job(session_id="ses_h", n=1))
        [reply] = await done.take(1)
        assert reply.delivery == 1
    assert actor.deliveries == {1: [1]}
    assert await jobs_state(bus, nc) == (0, 0, 0)
    await done.close()


class BrokenFailureActor(JobActor):
    def failure(self, msg: Job, error: ErrorInfo) -> Message | None:
        raise ValueError("the failure reply itself is broken")


async def test_a_crash_is_terminated_even_when_reporting_it_fails(bus: Bus, nc: NATS) -> None:
    errors = await inbox(bus, bus.subjects.event("ses_i", "session.error"), SessionErrorEvent)
    actor = BrokenFailureActor()
    async with running(bus, actor):
        await bus.publish(bus.subjects.task("ses_i", "jobs"), Job(session_id="ses_i", n=1, fail="crash"))
        event = await errors.next(timeout=10)
        assert event.error.message == "job 1 crashed"
    assert actor.deliveries == {1: [1]}  # ran once: terminated, not retried
    assert await jobs_state(bus, nc) == (0, 0, 0)
    await errors.close()


async def test_bad_session_id_is_rejected_and_reported_on_the_system_subject(bus: Bus) -> None:
    system = await inbox(bus, bus.subjects.event("", "bus.message_rejected"), MessageRejected)
    async with running(bus, JobActor()):
        payload = encode({"type": "test.job.v1", "session_id": "a b", "n": 1})
        await bus.publish_bytes(bus.subjects.task("ses_j", "jobs"), payload)
        event = await system.next(timeout=10)
    assert event.session_id == ""
    assert "at `$.session_id`" in event.reason
    await system.close()


class BatchJobs(JobActor):
    """JobActor with a batch handler: replies to every job of a batch; a batch holding a job that
    should crash fails as a whole (the runtime then handles its jobs one at a time)."""

    def __init__(self, *, ack_wait: float = 30.0, first_batch_takes: float = 0.0) -> None:
        super().__init__(ack_wait=ack_wait)
        self.batches: list[list[int]] = []
        self.first_batch_takes = first_batch_takes

    async def handle_batch(self, batch: Sequence[tuple[Job, Context]]) -> None:
        self.batches.append([job.n for job, _ in batch])
        if len(self.batches) == 1 and self.first_batch_takes:
            await asyncio.sleep(self.first_batch_takes)  # a slow batch (a slow disk, say)
        if any(job.fail == "crash" for job, _ in batch):
            raise RuntimeError("one job in this batch is bad")
        for job, ctx in batch:
            assert ctx.raw == encode(job)  # the bytes as they arrived
            await ctx.bus.publish_core(
                ctx.bus.subjects.out(job.session_id, "done"),
                JobDone(session_id=job.session_id, n=job.n, pid=0, delivery=ctx.delivery),
            )


async def test_a_batch_actor_gets_a_backlog_in_batches_each_acked(bus: Bus, nc: NATS) -> None:
    actor = BatchJobs()
    done = await done_on(bus, "ses_batch")
    subject = bus.subjects.task("ses_batch", "jobs")
    await ensure_consumer(bus, actor.consumer(bus.subjects))  # a backlog: published before the actor runs
    for n in range(500):
        await bus.publish(subject, Job(session_id="ses_batch", n=n))
    await bus.publish_bytes(subject, b"{not json")  # rejected, not part of any batch
    async with running(bus, actor, RuntimeSettings(concurrency=300, batch_size=100)):
        replies = await done.take(500)
    assert sorted(r.n for r in replies) == list(range(500))
    assert await jobs_state(bus, nc) == (0, 0, 0)
    assert sorted(n for batch in actor.batches for n in batch) == list(range(500))  # each once
    assert max(len(batch) for batch in actor.batches) == 100  # a backlog goes in full batches
    assert actor.deliveries == {}  # handle() was never needed
    await done.close()


async def test_a_failing_batch_is_handled_one_by_one_so_only_the_bad_message_fails(
    bus: Bus, nc: NATS
) -> None:
    actor = BatchJobs()
    done = await done_on(bus, "ses_bad")
    subject = bus.subjects.task("ses_bad", "jobs")
    await ensure_consumer(bus, actor.consumer(bus.subjects))
    for n in range(20):
        await bus.publish(subject, Job(session_id="ses_bad", n=n, fail="crash" if n == 7 else ""))
    async with running(bus, actor, RuntimeSettings(concurrency=64, batch_size=64)):
        replies = await done.take(20)
    assert sorted(r.n for r in replies) == list(range(20))
    [failed] = [r for r in replies if r.error]
    assert (failed.n, failed.delivery, failed.error) == (7, -1, "job 7 crashed")  # handle()'s typed failure
    assert await jobs_state(bus, nc) == (0, 0, 0)  # all settled: nothing waits for a redelivery
    await done.close()


async def test_waiting_messages_get_heartbeats_while_a_slow_batch_runs(bus: Bus, nc: NATS) -> None:
    actor = BatchJobs(ack_wait=1.0, first_batch_takes=2.5)
    done = await done_on(bus, "ses_slow")
    await ensure_consumer(bus, actor.consumer(bus.subjects))
    for n in range(4):
        await bus.publish(bus.subjects.task("ses_slow", "jobs"), Job(session_id="ses_slow", n=n))
    async with running(bus, actor, RuntimeSettings(concurrency=8, batch_size=1)):
        replies = await done.take(4)
    assert sorted(r.n for r in replies) == [0, 1, 2, 3]
    assert all(r.delivery == 1 for r in replies)  # the ones waiting behind the slow batch were kept alive
    assert sorted(n for batch in actor.batches for n in batch) == [0, 1, 2, 3]
    assert await jobs_state(bus, nc) == (0, 0, 0)
    await done.close()


@pytest.mark.parametrize("make", [JobActor, BatchJobs])
async def test_a_failure_while_rejecting_does_not_stop_the_actor(
    bus: Bus, nc: NATS, monkeypatch: pytest.MonkeyPatch, make: type[JobActor]
) -> None:
    real_term = Msg.term
    calls: list[int] = []

    async def term_failing_once(self: Msg) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise nats.errors.OutboundBufferLimitError  # what publishing into a full buffer raises
        await real_term(self)

    monkeypatch.setattr(Msg, "term", term_failing_once)
    done = await done_on(bus, "ses_rej")
    async with running(bus, make(), RuntimeSettings(retry_delays=(0.05,))) as runtime:
        await bus.publish_bytes(bus.subjects.task("ses_rej", "jobs"), b"{garbage")
        await bus.publish(bus.subjects.task("ses_rej", "jobs"), Job(session_id="ses_rej", n=1))
        [reply] = await done.take(1)
        assert reply.n == 1
        async with asyncio.timeout(10):  # the garbage comes back (nak'ed) and is terminated this time
            while runtime.stats.rejected < 2:  # noqa: ASYNC110 - counted by the runtime's tasks
                await asyncio.sleep(0.01)
    assert await jobs_state(bus, nc) == (0, 0, 0)
    await done.close()
