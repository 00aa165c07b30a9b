"""A test actor: ``Job`` in, ``JobDone`` out, with knobs for slowness, retries and crashes.

Used in-process by the runtime tests and as a separate worker process (``python -m tests.jobs URL ROOT``)
by the process tests.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from bus.connection import Bus
from bus.errors import Retryable
from bus.lifecycle import serve
from bus.logs import configure_logging
from bus.provision import ConsumerSpec
from bus.runtime import ActorRuntime, BaseActor, Context, RuntimeSettings
from bus.subjects import Subjects
from schemas.base import ErrorInfo, Message


class Job(Message, frozen=True, kw_only=True, tag="test.job.v1"):
    n: int
    sleep: float = 0.0
    sleep_first: float = 0.0  # only on the first delivery
    fail: str = ""  # "retry": Retryable on the first delivery; "crash": always raises


class JobDone(Message, frozen=True, kw_only=True, tag="test.job_done.v1"):
    n: int
    pid: int
    delivery: int
    error: str = ""


class JobActor(BaseActor[Job]):
    role = "jobs"
    inbox = Job

    def __init__(self, *, ack_wait: float = 30.0, max_deliver: int = 5, announce: bool = False) -> None:
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.announce = announce
        self.active = 0
        self.max_active = 0
        self.deliveries: dict[int, list[int]] = {}

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        return ConsumerSpec(
            durable="jobs",
            filter_subjects=(subjects.tasks_for("jobs"),),
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
        )

    async def handle(self, msg: Job, ctx: Context) -> Message | None:
        self.deliveries.setdefault(msg.n, []).append(ctx.delivery)
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.announce:  # tell the test this process has the job in hand
                started = JobDone(session_id=msg.session_id, n=msg.n, pid=os.getpid(), delivery=ctx.delivery)
                await ctx.bus.publish_core(f"{ctx.bus.subjects.root}.test.started", started)
                await ctx.bus.server_info()  # a round trip: the announcement is out before the work
            if msg.sleep_first and ctx.delivery == 1:
                await asyncio.sleep(msg.sleep_first)
            if msg.sleep:
                await asyncio.sleep(msg.sleep)
            if msg.fail == "retry" and ctx.delivery == 1:
                raise Retryable("flaky dependency", delay=0.05)
            if msg.fail == "crash":
                raise RuntimeError(f"job {msg.n} crashed")
            return JobDone(session_id=msg.session_id, n=msg.n, pid=os.getpid(), delivery=ctx.delivery)
        finally:
            self.active -= 1

    def failure(self, msg: Job, error: ErrorInfo) -> Message | None:
        return JobDone(session_id=msg.session_id, n=msg.n, pid=os.getpid(), delivery=-1, error=error.message)

    def reply_subject(self, msg: Job, reply: Message, ctx: Context) -> str | None:
        return ctx.reply_to or ctx.bus.subjects.out(msg.session_id, "done")


@asynccontextmanager
async def running(
    bus: Bus, actor: JobActor, settings: RuntimeSettings | None = None
) -> AsyncIterator[ActorRuntime[Job]]:
    """Run ``actor`` in this process for the duration of the block; stop it gracefully after."""
    stop = asyncio.Event()
    runtime = ActorRuntime(bus, actor, settings)
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(runtime.run(stop))
        ready = tg.create_task(runtime.ready.wait())
        await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
        try:
            yield runtime
        finally:
            stop.set()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("root")
    parser.add_argument("--ack-wait", type=float, default=30.0)
    parser.add_argument("--grace", type=float, default=30.0)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    configure_logging("info", json=True)

    async def ready() -> None:
        print("READY", flush=True)

    settings = RuntimeSettings(concurrency=args.concurrency, grace=args.grace)
    runtimes = asyncio.run(
        serve(
            args.url,
            [JobActor(ack_wait=args.ack_wait, announce=True)],
            root=args.root,
            settings=settings,
            on_ready=ready,
        )
    )
    print(f"STOPPED handled={runtimes[0].stats.handled} returned={runtimes[0].stats.returned}", flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
