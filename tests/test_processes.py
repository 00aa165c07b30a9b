"""Actors as real OS processes: graceful SIGTERM and redelivery after kill -9."""

from __future__ import annotations

import asyncio
import signal
from contextlib import AbstractAsyncContextManager

import pytest
from nats.aio.client import Client as NATS

from bus.connection import Bus
from tests.helpers import NatsServer, consumer_state, inbox, ready_process
from tests.jobs import Job, JobDone

pytestmark = pytest.mark.slow


def worker(
    server: NatsServer, root: str, *args: str
) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """A worker process running the jobs actor; yielded once it printed READY."""
    return ready_process("tests.jobs", server.url, root, *args)


async def test_sigterm_lets_the_slow_handler_finish_and_exits_cleanly(
    nats_server: NatsServer, bus: Bus, nc: NATS
) -> None:
    started = await inbox(bus, f"{bus.subjects.root}.test.started", JobDone)
    done = await inbox(bus, bus.subjects.out("ses_p", "done"), JobDone)
    async with worker(nats_server, bus.subjects.root) as proc:
        await bus.publish(bus.subjects.task("ses_p", "jobs"), Job(session_id="ses_p", n=1, sleep=1.5))
        assert (await started.next(timeout=20)).pid == proc.pid  # the handler is running
        proc.send_signal(signal.SIGTERM)
        reply = await done.next(timeout=20)
        assert (reply.n, reply.delivery, reply.pid) == (1, 1, proc.pid)
        async with asyncio.timeout(20):
            out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert b"STOPPED handled=1 returned=0" in out
    assert await consumer_state(bus, nc, "jobs") == (0, 0, 0)  # (pending, ack pending, redelivered)
    for box in (started, done):
        await box.close()


async def test_killed_worker_message_is_redelivered_to_another(nats_server: NatsServer, bus: Bus) -> None:
    started = await inbox(bus, f"{bus.subjects.root}.test.started", JobDone)
    done = await inbox(bus, bus.subjects.out("ses_k", "done"), JobDone)
    root = bus.subjects.root
    async with (
        worker(nats_server, root, "--ack-wait", "1") as a,
        worker(nats_server, root, "--ack-wait", "1") as b,
    ):
        # The first delivery hangs for a minute: whoever gets it is killed while holding it.
        await bus.publish(bus.subjects.task("ses_k", "jobs"), Job(session_id="ses_k", n=9, sleep_first=60))
        first = await started.next(timeout=20)
        victim, survivor = (a, b) if first.pid == a.pid else (b, a)
        assert first.pid == victim.pid
        assert first.delivery == 1
        victim.kill()
        await victim.wait()
        reply = await done.next(timeout=20)
        assert (reply.n, reply.pid, reply.delivery) == (9, survivor.pid, 2)
        survivor.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            await survivor.wait()
        assert survivor.returncode == 0
    for box in (started, done):
        await box.close()
