"""Crash and garbage: sessions run while the lead and the workers are killed with SIGKILL again and
again and every consumed subject gets malformed and foreign messages. Every session ends within its
deadline, and nothing finished is done twice (one delegation, one reply and one result each)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import random
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client as NATS

from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import BusTimeout, NoResponders
from schemas import SessionResult, SessionSubmit
from tests.agents_proc import AGENTS
from tests.helpers import ROOT_DIR, NatsServer, submit, team, wait_result

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

SESSIONS = 6
DEADLINE = 45.0  # each session's own deadline (seconds)
KILLS = 8  # rounds of one kill -9 and garbage on every subject
SERVICES = ("collector", "grader", "webhooks")


class Fleet:
    """Lead and worker processes on the deterministic script; any of them can be killed and
    replaced. Their output goes to files (a pipe nobody reads would stall a chatty process)."""

    def __init__(self, server: NatsServer, root: str, logs: Path) -> None:
        self.server, self.root, self.logs = server, root, logs
        self.procs: dict[str, asyncio.subprocess.Process] = {}
        self.kills = Counter[str]()
        self._count = itertools.count()

    async def start(self, name: str) -> None:
        if name in SERVICES:  # the roles that read events, grading requests and deliveries
            extra = ["--db", str(self.logs / "trace.db")] if name == "collector" else []
            command = ["actors.cli", "actor", name, "--nats", self.server.url, "--root", self.root, *extra]
        else:
            args = ["--lead"] if name == "lead" else ["--agents", ",".join(AGENTS), "--slow", "slow=1.5"]
            command = ["tests.agents_proc", self.server.url, self.root, *args]
        log = (self.logs / f"{name}-{next(self._count)}.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            *command,
            cwd=ROOT_DIR,
            stdout=log,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "ANTHROPIC_API_KEY": ""},
        )
        log.close()
        self.procs[name] = proc

    async def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.kill()
        await proc.wait()
        self.kills[name] += 1

    async def stop(self) -> None:
        for proc in self.procs.values():
            if proc.returncode is None:
                proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def fleet(server: NatsServer, root: str, logs: Path) -> AsyncIterator[Fleet]:
    running = Fleet(server, root, logs)
    try:
        for name in ("lead", "worker-1", "worker-2", *SERVICES):
            await running.start(name)
        yield running
    finally:
        await running.stop()


def garbage(session_id: str) -> list[bytes]:
    """Payloads no consumer may choke on: not JSON, too deep, the wrong type, a foreign message."""
    deep = b'{"a":' * 1000 + b"1" + b"}" * 1000
    foreign = {
        "type": "thread.reply.v1",
        "session_id": session_id,
        "msg_id": f"stray-{time.monotonic_ns()}",
        "thread_id": "t-toolu_fast",
        "agent": "fast",
        "status": "failed",
        "text": "a stray reply",
        "in_reply_to": "nobody",
    }
    return [b"\x00not json", deep, b"[]", b'{"type": "no.such.v1"}', json.dumps(foreign).encode()]


def consumed_subjects(bus: Bus, session_id: str) -> list[str]:
    s = bus.subjects
    thread = "t-toolu_fast"
    return [
        s.submit,
        s.task(session_id, "fast"),
        s.task(session_id, "slow"),
        s.reply(session_id, thread),
        s.history(session_id, thread),
        s.history(session_id, "lead"),
        s.verdict(session_id, 1),
        s.grade(session_id),
        s.hook(session_id),
        s.ctl(session_id),
        s.event(session_id, "session.status_idle"),
        s.event(session_id, "agent.message"),
    ]


async def spray(nc: NATS, bus: Bus, session_ids: list[str]) -> int:
    """Publish every kind of garbage on every consumed subject of every session (stored in the log
    stream like real traffic), and at the request/reply APIs."""
    sent = 0
    js = nc.jetstream()
    for session_id in session_ids:
        for subject in consumed_subjects(bus, session_id):
            for payload in garbage(session_id):
                await js.publish(subject, payload)
                sent += 1
    for api in (bus.subjects.api_submit, bus.subjects.api_trace, bus.subjects.api_dream):
        for payload in garbage(session_ids[0]):
            with contextlib.suppress(Exception):  # an answer (an error) or nobody: both are fine
                await nc.request(api, payload, timeout=1)
            sent += 1
    return sent


async def test_sessions_end_within_their_deadline_through_kills_and_garbage(
    nats_server: NatsServer, bus: Bus, nc: NATS, tmp_path: Path
) -> None:
    rng = random.Random(11)
    s = bus.subjects
    submits = [
        SessionSubmit(task=f"incident {n}", team_spec=team(*AGENTS), deadline_s=DEADLINE)
        for n in range(SESSIONS)
    ]
    async with fleet(nats_server, bus.subjects.root, tmp_path) as running:
        async with asyncio.timeout(20):
            while True:  # the lead's gateway answers once its process is up
                try:
                    first = await submit(bus, submits[0], timeout=2)
                    break
                except (NoResponders, BusTimeout):  # its process is not up yet: ask again
                    await asyncio.sleep(0.2)
        session_ids = [first] + [await submit(bus, s) for s in submits[1:]]
        started = time.monotonic()
        sprayed = 0
        victims = itertools.cycle(["worker-1", "lead", "worker-2"])
        for _ in range(KILLS):
            victim = next(victims)
            await running.kill(victim)
            sprayed += await spray(nc, bus, session_ids)
            await asyncio.sleep(rng.uniform(0.5, 1.5))
            await running.start(victim)
        results: list[SessionResult] = []
        for session_id in session_ids:
            left = DEADLINE + 20 - (time.monotonic() - started)
            results.append(await wait_result(bus, session_id, timeout=max(1.0, left)))
        took = time.monotonic() - started
    assert running.kills["lead"] >= 2, running.kills
    assert sprayed > 500
    assert took < DEADLINE + 20, took  # every session ended within its deadline (and the slack)
    async with asyncio.timeout(30):  # the event and delivery consumers settled the garbage too
        durables = [s.collector_consumer, s.grader_consumer, s.webhook_events_consumer]
        while [d for d in durables if await bus.consumer_backlog(d)]:  # noqa: ASYNC110
            await asyncio.sleep(0.2)  # consumer state is the server's: nothing to await on
    for result in results:
        assert result.status in ("idle", "deadline_reached"), (result.session_id, result.final_text)
    finished = [r for r in results if r.status == "idle"]
    assert finished, [r.final_text for r in results]  # the chaos did not stop all work
    for result in finished:
        for agent in AGENTS:
            assert f"{agent} found look at {agent}" in result.final_text, result.final_text
    for session_id in session_ids:
        await nothing_repeated(bus, session_id)


async def nothing_repeated(bus: Bus, session_id: str) -> None:
    """Each delegation was stored once, each was answered once, and the session has one result."""
    s = bus.subjects
    tasks = Counter[str]()
    for agent in AGENTS:
        async for stored in read_subject(bus, s.log_stream, s.task(session_id, agent)):
            with contextlib.suppress(ValueError, RecursionError):  # the garbage sprayed above
                message = json.loads(stored.data)
                if isinstance(message, dict) and message.get("type") == "thread.delegate.v1":
                    tasks[message["thread_id"]] += 1
    assert all(count == 1 for count in tasks.values()), tasks
    replies = Counter[tuple[str, str]]()
    async for stored in read_subject(bus, s.log_stream, s.replies(session_id)):
        with contextlib.suppress(ValueError, RecursionError):
            message = json.loads(stored.data)
            if isinstance(message, dict) and str(message.get("in_reply_to", "")).startswith("dlg-"):
                replies[(message["thread_id"], message["in_reply_to"])] += 1
    assert all(count == 1 for count in replies.values()), replies
    results = [m async for m in read_subject(bus, s.log_stream, s.out(session_id, "result"))]
    assert len(results) == 1
