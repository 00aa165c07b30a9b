"""``up`` as a supervisor, every actor process a NATS micro service, ``ps`` and ``health``.

The micro service is tested in this process through nats-py directly; the supervisor as the user runs
it: one ``staffwork up`` (its own ``STAFFWORK_HOME`` and port) for the module, whose processes the
tests kill with SIGKILL and which the last test stops with SIGINT.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client as NATS

from actors.cli.supervisor import Backoff, RestartPolicy
from actors.client import Client
from bus.actor import Actor, BaseActor
from bus.connection import Bus
from bus.health import HealthRecord, ProcessIdentity, discover, gather, probe
from bus.lifecycle import run_actors
from bus.runtime import RuntimeSettings
from bus.subjects import Subjects
from tests.helpers import ROOT_DIR, STAFFWORK, free_port, inbox
from tests.jobs import Job, JobActor, JobDone

# --- the restart policy ------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_longest_and_starts_over_after_a_steady_run() -> None:
    backoff = Backoff(RestartPolicy(first=0.5, longest=4.0, steady=60.0, limit=100, window=60.0))
    delays = [backoff.after_exit(ran=1.0, now=float(t))[0] for t in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.after_exit(ran=60.0, now=10.0)[0] == 0.5


def test_a_crash_loop_is_counted_in_its_window_and_waits_the_longest() -> None:
    backoff = Backoff(RestartPolicy(first=0.5, longest=30.0, limit=3, window=60.0))
    assert [backoff.after_exit(ran=1.0, now=t) for t in (0.0, 1.0, 2.0)] == [(0.5, 1), (1.0, 2), (30.0, 3)]
    assert backoff.after_exit(ran=1.0, now=61.5) == (2.0, 2)  # the first two left the window


# --- the micro service, in this process ---------------------------------------------------------------


class Idle(BaseActor[None]):
    role = "idle"

    def consumer(self, subjects: Subjects) -> None:
        return None


async def answer_of(nc: NATS, subject: str, root: str, timeout: float = 10.0) -> dict[str, Any]:
    """The answer to a ``$SRV`` request from the service of ``root`` (other roots' may answer too)."""
    inbox_subject = nc.new_inbox()
    sub = await nc.subscribe(inbox_subject)
    try:
        await nc.publish(subject, b"", reply=inbox_subject)
        async with asyncio.timeout(timeout):
            while True:
                answer: dict[str, Any] = json.loads((await sub.next_msg(timeout=timeout)).data)
                if answer["metadata"]["root"] == root:
                    return answer
    finally:
        await sub.unsubscribe()


async def health_of(bus: Bus) -> HealthRecord:
    """This process's health record, asked on ``<root>.api.health``."""
    pid = os.getpid()
    [record] = [r for r in await probe(bus, timeout=5.0, enough=lambda r: r.pid == pid) if r.pid == pid]
    return record


async def test_an_actor_process_is_the_staffwork_micro_service(bus: Bus, nc: NATS, root: str) -> None:
    stop, ready = asyncio.Event(), asyncio.Event()
    identity = ProcessIdentity(roles=("jobs",), agents=("a", "b"), restarts=2)
    actors: list[Actor[Any] | tuple[Actor[Any], RuntimeSettings]] = [
        (JobActor(announce=True), RuntimeSettings(grace=0.1)),
        Idle(),
    ]
    started = await inbox(bus, f"{root}.test.started", JobDone)
    done = await inbox(bus, bus.subjects.out("ses_h", "done"), JobDone)
    serving = asyncio.ensure_future(run_actors(bus, actors, stop, on_ready=ready.set, identity=identity))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        ping = await answer_of(nc, "$SRV.PING.staffwork", root)
        assert (ping["type"], ping["name"], ping["version"]) == (
            "io.nats.micro.v1.ping_response",
            "staffwork",
            "0.1.0",
        )
        info = await answer_of(nc, f"$SRV.INFO.staffwork.{ping['id']}", root)
        metadata = info["metadata"]
        assert {k: metadata[k] for k in ("roles", "agents", "host", "pid", "restarts")} == {
            "roles": "jobs",
            "agents": "a,b",
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "restarts": "2",
        }
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", metadata["started_at"])
        [endpoint] = info["endpoints"]
        assert (endpoint["name"], endpoint["subject"]) == ("health", f"{root}.api.health")

        for n, fail in ((1, ""), (2, "crash")):
            await bus.publish(bus.subjects.task("ses_h", "jobs"), Job(session_id="ses_h", n=n, fail=fail))
            assert (await done.next()).n == n
        async with asyncio.timeout(10):
            while ((record := await health_of(bus)).handled, record.failed) != (1, 1):
                pass  # each look is a round trip; the counters move once the reply is acked
        stats = await answer_of(nc, f"$SRV.STATS.staffwork.{ping['id']}", root)
        [data] = [e["data"] for e in stats["endpoints"]]
        assert (data["handled"], data["failed"], data["status"]) == (1, 1, "ok")

        await bus.publish(bus.subjects.task("ses_h", "jobs"), Job(session_id="ses_h", n=3, sleep=60))
        assert [job.n for job in await started.take(3)] == [1, 2, 3]  # 3 is in hand now
        record = await health_of(bus)
        assert (record.in_flight, record.roles, record.agents) == (1, ("jobs",), ("a", "b"))
        assert [(a.actor, a.in_flight) for a in record.actors] == [("jobs", 1), ("idle", 0)]
        assert (record.status, record.connected, record.instance) == ("ok", True, ping["id"])
    finally:
        stop.set()
        await serving
        for box in (started, done):
            await box.close()
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(f"{root}.api.health", b"", timeout=5)
    with pytest.raises(nats.errors.NoRespondersError):
        await nc.request(f"$SRV.PING.staffwork.{ping['id']}", b"", timeout=5)


async def test_one_health_request_reaches_every_process_of_the_root(bus: Bus, root: str) -> None:
    stop, ready = asyncio.Event(), asyncio.Event()
    first = ProcessIdentity(roles=("lead",))
    second = ProcessIdentity(roles=("subagent",), agents=("logs",))
    async with asyncio.TaskGroup() as tg:
        tg.create_task(run_actors(bus, [Idle()], stop, identity=first))
        tg.create_task(run_actors(bus, [Idle()], stop, on_ready=ready.set, identity=second))
        try:
            async with asyncio.timeout(10):
                await ready.wait()
                while len(found := await probe(bus, timeout=0.5)) < 2:
                    pass  # the first process may still be registering
            assert sorted(r.roles for r in found) == [("lead",), ("subagent",)]
            assert {r.root for r in await discover(bus, timeout=0.5)} >= {root}
        finally:
            stop.set()


async def test_gathering_where_nobody_listens_ends_at_once(bus: Bus) -> None:
    async with asyncio.timeout(5):  # far below the gather's own 60 s
        assert await gather(bus, f"{bus.subjects.root}.api.nobody", timeout=60.0) == []


# --- ``up``, ``ps`` and ``health`` as processes ------------------------------------------------------


class Up:
    """A running ``staffwork up``: its output as it comes (read by a thread), its URL and home."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.env = {**os.environ, "STAFFWORK_HOME": str(home), "PYTHONUNBUFFERED": "1"}
        for name in ("STAFFWORK_NATS_URL", "STAFFWORK_ROOT", "ANTHROPIC_API_KEY", "COLUMNS", "LINES"):
            self.env.pop(name, None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "actors.cli", "up", "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=self.env,
            cwd=ROOT_DIR,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append("<EOF>")
            self._changed.notify_all()

    def mark(self) -> int:
        with self._changed:
            return len(self.lines)

    def wait_for(self, pattern: str, after: int = 0, count: int = 1, timeout: float = 30.0) -> list[str]:
        """The first ``count`` lines from line ``after`` on that match ``pattern``, once they came."""

        def found() -> list[str] | None:
            hits = [line for line in self.lines[after:] if re.search(pattern, line)]
            return hits[:count] if len(hits) >= count or "<EOF>" in self.lines else None

        with self._changed:
            hits = self._changed.wait_for(found, timeout)
        if hits is None or len(hits) < count:
            raise AssertionError(f"{pattern!r} x{count} not in:\n" + "\n".join(self.lines))
        return hits

    def run(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, env=self.env, cwd=ROOT_DIR, check=False
        )

    def ps(self) -> list[dict[str, Any]]:
        result = self.run(*STAFFWORK, "ps", "--json", "--nats", self.url)
        assert result.returncode == 0, result.stderr
        rows: list[dict[str, Any]] = json.loads(result.stdout)
        return rows

    def health(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(*STAFFWORK, "health", *args, "--nats", self.url)

    def server_pid(self) -> int:
        pid: int = json.loads((self.home / "nats" / ".staffwork-server.lock").read_text())["pid"]
        return pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


PROCESSES = 10  # the lead, the incident team's four agents, the pool, collector, grader, webhooks, dreamer


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    running = Up(tmp_path_factory.mktemp("up"))
    try:
        running.wait_for(r"\] \w+ ready on nats://", count=PROCESSES)
        yield running
    finally:
        running.stop()


def by_role(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {",".join(r["roles"] + r["agents"]): r for r in rows}


def until_serving(up: Up, *, pids_gone: frozenset[int] = frozenset()) -> dict[str, dict[str, Any]]:
    """``ps`` once every process answers healthy (and none of ``pids_gone`` is among them)."""
    for _ in range(30):  # each ps is a 1 s round of answers
        rows = by_role(up.ps())
        pids = {r["pid"] for r in rows.values()}
        if (
            len(rows) == PROCESSES
            and all(r["status"] == "ok" for r in rows.values())
            and not pids & pids_gone
        ):
            return rows
    raise AssertionError(f"not every process serves: {rows}")


def session_completes(up: Up) -> None:
    """A session submitted through the gateway (the lead process's) ends idle."""
    submitted = up.run(
        sys.executable, "-m", "actors.cli", "submit", "--example", "incident", "--nats", up.url
    )
    assert submitted.returncode == 0, submitted.stderr
    session = submitted.stdout.strip()

    async def wait() -> str:
        async with await Bus.connect(up.url, root="sw") as bus:
            return (await Client(bus).wait(session, timeout=60)).status

    assert asyncio.run(wait()) == "idle"


@pytest.mark.slow
def test_ps_lists_every_process_with_its_pid_host_and_uptime(up: Up) -> None:
    rows = until_serving(up)
    assert set(rows) == {
        "lead",
        "subagent,deploys",
        "subagent,logs",
        "subagent,metrics",
        "subagent,tickets",
        "pool",
        "collector",
        "grader",
        "webhooks",
        "dreamer",
    }
    assert {r["host"] for r in rows.values()} == {socket.gethostname()}
    assert all(r["uptime_s"] > 0 and r["restarts"] == 0 and r["root"] == "sw" for r in rows.values())
    assert len({r["pid"] for r in rows.values()}) == PROCESSES
    table = up.run(*STAFFWORK, "ps", "--nats", up.url).stdout.splitlines()
    assert table[0].split() == [
        "ROLE", "AGENTS", "HOST", "PID", "UPTIME", "RESTARTS", "IN-FLIGHT", "HANDLED/FAILED", "HEALTH"
    ]  # fmt: skip
    assert len(table) == 1 + PROCESSES


@pytest.mark.slow
def test_health_of_a_role_on_this_host(up: Up) -> None:
    until_serving(up)
    lead = up.health("--role", "lead")
    assert lead.returncode == 0, lead.stderr
    assert lead.stdout.startswith(f"lead on {socket.gethostname()}: ok (pid ")
    assert up.health("--role", "subagent", "--agents", "logs").returncode == 0
    missing = up.health("--role", "subagent", "--agents", "logs,nobody")
    assert missing.returncode == 1
    assert missing.stderr.strip().splitlines() == [
        f"error: no subagent (logs, nobody) process on host {socket.gethostname()!r} answered within 2s "
        "(root 'sw')"
    ]


@pytest.mark.slow
def test_a_killed_actor_process_is_restarted_and_sessions_go_on(up: Up) -> None:
    lead = until_serving(up)["lead"]
    mark = up.mark()
    os.kill(lead["pid"], signal.SIGKILL)
    [restart] = up.wait_for(r"\[supervisor\] lead exited", after=mark)
    assert re.fullmatch(
        r"\[supervisor\] lead exited with code -9 after \d+\.\ds; restarting in 0\.5s \(restart 1\)", restart
    )
    up.wait_for(r"\[lead\] lead ready on nats://", after=mark)
    again = until_serving(up, pids_gone=frozenset({lead["pid"]}))["lead"]
    assert again["restarts"] == 1
    session_completes(up)


@pytest.mark.slow
def test_a_killed_server_is_restarted_and_the_actors_reconnect(up: Up) -> None:
    pids = {r["pid"] for r in until_serving(up).values()}
    server = up.server_pid()
    mark = up.mark()
    os.kill(server, signal.SIGKILL)
    [restart] = up.wait_for(r"\[supervisor\] nats-server exited", after=mark)
    assert re.fullmatch(
        r"\[supervisor\] nats-server exited with code -9 after \d+\.\ds; restarting in 0\.5s \(restart 1\)",
        restart,
    )
    up.wait_for(rf"\[supervisor\] nats-server is back at {up.url} \(pid \d+\)", after=mark)
    assert up.server_pid() != server
    assert {r["pid"] for r in until_serving(up).values()} == pids  # the same processes, reconnected
    session_completes(up)


@pytest.mark.slow
def test_sigint_stops_everything_cleanly(up: Up) -> None:
    pids = {r["pid"] for r in until_serving(up).values()} | {up.server_pid()}
    assert up.health("--role", "lead").returncode == 0
    mark = up.mark()
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=60) == 0
    up.wait_for("staffwork is down", after=mark)
    assert not [line for line in up.lines[mark:] if "[supervisor]" in line]  # nothing restarted
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    down = up.health("--role", "lead")
    assert down.returncode == 1
    assert down.stderr.strip().startswith("error: ")
