"""Actors as real OS processes: graceful SIGTERM and redelivery after kill -9."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AbstractAsyncContextManager

import pytest

from bus.codec import Decoder
from bus.connection import Bus
from tests.conftest import NatsServer
from tests.jobs import Job, JobDone
from tests.procs import ready_process

DONE = Decoder(JobDone)
pytestmark = pytest.mark.slow


def worker(
    server: NatsServer, root: str, *args: str
) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """A worker process running the jobs actor; yielded once it printed READY."""
    return ready_process("tests.jobs", server.url, root, *args)


async def next_done(sub: object, timeout: float = 20.0) -> JobDone:
    msg = await sub.next_msg(timeout=timeout)  # type: ignore[attr-defined]
    return DONE.decode(msg.data)


async def test_sigterm_lets_the_slow_handler_finish_and_exits_cleanly(
    nats_server: NatsServer, bus: Bus
) -> None:
    started = await bus._nc.subscribe(f"{bus.subjects.root}.test.started")
    done = await bus._nc.subscribe(bus.subjects.out("ses_p", "done"))
    async with worker(nats_server, bus.subjects.root) as proc:
        await bus.publish(bus.subjects.task("ses_p", "jobs"), Job(session_id="ses_p", n=1, sleep=1.5))
        assert (await next_done(started)).pid == proc.pid  # the handler is running
        proc.send_signal(signal.SIGTERM)
        reply = await next_done(done)
        assert (reply.n, reply.delivery, reply.pid) == (1, 1, proc.pid)
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"STOPPED handled=1 returned=0" in out
    await bus._nc.flush()
    info = await bus._js.consumer_info(bus.subjects.log_stream, "jobs")
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
    for sub in (started, done):
        await sub.unsubscribe()


async def test_killed_worker_message_is_redelivered_to_another(nats_server: NatsServer, bus: Bus) -> None:
    started = await bus._nc.subscribe(f"{bus.subjects.root}.test.started")
    done = await bus._nc.subscribe(bus.subjects.out("ses_k", "done"))
    root = bus.subjects.root
    async with (
        worker(nats_server, root, "--ack-wait", "1") as a,
        worker(nats_server, root, "--ack-wait", "1") as b,
    ):
        # The first delivery hangs for a minute: whoever gets it is killed while holding it.
        await bus.publish(bus.subjects.task("ses_k", "jobs"), Job(session_id="ses_k", n=9, sleep_first=60))
        first = await next_done(started)
        victim, survivor = (a, b) if first.pid == a.pid else (b, a)
        assert first.pid == victim.pid
        assert first.delivery == 1
        victim.kill()
        await victim.wait()
        reply = await next_done(done)
        assert (reply.n, reply.pid, reply.delivery) == (9, survivor.pid, 2)
        survivor.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await survivor.wait()
        assert survivor.returncode == 0
    for sub in (started, done):
        await sub.unsubscribe()
