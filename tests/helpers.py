"""What more than one test module uses: the nats-server process, a plain nats client, typed inboxes
on the bus, the agent tests' team and scripted lead, submitting a session, actors (the collector,
say) in this process, helper programs and the CLI as processes, polling, free ports, the recorded
incident trace.

Tests may talk to NATS directly (only ``actors/`` may not): :func:`nats_client` is a plain nats-py
client for what the bus has no public API for (raw publishes and subscriptions, JetStream state).
The whole programs the process tests start live beside this module: ``agents_proc.py`` (lead and
subagents on a scripted model), ``jobs.py`` (the jobs actor); ``fake_messages_api.py`` is a fake of
the Messages API over HTTP.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import anthropic
import msgspec
import nats
import nats.errors
import pytest
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.scripted import calls, text
from actors.agent.tools.base import ToolContext
from actors.api.actor import ApiActor
from actors.client import Client
from actors.collector.actor import CollectorActor, TraceStore
from actors.collector.otlp import OtlpExporter
from bus.actor import Actor
from bus.codec import Decoder
from bus.connection import Bus
from bus.lifecycle import run_actors
from bus.runtime import RuntimeSettings
from bus.server import find_server_binary
from bus.state import Listener
from bus.workspace import Workspace
from schemas import AgentSpec, SessionResult, SessionSubmit, TeamSpec
from schemas.conversation import ToolResultBlock
from schemas.session import SubmitReply
from schemas.trace import AnyTraceEvent

T = TypeVar("T")

ROOT_DIR = Path(__file__).resolve().parent.parent
INCIDENT_TRACE = Path(__file__).parent / "fixtures" / "incident-trace.jsonl"

# --- a real nats-server ------------------------------------------------------------------------------

READY_TIMEOUT = 20.0


@dataclass
class NatsServer:
    url: str
    port: int
    store_dir: Path
    process: subprocess.Popen[bytes]
    log: list[str]
    reader: threading.Thread


def start_nats_server(store_dir: Path, *, jetstream: bool = True, config: Path | None = None) -> NatsServer:
    """Start ``nats-server -p -1 -js -sd <dir>`` and block until it logs "Server is ready". With
    ``config``, the server also reads that file (``-c``: users, TLS; the flags win over it)."""
    binary = find_server_binary()
    js = ["-js", "-sd", str(store_dir)] if jetstream else []
    conf = ["-c", str(config)] if config is not None else []
    proc = subprocess.Popen(
        [str(binary), *conf, "-a", "127.0.0.1", "-p", "-1", *js],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    port = 0
    ready = threading.Event()

    def reader() -> None:
        nonlocal port
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if match := re.search(r"Listening for client connections on \S+:(\d+)", line):
                port = int(match.group(1))
            if "Server is ready" in line:
                ready.set()
        ready.set()  # exited: let the waiter see it

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if not ready.wait(READY_TIMEOUT) or not port:
        proc.kill()
        raise RuntimeError("nats-server did not become ready:\n" + "\n".join(lines[-20:]))
    return NatsServer(
        url=f"nats://127.0.0.1:{port}", port=port, store_dir=store_dir, process=proc, log=lines, reader=thread
    )


def stop_nats_server(server: NatsServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    server.reader.join(10)
    assert server.process.stderr is not None
    server.process.stderr.close()


# --- talking to NATS ---------------------------------------------------------------------------------


@asynccontextmanager
async def nats_client(url: str) -> AsyncIterator[NATS]:
    """A plain nats-py client, for fault injection and low-level checks the bus has no API for."""
    nc = await nats.connect(url, name="test-raw", connect_timeout=5, allow_reconnect=False)
    try:
        yield nc
    finally:
        await nc.close()


async def subscribed(nc: NATS, sub: Subscription, probe_subject: str, timeout: float = 10.0) -> None:
    """Wait until ``sub`` really receives: a probe published on ``probe_subject`` (which it matches)
    comes back. On a freshly started, loaded server a subscription can miss a message published right
    after the client's flush; the probe is sent again until one arrives, then the probes are gone."""
    async with asyncio.timeout(timeout):
        while True:
            await nc.publish(probe_subject, b"probe")
            try:
                await sub.next_msg(timeout=0.5)
                return
            except nats.errors.TimeoutError:
                continue


async def round_trip(bus: Bus) -> None:
    """A ping to the server and back: whatever ``bus`` sent before (publishes, acks, subscriptions)
    has reached the server."""
    await bus.server_info()


async def consumer_state(bus: Bus, nc: NATS, durable: str) -> tuple[int | None, int | None, int | None]:
    """(pending, ack pending, redelivered) of the consumer ``durable`` on the bus's log stream, read
    over ``nc`` once everything the bus sent (acks included) has reached the server."""
    await round_trip(bus)
    info = await nc.jetstream().consumer_info(bus.subjects.log_stream, durable)
    return info.num_pending, info.num_ack_pending, info.num_redelivered


class Inbox(Generic[T]):
    """The messages on a core subject, decoded into ``T``, in the order they came. Open with
    :func:`inbox`."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[T] = asyncio.Queue()
        self._listener: Listener[T] | None = None

    async def next(self, timeout: float = 10.0) -> T:
        """The next message; ``TimeoutError`` if none comes within ``timeout``."""
        async with asyncio.timeout(timeout):
            return await self._queue.get()

    async def take(self, count: int, timeout: float = 20.0) -> list[T]:
        """The next ``count`` messages, all within ``timeout``."""
        async with asyncio.timeout(timeout):
            return [await self._queue.get() for _ in range(count)]

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()


async def inbox(bus: Bus, subject: str, type: type[T]) -> Inbox[T]:
    """Start collecting what is published on ``subject`` (wildcards allowed), from now on: the
    subscription has reached the server when this returns. :meth:`Inbox.close` (or closing the bus)
    ends it."""
    box: Inbox[T] = Inbox()
    box._listener = await bus.listen(subject, type, box._queue.put_nowait)
    await round_trip(bus)
    return box


# --- agent tests: a team, a scripted lead, a session; the collector -----------------------------------

_reply: Decoder[SubmitReply] = Decoder(SubmitReply)


def team(*agents: str, tools: tuple[str, ...] = (), **fields: object) -> TeamSpec:
    return TeamSpec(
        name="testteam",
        lead=AgentSpec(name="lead"),
        agents=[AgentSpec(name=a, description=f"the {a} specialist", tools=list(tools)) for a in agents],
        **fields,  # type: ignore[arg-type]
    )


def tool_results(request: ModelRequest) -> list[ToolResultBlock]:
    last = request.messages[-1]
    return [b for b in last.content if isinstance(b, ToolResultBlock)]


def delegate(tool_use_id: str, agent: str, task: str) -> tuple[str, str, dict[str, object]]:
    """A ``delegate`` tool call, for :func:`~actors.agent.models.scripted.calls`."""
    return (tool_use_id, "delegate", {"agent": agent, "task": task})


def fan_out_lead(agents: list[str], *, prefix: str = "toolu_") -> list[ModelResponse]:
    """A lead that delegates to every agent in one turn, then reports what came back."""
    first = calls(*[delegate(f"{prefix}{i}_{a}", a, f"task for {a}") for i, a in enumerate(agents)])

    def report(request: ModelRequest) -> ModelResponse:
        parts = [r.content for r in tool_results(request)]
        return text("REPORT\n" + "\n".join(parts))

    return [first, report]  # type: ignore[list-item]


async def submit(bus: Bus, request: SessionSubmit, timeout: float = 10.0) -> str:
    """Start a session through the front door, ``<root>.api.submit`` (the gateway every lead process
    runs); its id."""
    reply = _reply.decode(await bus.request(bus.subjects.api_submit, request, timeout=timeout))
    assert reply.accepted, reply.error
    return reply.session_id


async def submit_and_wait(
    bus: Bus, request: SessionSubmit, timeout: float = 60.0, *, direct: bool = False
) -> SessionResult:
    """Start a session and wait for its result: through the gateway, or with ``direct`` published
    straight on ``<root>.submit`` (the lead pool's durable inbox, where the gateway puts what it
    accepts; no gateway check and no record made before the lead's)."""
    if direct:
        await bus.publish(bus.subjects.submit, request)
        session_id = request.session_id
    else:
        session_id = await submit(bus, request)
    return await wait_result(bus, session_id, timeout)


async def wait_result(bus: Bus, session_id: str, timeout: float = 60.0) -> SessionResult:
    """The session's result once it is stored (it may already be)."""
    return await Client(bus).wait(session_id, timeout=timeout)


@asynccontextmanager
async def running_actors(
    bus: Bus, actors: Sequence[Actor[Any] | tuple[Actor[Any], RuntimeSettings]]
) -> AsyncIterator[None]:
    """``actors`` on ``bus`` for the block, once every one consumes; stopped gracefully after."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    serving = asyncio.ensure_future(run_actors(bus, actors, stop, on_ready=ready.set))
    waiting = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait({serving, waiting}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # it failed to start: raise why
        if not ready.is_set():
            raise TimeoutError("the actors were not ready within 20 s")
        yield
    finally:
        waiting.cancel()
        stop.set()
        await serving


@asynccontextmanager
async def collector(
    bus: Bus, path: Path, exporter: OtlpExporter | None = None, *, busy_timeout: float = 5.0
) -> AsyncIterator[TraceStore]:
    """The trace collector in this process, storing into ``path`` (and exporting spans if given an
    exporter), until the block ends."""
    store = TraceStore(path, busy_timeout=busy_timeout)
    actor = CollectorActor(store, exporter=exporter)
    try:
        async with running_actors(bus, [(actor, RuntimeSettings(concurrency=1024, batch_size=256))]):
            yield store
    finally:
        store.close()


# --- processes, polling, ports, fixtures ------------------------------------------------------------


@asynccontextmanager
async def ready_process(
    module: str, *args: str, ready_word: bytes = b"READY"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m module args...``, yielded once it printed ``ready_word`` (on stdout, or on stderr
    for ``staffwork`` commands); killed if still running after."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if ready_word != b"READY" else asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
            while ready_word != b"READY" and line and ready_word not in line:
                line = await proc.stdout.readline()
        assert ready_word in line, line + (await proc.stderr.read() if proc.stderr else b"")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def run_cli(*args: str, home: Path | None = None, timeout: float = 60.0) -> tuple[int, str, str]:
    """``staffwork ARGS`` (``python -m actors.cli`` in the repository) run to its end: the exit code,
    stdout and stderr. ``home`` is its ``STAFFWORK_HOME``."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "actors.cli",
        *args,
        cwd=ROOT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "STAFFWORK_HOME": str(home)} if home else None,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def eventually(check: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``check()`` holds, within ``timeout``: for state another process or task produces
    with nothing to await on (a SQLite database, an exporter's counters)."""
    async with asyncio.timeout(timeout):
        while not check():  # noqa: ASYNC110 - the state is elsewhere, nothing to await
            await asyncio.sleep(0.02)


def free_port() -> int:
    """A local port nothing listens on (bound once, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def incident_trace(session_id: str = "") -> list[AnyTraceEvent]:
    """The recorded trace of the incident example (``fixtures/incident-trace.jsonl``), optionally
    moved to another session."""
    decoder = msgspec.json.Decoder(AnyTraceEvent)
    events = [decoder.decode(line) for line in INCIDENT_TRACE.read_bytes().splitlines() if line.strip()]
    if session_id:
        events = [msgspec.structs.replace(event, session_id=session_id) for event in events]
    return events


STAFFWORK = [sys.executable, "-m", "actors.cli"]


def staffwork(
    *args: str, home: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """``staffwork ARGS`` run to its end with its own ``STAFFWORK_HOME``, finding its own bus (no
    ``STAFFWORK_NATS_URL``) and printing as it would to a pipe (no ``COLUMNS``/``LINES``)."""
    environment = {**os.environ, "STAFFWORK_HOME": str(home), **(env or {})}
    for name in ("STAFFWORK_NATS_URL", "COLUMNS", "LINES"):
        environment.pop(name, None)
    return subprocess.run(
        [*STAFFWORK, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=environment,
        cwd=ROOT_DIR,
        check=False,
    )


def tool_context(bus: Bus, session_id: str) -> ToolContext:
    """A tool call's context: thread ``thr_1`` of agent ``logs``, call ``toolu_1``."""
    return ToolContext(
        bus=bus,
        workspace=Workspace(bus),
        session_id=session_id,
        thread_id="thr_1",
        agent="logs",
        tool_use_id="toolu_1",
    )


# --- example tool services (NATS micro services) as processes -----------------------------------------

JS_DIR = ROOT_DIR / "examples" / "tools" / "js"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Running:
    name: str
    process: asyncio.subprocess.Process


@asynccontextmanager
async def ledger(server: NatsServer) -> AsyncIterator[Running]:
    """The Python example service, once it said it is ready."""
    name = unique("ledger")
    args = ("--nats", server.url, "--name", name)
    async with ready_process("examples.tools.ledger_service", *args, ready_word=b"service ready") as proc:
        yield Running(name, proc)


@asynccontextmanager
async def statuspage(server: NatsServer) -> AsyncIterator[Running]:
    """The JavaScript example service (``node_modules`` installed), once it said it is ready."""
    name = unique("statuspage")
    proc = await asyncio.create_subprocess_exec(
        "node",
        "statuspage-service.mjs",
        server.url,
        name,
        cwd=JS_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
        assert b"service ready" in line, line
        yield Running(name, proc)
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


def need_tool(tool: str, why: str) -> str:
    """``tool``'s path; the test is skipped without it, unless in CI (then it fails)."""
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} must be on PATH in CI ({why})")
        pytest.skip(f"{tool} is not on PATH")
    return path


def npm_ci(directory: Path, why: str) -> Path:
    """``npm ci`` in ``directory`` (a package with its lock file); its ``node_modules``."""
    need_tool("node", why)
    npm = need_tool("npm", why)
    done = subprocess.run(
        [npm, "ci", "--no-audit", "--no-fund"], cwd=directory, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return directory / "node_modules"


API_KEY = "sk-test-acme-0123456789abcdef"  # workspace acme
OTHER_API_KEY = "sk-test-globex-0123456789abcdef"  # workspace globex


def api_client(api: ApiActor, key: str = API_KEY) -> anthropic.AsyncAnthropic:
    """The SDK as a program written for the hosted service uses it, but for ``base_url`` and the key
    (no retries, so a test sees the first answer)."""
    return anthropic.AsyncAnthropic(base_url=api.url, api_key=key, max_retries=0)


class BlockingModel:
    """A model whose call blocks until it is canceled (``called`` is set once it was called)."""

    name = "scripted"

    def __init__(self) -> None:
        self.called = asyncio.Event()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        self.called.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


async def run_example(
    bus: Bus,
    example: str,
    data: Path,
    names: Sequence[str],
    task: str,
    *,
    memory: dict[str, Path] | None = None,
    stores: dict[str, str] | None = None,
    timeout: float = 120,
) -> tuple[SessionResult, str]:
    """One session of a bundled example's team on the offline model, its workers and the grader in
    this process, with the files ``names`` (relative to ``data``) as its inputs and the ``memory``
    stores seeded from their folders: the result and the session's id."""
    from actors.agent.models.offline import OfflineModel
    from actors.agent.tools.catalog import check_team_tools
    from actors.cli.common import seed_memory
    from actors.cli.sessions import with_stores
    from actors.roles import RoleConfig, running, running_agents
    from schemas.team import parse_team

    team_file = EXAMPLES / example / "team.toml"
    team = parse_team(await asyncio.to_thread(team_file.read_bytes), source=str(team_file))
    check_team_tools(team, source=str(team_file))
    team = with_stores(
        team, [f"{store}={other}" for store, other in (stores or {}).items() if store != other]
    )
    submit = SessionSubmit(task=task, team_spec=team, inputs=list(names))
    await seed_memory(bus, memory or {})
    workspace = Workspace(bus)
    for name in names:
        await workspace.put(submit.session_id, name, await asyncio.to_thread((data / name).read_bytes))
    model = OfflineModel()
    async with (
        running_agents(bus, model, agents=[a.name for a in team.agents]),
        running(bus, ["grader"], RoleConfig(model=model)),
    ):
        result = await submit_and_wait(bus, submit, timeout=timeout)
    return result, submit.session_id
