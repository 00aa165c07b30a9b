"""``staffwork run``: submit a session and follow it live, and how every command reaches the bus.

Where the bus is: ``--nats URL`` if given; else the user's running embedded server (``up``, ``server``
or another ``run``, found through the state file); else this command starts the embedded server on
the user's persistent store and stops it afterwards (waiting for other commands attached to it).

Which actors run a session: if a lead answers the submit gateway (``up``, or actors deployed against
``--nats``), the session goes to it, and this process adds workers only for agents nobody serves;
otherwise this process runs the lead and the team's agents itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.live import Live
from rich.table import Table

from actors.agent.models import default_model
from actors.client import Client
from actors.grader.actor import serve_grader
from actors.roles import running_agents, running_service
from actors.webhooks.actor import WebhookSettings, serve_webhooks
from bus import local
from bus.connection import Bus
from bus.errors import BusTimeout, StaffworkError, StoreInUse
from bus.paths import data_dir, server_store_dir
from bus.server import EmbeddedServer
from schemas.ids import new_id
from schemas.session import SessionResult
from schemas.team import TeamSpec, parse_team
from schemas.trace import (
    AgentToolUse,
    AnyTraceEvent,
    ModelRequestEnd,
    OutcomeEvaluationEnd,
    OutcomeEvaluationStart,
    SessionStatusIdle,
    SessionStatusRunning,
    ThreadCreated,
    ThreadStatusIdle,
    ThreadStatusRunning,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@dataclass
class Target:
    bus: Bus
    url: str
    where: str  # a sentence for the user
    owned: bool = False  # this process started the server (others may attach to it)


@contextlib.asynccontextmanager
async def bus_target(nats: str | None, root: str, *, name: str = "staffwork") -> AsyncIterator[Target]:
    """Connect to ``nats``, or the user's running server, or a server started (and stopped) here."""
    if nats:
        async with await Bus.connect(nats, root=root, name=name) as bus:
            yield Target(bus, nats, f"NATS at {nats}")
        return
    running = local.running_server()
    server: EmbeddedServer | None = None
    if running is None:
        server = EmbeddedServer(server_store_dir(), port=-1)
        try:
            await server.start()
        except StoreInUse:
            # Another command holds the store: it is starting its server (wait for its announcement)
            # or stopping it (then the store frees up and we start our own).
            running = await local.announced(timeout=15.0)
            if running is None:
                await server.start()  # the other one stopped meanwhile; if not, its error stands
            else:
                server = None
    if server is not None:
        url = server.url

        def waiting(count: int) -> None:
            Console(stderr=True).print(f"waiting for {count} other staffwork command(s) using this server")

        where = f"embedded nats-server at {url} (store {server.store_dir})"
        async with (
            local.serving(server, "run", on_wait=waiting),
            await Bus.connect(url, root=root, name=name) as bus,
        ):
            yield Target(bus, url, where, owned=True)
        return
    assert running is not None
    with local.attached():
        async with await Bus.connect(running.url, root=root, name=name) as bus:
            yield Target(bus, running.url, f"the running staffwork {running.mode} at {running.url}")


# --- teams and examples ----------------------------------------------------------------------------


@dataclass
class Example:
    team: TeamSpec
    task: str
    data: Path


def load_team(path: Path) -> TeamSpec:
    return parse_team(path.read_bytes(), source=str(path))


def load_example(name: str) -> Example:
    folder = EXAMPLES / name
    team_file = folder / "team.toml"
    if not team_file.is_file():
        known = ", ".join(sorted(p.name for p in EXAMPLES.iterdir() if (p / "team.toml").is_file()))
        raise FileNotFoundError(f"no example {name!r} (known: {known})")
    team = load_team(team_file)
    data = data_dir() / "examples" / name
    if name == "incident":
        from examples.incident.generate import generate

        if not data.exists():
            # Generate privately, then rename into place: a command starting at the same moment never
            # reads half-written files (the rename is atomic; if another process won, use its data).
            private = data.with_name(f".{name}-{os.getpid()}")
            shutil.rmtree(private, ignore_errors=True)
            generate(private)
            try:
                private.rename(data)
            except OSError:
                shutil.rmtree(private, ignore_errors=True)
        task = (
            "Payments are failing since this afternoon. Find out what happened and write the incident report."
        )
    else:
        task = f"Run the {name} example."
    return Example(team=team, task=task, data=data)


# --- the progress display --------------------------------------------------------------------------


@dataclass
class ThreadRow:
    thread_id: str
    agent: str
    status: str = "created"
    turns: int = 0
    tools: int = 0
    tokens: int = 0
    cost: float = 0.0
    started: datetime | None = None
    ended: datetime | None = None

    def elapsed(self, now: datetime) -> float:
        if self.started is None:
            return 0.0
        return ((self.ended or now) - self.started).total_seconds()

    def as_json(self) -> dict[str, Any]:
        return {
            "thread_id": self.thread_id,
            "agent": self.agent,
            "status": self.status,
            "started": self.started.isoformat() if self.started else None,
            "ended": self.ended.isoformat() if self.ended else None,
            "turns": self.turns,
            "tool_calls": self.tools,
            "tokens": self.tokens,
            "cost_usd": round(self.cost, 6),
        }


@dataclass
class Progress:
    threads: dict[str, ThreadRow] = field(default_factory=dict)
    last: datetime | None = None

    def row(self, thread_id: str, agent: str) -> ThreadRow:
        if thread_id not in self.threads:
            self.threads[thread_id] = ThreadRow(thread_id, agent)
        return self.threads[thread_id]

    def apply(self, event: AnyTraceEvent) -> None:
        self.last = event.time
        row = self.row(event.thread_id or "lead", event.agent)
        if isinstance(event, SessionStatusRunning | ThreadStatusRunning | ThreadCreated):
            row.status = "running"
            row.started = row.started or event.time
        elif isinstance(event, ModelRequestEnd):
            row.turns += 1
            row.tokens += event.usage.input_tokens + event.usage.output_tokens
            row.cost += event.usage.cost_usd
        elif isinstance(event, AgentToolUse):
            row.tools += 1
        elif isinstance(event, ThreadStatusIdle | SessionStatusIdle):
            row.status = "idle" if event.stop_reason in ("end_turn", "") else event.stop_reason
            row.ended = event.time
        elif isinstance(event, OutcomeEvaluationStart):
            row.status = f"grading {event.iteration}"
            row.started = row.started or event.time
        elif isinstance(event, OutcomeEvaluationEnd):  # its usage came with the grader's model calls
            row.status = event.result
            row.ended = event.time

    def table(self) -> Table:
        table = Table(box=None, header_style="bold", pad_edge=False)
        for column in ("thread", "agent", "status", "turns", "tool calls", "tokens", "elapsed"):
            table.add_column(
                column, justify="right" if column in ("turns", "tool calls", "tokens", "elapsed") else "left"
            )
        now = self.last or datetime.now().astimezone()
        for row in self.threads.values():
            colour = {"running": "yellow", "idle": "green"}.get(row.status, "red")
            table.add_row(
                row.thread_id,
                row.agent,
                f"[{colour}]{row.status}[/]",
                str(row.turns),
                str(row.tools),
                f"{row.tokens:,}",
                f"{row.elapsed(now):.1f}s",
            )
        return table


# --- run -------------------------------------------------------------------------------------------


@dataclass
class RunOutcome:
    result: SessionResult
    progress: Progress
    wall_s: float
    model: str

    def as_json(self) -> dict[str, Any]:
        """The stable, documented shape of ``staffwork run --json``."""
        usage = self.result.usage
        return {
            "session_id": self.result.session_id,
            "status": self.result.status,
            "final_text": self.result.final_text,
            "report_path": self.result.report_path,
            "files": self.result.files,
            "threads": [row.as_json() for row in self.progress.threads.values()],
            "usage": {
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_creation_input_tokens": usage.cache_creation_input_tokens,
                "cache_read_input_tokens": usage.cache_read_input_tokens,
            },
            "cost_usd": round(usage.cost_usd, 6),
            "wall_s": round(self.wall_s, 3),
            "model": self.model,
            "error": self.result.error.message if self.result.error else None,
            "outcome": msgspec.to_builtins(self.result.outcome) if self.result.outcome else None,
        }


async def _deliveries_settled(bus: Bus, console: Console, *, timeout: float) -> None:
    """Wait (at most ``timeout``) until no webhook delivery is pending; what is still pending then
    stays in JetStream for the next webhooks actor (``staffwork up`` or ``staffwork actor webhooks``)."""
    deadline = time.monotonic() + timeout
    events, deliveries = bus.subjects.webhook_events_consumer, bus.subjects.webhook_deliveries_consumer
    while time.monotonic() < deadline:
        if await bus.consumer_backlog(events) + await bus.consumer_backlog(deliveries) == 0:
            return
        await asyncio.sleep(0.1)
    console.print(
        "some webhook deliveries are still pending (retrying): the next webhooks actor delivers them",
        highlight=False,
    )


async def run_session(
    target: Target,
    team: TeamSpec,
    task: str,
    inputs: list[Path],
    *,
    console: Console,
    live: bool,
    timeout: float | None = None,
    allow_private_webhooks: bool = False,
) -> RunOutcome:
    """Run one session on an already provisioned bus (the ``run`` command provisions it first)."""
    bus = target.bus
    started = time.perf_counter()
    model = default_model()
    has_lead = await bus.consumer_active(bus.subjects.lead_consumer)
    missing = [
        a.name
        for a in team.agents
        if not (has_lead and await bus.consumer_active(bus.subjects.agent_consumer(a.name)))
    ]
    async with contextlib.AsyncExitStack() as stack:
        if not has_lead or missing:
            await stack.enter_async_context(running_agents(bus, model, lead=not has_lead, agents=missing))
        if team.outcome is not None and not await bus.consumer_active(bus.subjects.grader_consumer):
            await stack.enter_async_context(
                running_service(lambda stop, ready: serve_grader(bus, model, stop, on_ready=ready))
            )
        hooks = team.webhooks and not await bus.consumer_active(bus.subjects.webhook_deliveries_consumer)
        if hooks:
            settings = WebhookSettings(allow_private=allow_private_webhooks)
            await stack.enter_async_context(
                running_service(
                    lambda stop, ready: serve_webhooks(bus, stop, settings=settings, on_ready=ready)
                )
            )
        client = Client(bus)
        session_id = new_id("ses")
        uploaded: list[str] = []
        for directory in inputs:
            uploaded += await client.upload(session_id, directory)
        await client.submit(task, team=team, inputs=uploaded, session_id=session_id)
        progress = Progress()
        display = (
            Live(progress.table(), console=console, refresh_per_second=8, transient=False) if live else None
        )

        async def follow() -> None:
            async for event in client.events(session_id):
                progress.apply(event)
                if display is not None:
                    display.update(progress.table())

        with contextlib.ExitStack() as finish:
            if display is not None:
                finish.callback(console.line)  # the display's last frame ends without a newline
                finish.enter_context(display)
            follower = asyncio.ensure_future(follow())
            try:
                # The result decides the end: a session that fails never goes idle, but has a result.
                result = await client.wait(session_id, timeout=timeout)
                with contextlib.suppress(TimeoutError):  # let the display catch up with the last events
                    await asyncio.wait_for(asyncio.shield(follower), 2.0)
            except BusTimeout:
                await client.cancel(session_id, f"gave up after {timeout:g}s")
                raise StaffworkError(f"gave up after {timeout:g}s; session {session_id} canceled") from None
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
        if hooks:  # the session's webhooks go out before this process (their deliverer) ends
            await _deliveries_settled(bus, console, timeout=15.0)
        if target.owned and (not has_lead or missing) and local.other_clients():
            # Commands attached to our server may be relying on the actors we run: keep serving.
            console.print("other staffwork commands are using this server's actors: waiting for them")
            await local.wait_for_clients()
    return RunOutcome(
        result=result, progress=progress, wall_s=time.perf_counter() - started, model=model.name
    )
