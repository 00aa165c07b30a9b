"""Least privilege, enforced by a real nats-server: ``staffwork auth`` makes one user per role and per
agent, the server runs with that config, what a user may not do is refused, and a whole session
still works with every actor on its own user (each a process, on the offline model), also when the
HTTP API (in this process, on the api user) drives it for the official SDK.

The server is ``tests/helpers.start_nats_server`` with the generated config included.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anthropic
import nats
import nats.errors
import pytest
import typer
from nats.aio.client import Client as NATS
from typer.testing import CliRunner

from actors.api.actor import ApiActor, ApiSettings
from actors.api.auth import ApiKeys
from actors.cli.auth import CONFIG_FILE, auth
from actors.cli.common import load_team
from actors.client import Client
from actors.collector.actor import CollectorActor, TraceStore
from actors.dreamer.actor import request_dream
from actors.dreamer.dream import DreamBook, cancel_dream, wait_dream
from actors.roles import NOTICE_KEY, RoleConfig, build
from actors.sessions.teams import register_team
from bus.codec import encode
from bus.connection import Bus
from bus.errors import NoResponders
from bus.health import ProcessIdentity, probe
from bus.lifecycle import run_actors
from bus.memory import Memory
from bus.permissions import NOTICE_KEY as GRANTED_NOTICE_KEY
from bus.provision import ensure_consumer, provision
from bus.subjects import JetStreamApi as J
from bus.subjects import Subjects
from bus.workspace import Workspace
from schemas.dream import DreamRecord, DreamRequest
from schemas.ids import new_id
from schemas.memory import Writer
from schemas.session import SessionResult
from schemas.thread import CustomToolResult
from schemas.webhooks import WebhookSpec
from tests.helpers import API_KEY, ROOT_DIR, api_client, free_port, inbox, start_nats_server, stop_nats_server

READY_TIMEOUT = 20.0
OPERATOR = Writer(kind="user", user="operator")
HOOK_SECRET = "whsec_" + base64.b64encode(b"permissions-test-key!").decode()
AGENTS = ("scout", "scribe")
TEAM = """
name = "permteam"
report_path = "report.md"

[outcome]
max_iterations = 2

[[outcome.checks]]
name = "the report is written"
kind = "file_exists"
path = "report.md"

[[outcome.checks]]
name = "it has the scout's finding"
kind = "contains"
path = "report.md"
value = "scout read"

[lead]
name = "lead"

[[agents]]
name = "scout"
description = "reads the data and notes what it saw"
tools = ["read_file", "write_file"]
memory = [{ store = "notes", access = "read_write" }]

[agents.playbook]
answer = "scout read: {result[0]}\\nnoted: {result[1]}"
calls = [
  { tool = "read_file", input = { path = "data.csv" } },
  { tool = "write_file", input = { path = "/memory/notes/findings.md", content = "scout saw: {task}" } },
]

[[agents]]
name = "scribe"
description = "reads the team's notes and writes a summary"
tools = ["read_file", "write_file", "list_files"]
memory = [{ store = "notes", access = "read_only" }]

[agents.playbook]
answer = "scribe read: {result[0]}\\nwrote: {result[1]}\\nnotes: {result[2]}"
calls = [
  { tool = "read_file", input = { path = "/memory/notes/readme.md" } },
  { tool = "write_file", input = { path = "scribe.md", content = "summary of: {task}" } },
  { tool = "list_files", input = { prefix = "/memory/notes/" } },
]
"""


# --- a nats-server on the generated config ---------------------------------------------------------


@dataclass
class AuthServer:
    url: str
    process: subprocess.Popen[bytes]
    log: list[str]
    reader: threading.Thread
    root: str
    bundle: Path  # nats-auth.conf and the users' credentials files

    def env(self, user: str) -> dict[str, str]:
        """The ``KEY=value`` lines of ``user``'s credentials file."""
        lines = (self.bundle / f"{user}.env").read_text().splitlines()
        return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))

    def violations(self) -> list[str]:
        return [line for line in self.log if "Violation" in line]


def run_auth(*args: str) -> str:
    """``staffwork auth ARGS`` in this process (the command alone, as the CLI registers it)."""
    app = typer.Typer()
    app.command()(auth)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def team_file(tmp_path: Path) -> Path:
    path = tmp_path / "team.toml"
    path.write_text(TEAM)
    return path


@pytest.fixture
def server(tmp_path: Path, team_file: Path) -> Iterator[AuthServer]:
    root = f"p{uuid.uuid4().hex[:8]}"
    bundle = tmp_path / "auth"
    run_auth("--team", str(team_file), "--root", root, "--out", str(bundle))
    config = tmp_path / "server.conf"
    config.write_text(f"include {json.dumps(f'auth/{CONFIG_FILE}')}\n")  # relative to this file
    nats = start_nats_server(tmp_path / "js", config=config)
    try:
        yield AuthServer(nats.url, nats.process, nats.log, nats.reader, root, bundle)
    finally:
        stop_nats_server(nats)


# --- clients on a user ------------------------------------------------------------------------------


@dataclass
class Refusals:
    """The permission violations the server reported to one client, as they come."""

    seen: list[str] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, text: str) -> None:
        self.seen.append(text)
        self.arrived.set()

    async def of(self, subject: str, timeout: float = 5.0) -> str:
        """The refusal naming ``subject`` (waiting for it)."""
        async with asyncio.timeout(timeout):
            while True:
                for text in self.seen:
                    if f'"{subject.lower()}"' in text:  # nats-py lowercases the server's -ERR
                        return text
                self.arrived.clear()
                await self.arrived.wait()


@asynccontextmanager
async def client(server: AuthServer, user: str) -> AsyncIterator[tuple[NATS, Refusals]]:
    """A plain nats-py client as ``user`` (its password and inbox prefix from its credentials file)."""
    env = server.env(user)
    refusals = Refusals()

    async def error_cb(exc: Exception) -> None:
        if "permissions violation" in str(exc):
            refusals.add(str(exc))

    nc = await nats.connect(
        server.url,
        user=env["STAFFWORK_NATS_USER"],
        password=env["STAFFWORK_NATS_PASSWORD"],
        inbox_prefix=env["STAFFWORK_NATS_INBOX_PREFIX"],
        error_cb=error_cb,
        connect_timeout=5,
        allow_reconnect=False,
    )
    try:
        yield nc, refusals
    finally:
        await nc.close()


@asynccontextmanager
async def bus_as(server: AuthServer, user: str) -> AsyncIterator[Bus]:
    """A :class:`Bus` on ``user``'s connection (the plain client's, so its refusals are seen)."""
    async with client(server, user) as (nc, _):
        yield Bus(nc, Subjects(server.root), server.url)


async def refused_publish(nc: NATS, refusals: Refusals, subject: str, data: bytes = b"") -> str:
    await nc.publish(subject, data, reply=nc.new_inbox())
    await nc.flush()
    return await refusals.of(subject)


async def refused_subscription(nc: NATS, refusals: Refusals, subject: str) -> str:
    await nc.subscribe(subject)
    await nc.flush()
    return await refusals.of(subject)


def user_of(server: AuthServer, role: str, agent: str = "") -> str:
    key = Subjects(server.root).key
    return f"{key}-agent-{agent}" if agent else f"{key}-{role}"


# --- the CLI ----------------------------------------------------------------------------------------


def test_auth_writes_the_config_and_private_credentials(server: AuthServer) -> None:
    files = sorted(p.name for p in server.bundle.iterdir())
    key = Subjects(server.root).key
    roles = ("lead", "pool", "grader", "collector", "webhooks", "dreamer", "api", "submit", "admin")
    users = [f"{key}-{r}" for r in roles] + [f"{key}-agent-{a}" for a in AGENTS]
    assert files == sorted([CONFIG_FILE, *(f"{u}.env" for u in users)])
    for path in server.bundle.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    env = server.env(f"{key}-agent-scout")
    assert env["STAFFWORK_NATS_USER"] == f"{key}-agent-scout"
    assert env["STAFFWORK_NATS_INBOX_PREFIX"] == f"_INBOX.{key}-agent-scout"
    assert env["STAFFWORK_ROOT"] == server.root
    assert len(env["STAFFWORK_NATS_PASSWORD"]) >= 40
    assert env["STAFFWORK_NATS_PASSWORD"] in (server.bundle / CONFIG_FILE).read_text()
    assert GRANTED_NOTICE_KEY == NOTICE_KEY  # the registry key the workers may write


def test_auth_prints_the_config_without_out_and_refuses_to_overwrite(tmp_path: Path) -> None:
    printed = run_auth("--agents", "a,b", "--group", "ab=a,b", "--roles", "subagent,submit")
    assert 'user: "sw-agents-ab"' in printed
    assert 'user: "sw-submit"' in printed
    assert "sw-lead" not in printed
    assert "no team says what all of a, b's tools reach" in printed
    run_auth("--agents", "a", "--out", str(tmp_path / "out"))
    app = typer.Typer()
    app.command()(auth)
    again = CliRunner().invoke(app, ["--agents", "a", "--out", str(tmp_path / "out")])
    assert again.exit_code == 1
    assert "exists" in again.output
    assert "--force" in again.output
    bad = CliRunner().invoke(app, ["--agents", "a", "--group", "x=a,zz"])
    assert bad.exit_code == 1
    assert "'zz' is not one of the agents" in bad.output


# --- what each user may not do ------------------------------------------------------------------------


async def provisioned(server: AuthServer) -> None:
    async with bus_as(server, user_of(server, "admin")) as admin:
        await provision(admin, agents=AGENTS)


async def test_a_worker_takes_its_own_tasks_and_nobody_elses(server: AuthServer) -> None:
    await provisioned(server)
    s = Subjects(server.root)
    log = s.log_stream
    async with bus_as(server, user_of(server, "admin")) as admin:
        await admin._js.publish(s.task("ses_1", "scout"), b"for scout")
        await admin._js.publish(s.task("ses_1", "scribe"), b"for scribe")
        own = (await admin._js.consumer_info(log, s.agent_consumer("scout"))).config.as_dict()
    async with client(server, user_of(server, "subagent", "scout")) as (nc, refusals):
        # its own consumer: pulled and acked
        deliveries = await nc.subscribe(nc.new_inbox())
        await nc.publish(
            J.msg_next(log, s.agent_consumer("scout")), b'{"batch": 1}', reply=deliveries.subject
        )
        pulled = await deliveries.next_msg(timeout=5)
        assert pulled.data == b"for scout"
        await pulled.ack_sync(timeout=5)
        # another agent's: not pulled, not settled, not reconfigured, not sidestepped
        assert await refused_publish(nc, refusals, J.msg_next(log, s.agent_consumer("scribe")), b"{}")
        assert await refused_publish(nc, refusals, f"$JS.ACK.{log}.agent_scribe.1.2.2.0.0", b"+ACK")
        assert await refused_publish(nc, refusals, J.durable_create(log, s.agent_consumer("scribe")), b"{}")
        # no consumer anywhere: its tools list nothing (so it cannot have the server publish for it)
        assert await refused_publish(nc, refusals, J.ephemeral_create(log), b"{}")
        assert await refused_publish(nc, refusals, J.ephemeral_create(J.object_stream(s.files_bucket)))
        assert await refused_publish(nc, refusals, J.ephemeral_create(s.memory_stream))
        # its own consumer it may update, but a pull consumer does not become push
        push = {key: value for key, value in own.items() if key != "max_waiting"}  # a pull setting
        push["deliver_subject"] = "elsewhere"
        answer = await nc.request(
            J.durable_create(log, s.agent_consumer("scout")),
            json.dumps({"stream_name": log, "config": push}).encode(),
            timeout=5,
        )
        assert json.loads(answer.data)["error"]["description"] == "can not update pull consumer to push based"

        # the lead's traffic
        assert await refused_publish(nc, refusals, s.submit)
        assert await refused_publish(nc, refusals, s.task("ses_1", "scribe"))
        assert await refused_publish(nc, refusals, s.history("ses_1", "lead"))
        assert await refused_publish(nc, refusals, s.out("ses_1", "result"))
        # administration
        assert await refused_publish(nc, refusals, f"$JS.API.STREAM.CREATE.{s.key}_mine", b"{}")
        assert await refused_publish(nc, refusals, f"$JS.API.STREAM.DELETE.{log}")
        # others' messages in flight
        assert await refused_subscription(nc, refusals, "_INBOX.>")
        assert await refused_subscription(nc, refusals, f"_INBOX.{user_of(server, 'lead')}.>")
        assert await refused_subscription(nc, refusals, s.all_tasks)
        assert await refused_subscription(nc, refusals, s.all_replies)
    # a read-only store is read-only on the server too
    async with client(server, user_of(server, "subagent", "scribe")) as (nc, refusals):
        assert await refused_publish(nc, refusals, s.memory_file("notes", "eA"))
        assert await refused_publish(nc, refusals, s.memory_file("other", "eA"))


async def test_the_submit_client_submits_and_reads_results_only(server: AuthServer) -> None:
    await provisioned(server)
    s = Subjects(server.root)
    async with client(server, user_of(server, "submit")) as (nc, refusals):
        assert await refused_publish(nc, refusals, J.msg_next(s.log_stream, s.agent_consumer("scout")))
        assert await refused_publish(nc, refusals, J.msg_next(s.log_stream, s.lead_consumer))
        assert await refused_publish(nc, refusals, s.submit)  # only through the gateway, which checks
        assert await refused_publish(nc, refusals, s.task("ses_1", "scout"))
        assert await refused_publish(nc, refusals, s.ctl("ses_1"))
        assert await refused_publish(nc, refusals, J.direct_get(s.log_stream), b'{"seq": 1}')
        assert await refused_publish(nc, refusals, J.ephemeral_create(s.log_stream), b"{}")
        assert await refused_publish(nc, refusals, J.kv_key(s.sessions_bucket, "ses_1"))
        assert await refused_publish(nc, refusals, J.object_subjects(s.files_bucket).replace(">", "M.x"))
        assert await refused_subscription(nc, refusals, s.all_replies)
        assert await refused_subscription(nc, refusals, s.all_histories)
        assert await refused_subscription(nc, refusals, "$SRV.>")  # not a service


async def test_the_other_roles_keep_to_their_own(server: AuthServer) -> None:
    await provisioned(server)
    s = Subjects(server.root)
    log = s.log_stream
    async with client(server, user_of(server, "grader")) as (nc, refusals):
        assert await refused_publish(nc, refusals, J.msg_next(log, s.agent_consumer("scout")))
        assert await refused_publish(nc, refusals, s.out("ses_1", "result"))  # its verdicts only
        assert await refused_publish(nc, refusals, s.task("ses_1", "scout"))
        assert await refused_publish(nc, refusals, J.object_subjects(s.files_bucket).replace(">", "M.x"))
    async with client(server, user_of(server, "collector")) as (nc, refusals):
        assert await refused_publish(nc, refusals, J.direct_get(log), b'{"seq": 1}')
        assert await refused_publish(nc, refusals, s.reply("ses_1", "t-1"))
        assert await refused_publish(nc, refusals, J.msg_next(log, s.grader_consumer))
    async with client(server, user_of(server, "lead")) as (nc, refusals):
        assert await refused_publish(nc, refusals, J.msg_next(log, s.agent_consumer("scout")))
        assert await refused_publish(nc, refusals, s.task("ses_1", "stranger"))  # not an agent here
        assert await refused_publish(nc, refusals, s.memory_file("notes", "eA"))  # not the lead's store
        assert await refused_publish(nc, refusals, f"$JS.API.STREAM.DELETE.{log}")


async def test_the_unnamed_consumer_create_updates_any_consumer_so_no_worker_gets_it(
    server: AuthServer,
) -> None:
    """Why ``EPHEMERAL_CAUTION``: the lead needs an ordered consumer (the grader's verdicts), and
    the same right rewrites another consumer's settings."""
    await provisioned(server)
    s = Subjects(server.root)
    durable = s.agent_consumer("scribe")
    async with bus_as(server, user_of(server, "admin")) as admin:
        config = (await admin._js.consumer_info(s.log_stream, durable)).config.as_dict()
        assert config.pop("durable_name") == durable  # the unnamed form refuses a durable name...
        assert config["max_deliver"] != 1
    update = {
        "stream_name": s.log_stream,
        "config": {**config, "name": durable, "max_deliver": 1},
    }  # ...not a name
    async with client(server, user_of(server, "lead")) as (nc, _):
        answer = await nc.request(J.ephemeral_create(s.log_stream), json.dumps(update).encode(), timeout=5)
    assert json.loads(answer.data)["config"]["max_deliver"] == 1


async def test_a_listing_right_is_a_right_to_publish_where_someone_listens(server: AuthServer) -> None:
    """Why only the agents whose tools list get to create consumers (``PUSH_CAUTION``): the scribe
    lists files, so it may create a consumer on the files bucket, and nats-server 2.15 lets it pick a
    push deliver subject it may not publish to (nats-io/nats-server#8274). Here the server delivers
    a file the scribe wrote to a client waiting for a session's result: a result the scribe could not
    publish itself. When the server checks deliver subjects, this test fails and the caution can go."""
    await provisioned(server)
    s = Subjects(server.root)
    session_id = new_id("ses")
    result = s.out(session_id, "result")
    forged = encode(SessionResult(session_id=session_id, status="idle", final_text="forged by the scribe"))
    async with (
        client(server, user_of(server, "submit")) as (waiting, _),
        client(server, user_of(server, "subagent", "scribe")) as (nc, refusals),
    ):
        results = await waiting.subscribe(result)
        await waiting.flush()
        assert await refused_publish(nc, refusals, result, forged)
        await Workspace(Bus(nc, s, server.url)).put(session_id, "result.json", forged)  # its own file
        config = {
            "deliver_subject": result,
            "filter_subject": J.object_subjects(s.files_bucket).replace(">", "C.>"),
            "ack_policy": "none",
        }
        request = {"stream_name": J.object_stream(s.files_bucket), "config": config}
        await nc.request(
            J.ephemeral_create(J.object_stream(s.files_bucket)), json.dumps(request).encode(), timeout=5
        )
        delivered = await results.next_msg(timeout=10)
    assert delivered.data == forged


# --- a whole session, every actor on its own user -----------------------------------------------------


@dataclass
class ActorProcess:
    name: str
    process: asyncio.subprocess.Process
    stdout: list[str]
    stderr: list[str]
    readers: asyncio.Future[tuple[None, None]]
    ready: asyncio.Event

    async def wait_ready(self) -> None:
        """Until it printed READY; an error with its last log lines if it exited first."""
        exited = asyncio.ensure_future(self.process.wait())
        ready = asyncio.ensure_future(self.ready.wait())
        try:
            await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            exited.cancel()
            ready.cancel()
        if not self.ready.is_set():
            raise AssertionError(f"{self.name} exited before READY:\n" + "\n".join(self.stderr[-30:]))


async def spawn_actor(server: AuthServer, role: str, user: str, *args: str) -> ActorProcess:
    """``tests/perm_actor.py ROLE`` as ``user`` (its credentials file is its environment)."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("STAFFWORK_NATS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.perm_actor",
        role,
        server.url,
        server.root,
        *args,
        cwd=ROOT_DIR,
        env={**env, **server.env(user), "PYTHONUNBUFFERED": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    assert proc.stderr is not None
    stdout: list[str] = []
    stderr: list[str] = []
    ready = asyncio.Event()

    async def read(stream: asyncio.StreamReader, lines: list[str]) -> None:
        while line := await stream.readline():
            lines.append(line.decode(errors="replace").rstrip())
            if lines is stdout and lines[-1] == "READY":
                ready.set()

    readers = asyncio.gather(read(proc.stdout, stdout), read(proc.stderr, stderr))
    return ActorProcess(f"{role}:{user}", proc, stdout, stderr, readers, ready)


async def stop_actors(actors: list[ActorProcess]) -> dict[str, int]:
    """SIGTERM each, then its exit code (killed after 30 s)."""
    for actor in actors:
        if actor.process.returncode is None:
            actor.process.send_signal(signal.SIGTERM)
    codes = {}
    for actor in actors:
        try:
            async with asyncio.timeout(30):
                codes[actor.name] = await actor.process.wait()
        except TimeoutError:
            actor.process.kill()
            codes[actor.name] = await actor.process.wait()
        await actor.readers
    return codes


class HookReceiver:
    """A local HTTP endpoint that answers every request 200 and keeps the bodies."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.arrived = asyncio.Event()
        self.url = ""

    async def __aenter__(self) -> HookReceiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length:\s*(\d+)", head)
        self.bodies.append(await reader.readexactly(int(length.group(1)) if length else 0))
        self.arrived.set()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def wait(self, timeout: float = 20.0) -> bytes:
        """The first delivery's body."""
        async with asyncio.timeout(timeout):
            await self.arrived.wait()
        return self.bodies[0]


async def test_a_session_runs_with_every_actor_on_its_own_user(
    server: AuthServer, team_file: Path, tmp_path: Path
) -> None:
    s = Subjects(server.root)
    session_id = new_id("ses")
    async with bus_as(server, user_of(server, "admin")) as admin:  # what the operator provisions
        await provision(admin, agents=AGENTS)
        trace = TraceStore(tmp_path / "unused.db")
        await ensure_consumer(admin, CollectorActor(trace).consumer(s))  # provision() leaves it out
        trace.close()
        await register_team(admin, load_team(team_file))
        memory = Memory(admin)
        await memory.create("notes")
        await memory.write("notes", "readme.md", "the team's notes start here", writer=OPERATOR)
        await Workspace(admin).put(session_id, "data.csv", "service,errors\npayments,7\n")

    actors: list[ActorProcess] = []
    try:
        for role, user, args in [
            ("lead", user_of(server, "lead"), ()),
            ("subagent", user_of(server, "subagent", "scout"), ("--agents", "scout")),
            ("subagent", user_of(server, "subagent", "scribe"), ("--agents", "scribe")),
            ("grader", user_of(server, "grader"), ()),
            ("collector", user_of(server, "collector"), ("--db", str(tmp_path / "trace.db"))),
            ("webhooks", user_of(server, "webhooks"), ()),
            ("dreamer", user_of(server, "dreamer"), ()),
        ]:
            actors.append(await spawn_actor(server, role, user, *args))
        async with asyncio.timeout(30):
            await asyncio.gather(*(actor.wait_ready() for actor in actors))
        async with HookReceiver() as receiver, bus_as(server, user_of(server, "submit")) as submitter:
            results = await inbox(submitter, s.out(session_id, "result"), SessionResult)
            await Client(submitter).submit(
                "what failed?",
                team="permteam",
                session_id=session_id,
                inputs=["data.csv"],
                webhooks=[WebhookSpec(url=f"{receiver.url}/hook", secret=HOOK_SECRET)],
            )
            result = await results.next(timeout=60)
            hook = json.loads(await receiver.wait())
        assert result.status == "idle", result.final_text
        assert "scout read:" in result.final_text
        assert "payments,7" in result.final_text
        assert "scribe read:" in result.final_text
        assert "the team's notes start here" in result.final_text
        assert result.outcome is not None
        assert result.outcome.result == "satisfied", result.outcome
        assert hook["data"]["id"] == session_id
        async with bus_as(server, user_of(server, "admin")) as admin:
            note = await Memory(admin).read("notes", "findings.md")
            assert note.content.startswith("scout saw: what failed?")
            assert (await Workspace(admin).get(session_id, "scribe.md")).startswith(
                b"summary of: what failed?"
            )
            # the dreamer reads the session (through the collector) and writes a new store
            dream = await request_dream(admin, DreamRequest(store="notes", sessions=5))
            done = await wait_dream(admin, dream.dream_id, timeout=30)
            assert done.status == "completed", done.error
            assert done.report is not None
            assert done.report.sessions == 1
        async with bus_as(server, user_of(server, "submit")) as submitter:  # long stored by now
            assert await submitter.last(s.out(session_id, "result")) == encode(result)
    finally:
        codes = await stop_actors(actors)
    assert server.violations() == []
    for actor in actors:
        assert not [line for line in actor.stderr if "PERMISSION_VIOLATION" in line], actor.name
    assert set(codes.values()) <= {0}, codes


# --- the HTTP API on its own user ---------------------------------------------------------------------


@asynccontextmanager
async def api_as(server: AuthServer, user: str) -> AsyncIterator[tuple[ApiActor, Bus, Refusals]]:
    """The api role in this process as ``staffwork actor api`` builds it (from the roles table, with
    the process's identity service), on ``user``'s connection and any free port; with the refusals
    that connection gets. Like ``tests/perm_actor.py`` it does not provision (the admin did)."""
    async with client(server, user) as (nc, refusals):
        bus = Bus(nc, Subjects(server.root), server.url)
        built = build(bus, ["api"], RoleConfig(api=ApiSettings(ApiKeys.parse(f"acme={API_KEY}"), port=0)))
        [(actor, _)] = built
        assert isinstance(actor, ApiActor)
        stop = asyncio.Event()
        ready = asyncio.Event()
        identity = ProcessIdentity(roles=("api",))
        serving = asyncio.ensure_future(run_actors(bus, built, stop, on_ready=ready.set, identity=identity))
        waiting = asyncio.ensure_future(ready.wait())
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
            if serving.done():
                serving.result()  # it failed to start: raise why
            yield actor, bus, refusals
        finally:
            waiting.cancel()
            stop.set()
            await serving


async def idle_stream(stream: anthropic.AsyncStream[Any]) -> list[Any]:
    """The stream's events up to the session's ``session.status_idle`` (one that waits on no caller)."""
    seen: list[Any] = []
    async with asyncio.timeout(60):
        async for event in stream:
            seen.append(event)
            if event.type == "session.status_idle" and event.stop_reason.type != "requires_action":
                return seen
    raise AssertionError(f"the stream ended before the session went idle: {[e.type for e in seen]}")


async def test_the_api_serves_the_sdk_on_its_own_user_and_is_refused_the_rest(server: AuthServer) -> None:
    """The api role on its own user, with the lead, a worker and the grader on theirs: the official
    SDK makes an agent, an environment, a memory store and its memories, runs a session with an
    outcome and reads its events, and nothing is refused; what the api does not need is."""
    s = Subjects(server.root)
    await provisioned(server)
    actors: list[ActorProcess] = []
    try:
        for role, user, args in [
            ("lead", user_of(server, "lead"), ()),
            ("subagent", user_of(server, "subagent", "scout"), ("--agents", "scout")),
            ("grader", user_of(server, "grader"), ()),
        ]:
            actors.append(await spawn_actor(server, role, user, *args))
        async with asyncio.timeout(30):
            await asyncio.gather(*(actor.wait_ready() for actor in actors))
        async with (
            api_as(server, user_of(server, "api")) as (api, api_bus, refusals),
            api_client(api) as sdk,
        ):
            b = sdk.beta
            env = await b.environments.create(name="perm", config={"type": "cloud"})
            scout = await b.agents.create(name="scout", model="claude-sonnet-4-6", system="Look.")
            tools: Any = [{"type": "agent_toolset_20260401"}]
            lead = await b.agents.create(
                name="lead",
                model="claude-sonnet-4-6",
                system="Delegate, then report.",
                tools=tools,
                multiagent={"type": "coordinator", "agents": [scout.id]},
            )
            # memory: a store and its memories, written, read, listed, deleted
            store = await b.memory_stores.create(name="perm notes", description="the api's own")
            memories = b.memory_stores.memories
            mem = await memories.create(store.id, path="/notes/a.md", content="first")
            other = await memories.create(store.id, path="/notes/b.md", content="second")
            mem = await memories.update(mem.id, memory_store_id=store.id, content="first, again")
            assert (await memories.retrieve(mem.id, memory_store_id=store.id)).content == "first, again"
            assert [m.path async for m in memories.list(store.id)] == ["/notes/a.md", "/notes/b.md"]
            await memories.delete(other.id, memory_store_id=store.id)
            assert [m.path async for m in memories.list(store.id)] == ["/notes/a.md"]
            assert store.id in [m.id async for m in b.memory_stores.list()]

            # a session with an outcome, followed live, then listed
            session = await b.sessions.create(agent=lead.id, environment_id=env.id)
            async with await b.sessions.events.stream(session.id) as stream:
                sent = await b.sessions.events.send(
                    session.id,
                    events=[
                        {"type": "user.message", "content": [{"type": "text", "text": "what failed?"}]},
                        {
                            "type": "user.define_outcome",
                            "description": "a report",
                            "rubric": {"type": "text", "content": "- It names what failed."},
                            "max_iterations": 1,
                        },
                    ],
                )
                live = await idle_stream(stream)
            assert sent.data is not None
            assert live[0].id == sent.data[0].id
            types = [e.type for e in live]
            assert {"session.thread_created", "agent.thread_message_received", "agent.message"} <= set(types)
            assert "span.outcome_evaluation_end" in types  # the grader, on its user, graded it
            listed = [e async for e in b.sessions.events.list(session.id, limit=1000)]
            assert [e.id for e in listed] == [e.id for e in live]
            assert (await b.sessions.retrieve(session.id)).status == "idle"
            assert len([t async for t in b.sessions.threads.list(session.id)]) == 2

            # a follow-up turn (<root>.api.message), then an interrupt (<root>.s.<session>.ctl),
            # which leaves the session idle
            async with await b.sessions.events.stream(session.id) as stream:
                more: Any = [{"type": "user.message", "content": [{"type": "text", "text": "and then?"}]}]
                await b.sessions.events.send(session.id, events=more)
                turn = await idle_stream(stream)
            assert "agent.message" in [e.type for e in turn]
            await b.sessions.events.send(session.id, events=[{"type": "user.interrupt"}])
            assert (await b.sessions.retrieve(session.id)).status == "idle"
            # a custom tool's answer may be stored (no agent here calls one: published directly)
            answer = CustomToolResult(session_id=session.id, custom_tool_use_id="toolu_x", content="ok")
            assert await api_bus.publish_once(s.tool_result(session.id, "toolu_x"), answer, msg_id="answer-x")
            # dreams: a request is allowed (no dreamer here: "no responders", not a refusal), a
            # dream's record is read and a pending dream canceled
            with pytest.raises(NoResponders):
                await request_dream(api_bus, DreamRequest(store=store.id, sessions=1), timeout=5)
            dream = DreamRecord(dream_id=new_id("drm"), store=store.id, output_store="perm-out")
            async with bus_as(server, user_of(server, "admin")) as admin:
                await DreamBook(admin).create(dream)
            assert await DreamBook(api_bus).get(dream.dream_id) == dream
            assert (await cancel_dream(api_bus, dream.dream_id, "not now")).status == "canceled"
            # the process answers health probes like every actor process
            async with bus_as(server, user_of(server, "admin")) as admin:
                found = await probe(admin, timeout=5, enough=lambda r: "api" in r.roles)
            assert any("api" in r.roles for r in found)
            assert refusals.seen == []  # all of the above was allowed

            # what the api does not need
            nc = api_bus._nc
            assert await refused_publish(nc, refusals, s.task(session.id, "scout"))
            assert await refused_publish(nc, refusals, s.out(session.id, "result"))
            assert await refused_publish(nc, refusals, s.history(session.id, "lead"))
            assert await refused_publish(nc, refusals, s.submit)  # only through the gateway
            assert await refused_publish(nc, refusals, s.event(session.id, "agent.message"))
            assert await refused_publish(nc, refusals, J.msg_next(s.log_stream, s.agent_consumer("scout")))
            files = J.object_stream(s.files_bucket)
            assert await refused_publish(nc, refusals, J.direct_get(files), b'{"seq": 1}')
            webhooks = J.kv_stream(s.webhooks_bucket)
            assert await refused_publish(
                nc, refusals, J.direct_get_last(webhooks, J.kv_key(s.webhooks_bucket, "x"))
            )
            assert await refused_publish(nc, refusals, J.kv_key(s.webhooks_bucket, "x"))
            assert await refused_publish(nc, refusals, J.kv_key(s.registry_bucket, "team.x"))
            assert await refused_subscription(nc, refusals, s.all_replies)
            assert await refused_subscription(nc, refusals, s.events())
    finally:
        codes = await stop_actors(actors)
    refused = len(refusals.seen)
    assert len(server.violations()) == refused, server.violations()
    for actor in actors:
        assert not [line for line in actor.stderr if "PERMISSION_VIOLATION" in line], actor.name
    assert set(codes.values()) <= {0}, codes


async def test_staffwork_actor_on_its_own_user_goes_on_with_what_the_admin_provisioned(
    server: AuthServer,
) -> None:
    """``staffwork actor api`` as the api user: its user may not create streams, so provisioning is
    refused at once (not after a timeout) with a note, and the actor serves what the admin made."""
    await provisioned(server)
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("STAFFWORK_NATS_")}
    env |= server.env(user_of(server, "api")) | {"STAFFWORK_API_KEYS": f"acme={API_KEY}"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "actors.cli", "actor", "api", "--nats", server.url, "--root", server.root,
        "--api-port", str(port), cwd=ROOT_DIR, env=env, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    said: list[str] = []
    try:
        async with asyncio.timeout(15):  # the refused STREAM.CREATE alone would have taken 10 s
            while not said or "api ready" not in said[-1]:
                line = (await proc.stderr.readline()).decode()
                assert line, "the actor exited:\n" + "".join(said)
                said.append(line)
        async with anthropic.AsyncAnthropic(
            base_url=f"http://127.0.0.1:{port}", api_key=API_KEY, max_retries=0
        ) as sdk:
            env_made = await sdk.beta.environments.create(name="e", config={"type": "self_hosted"})
            assert (await sdk.beta.environments.retrieve(env_made.id)).name == "e"
    finally:
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await proc.wait()
    notes = [line for line in said if line.startswith("note: this NATS user may not provision root")]
    assert len(notes) == 1, said
    assert "permissions violation" in notes[0]
    assert proc.returncode == 0
