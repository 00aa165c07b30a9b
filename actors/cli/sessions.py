"""The session commands: ``run`` (submit a session and follow it live), ``submit``, ``status`` and
``cancel``.

Which actors run a session (:func:`run_session`): for each role the team needs, whether its consumer
has active pullers (``up``, or actors deployed against ``--nats``); this process runs the roles nobody
serves. If a lead runs elsewhere, it adds workers only for agents nobody serves; otherwise it runs the
lead and all the team's agents itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.live import Live

from actors.agent.models import default_model
from actors.cli.common import (
    AllowPrivateOption,
    NatsOption,
    RootOption,
    Target,
    bus_target,
    err,
    load_example,
    load_team,
    out,
    run_async,
    session_record,
)
from actors.cli.progress import Progress
from actors.client import Client
from actors.roles import ROLES, RoleConfig, running
from actors.sessions.directory import TERMINAL
from actors.webhooks.actor import WebhookSettings
from bus import local
from bus.connection import Bus
from bus.errors import BusTimeout, StaffworkError
from bus.provision import provision
from schemas.ids import new_id
from schemas.session import SessionResult
from schemas.team import TeamSpec

TeamOption = Annotated[Path | None, typer.Option("--team", help="A team file (TOML).")]
ExampleOption = Annotated[
    str | None, typer.Option("--example", help="A bundled example team (e.g. incident).")
]
InputOption = Annotated[
    list[Path] | None, typer.Option("--input", help="A directory to upload into the session's workspace.")
]


def _directories(paths: list[Path]) -> list[Path]:
    for path in paths:
        if not path.is_dir():
            raise StaffworkError(f"--input {str(path)!r} is not a directory")
    return paths


def _team_and_task(
    team: Path | None, example: str | None, task: str | None, inputs: list[Path]
) -> tuple[TeamSpec, str, list[Path]]:
    if team is not None and example is not None:
        raise StaffworkError("give --team FILE or --example NAME, not both")
    inputs = _directories(inputs)
    if team is not None:
        if not task:
            raise StaffworkError('give the TASK to run (staffwork run --team team.toml "...")')
        return load_team(team), task, inputs
    if example is None:
        raise StaffworkError("give --team FILE or --example NAME (try: staffwork run --example incident)")
    bundled = load_example(example)
    return bundled.team, task or bundled.task, [bundled.data, *inputs]


def run(
    task: Annotated[
        str | None, typer.Argument(help="What the team should do (examples have a default).")
    ] = None,
    team: TeamOption = None,
    example: ExampleOption = None,
    inputs: InputOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one machine-readable result.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    allow_private: AllowPrivateOption = False,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Run a team on a task and follow it live; at the end, the deliverable, files, usage and cost
    (and, when the team has an outcome, the grader's verdict on each attempt)."""

    async def go() -> RunOutcome:
        spec, text, folders = _team_and_task(team, example, task, list(inputs or []))
        async with bus_target(nats, root, name="staffwork-run") as target:
            await provision(target.bus)  # a bus that cannot be used says so before anything else
            if not as_json:
                err.print(f"bus: {target.where}", highlight=False)
                err.print(f"model: {_model_line()}", highlight=False)
                err.print(f"team: {spec.name} (lead + {len(spec.agents)} agents)", highlight=False)
            return await run_session(
                target,
                spec,
                text,
                folders,
                console=err,
                live=not as_json,
                timeout=timeout,
                allow_private_webhooks=allow_private,
            )

    outcome = run_async(go)
    result = outcome.result
    if as_json:
        sys.stdout.write(json.dumps(outcome.as_json(), indent=2) + "\n")
    else:
        out.print()
        out.print(result.final_text, markup=False, highlight=False)
        out.print()
        usage = result.usage
        out.print(
            f"status: {result.status}   session: {result.session_id}   wall time: {outcome.wall_s:.1f}s",
            highlight=False,
        )
        out.print(f"files: {', '.join(result.files) or 'none'}", highlight=False, markup=False)
        out.print(
            f"usage: {usage.input_tokens:,} input + {usage.output_tokens:,} output tokens, "
            f"cost ${usage.cost_usd:.4f} (model: {outcome.model})",
            highlight=False,
        )
        if result.outcome is not None:
            for verdict in result.outcome.iterations:
                out.print(
                    f"outcome, attempt {verdict.iteration}: {verdict.result} · {verdict.explanation}",
                    highlight=False,
                    markup=False,
                )
    if result.status not in ("idle",):
        raise typer.Exit(2)


def _model_line() -> str:
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "Claude (ANTHROPIC_API_KEY is set)"
    return "offline (no ANTHROPIC_API_KEY: deterministic playbooks over the real data, no network)"


def submit(
    task: Annotated[str | None, typer.Argument(help="What the team should do.")] = None,
    team: TeamOption = None,
    example: ExampleOption = None,
    inputs: InputOption = None,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Start a session and print its id, without waiting (a lead must be running: staffwork up)."""

    async def go() -> str:
        spec, text, folders = _team_and_task(team, example, task, list(inputs or []))
        async with bus_target(nats, root, name="staffwork-submit") as target:
            await provision(target.bus)
            client = Client(target.bus)
            session_id = new_id("ses")
            uploaded: list[str] = []
            for folder in folders:
                uploaded += await client.upload(session_id, folder)
            return await client.submit(text, team=spec, inputs=uploaded, session_id=session_id)

    out.print(run_async(go), highlight=False)


def status(session: str, nats: NatsOption = None, root: RootOption = "sw") -> None:
    """A session's status, and its result once it has one."""

    async def go() -> None:
        async with bus_target(nats, root, name="staffwork-status") as target:
            record = await session_record(target.bus, session, root)
            out.print(
                f"{session}: {record.status}  team {record.team.name}  task: {record.task}",
                highlight=False,
                markup=False,
            )
            stored = await target.bus.last(target.bus.subjects.out(session, "result"))
            if stored:
                result = msgspec.json.decode(stored, type=SessionResult)
                out.print(
                    f"report: {result.report_path or '-'}  files: {', '.join(result.files) or 'none'}",
                    highlight=False,
                    markup=False,
                )

    run_async(go)


def cancel(session: str, nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Stop a session: the lead and every running thread stop within moments."""

    async def go() -> None:
        async with bus_target(nats, root, name="staffwork-cancel") as target:
            record = await session_record(target.bus, session, root)
            if record.status in TERMINAL:
                out.print(f"{session}: already ended ({record.status}); nothing to cancel", highlight=False)
                return
            await Client(target.bus).cancel(session)
            out.print(f"{session}: canceled", highlight=False)

    run_async(go)


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
    needed = [  # the roles this session needs that no other process serves
        role.name
        for role in ROLES.values()
        if not role.per_agent
        and role.needed(team)
        and role.consumer is not None
        and not await bus.consumer_active(role.consumer(bus.subjects))
    ]
    has_lead = "lead" not in needed
    missing = [
        a.name
        for a in team.agents
        if not (has_lead and await bus.consumer_active(bus.subjects.agent_consumer(a.name)))
    ]
    if missing:
        needed.append("subagent")
    hooks = "webhooks" in needed
    config = RoleConfig(
        model=model, agents=missing, webhooks=WebhookSettings(allow_private=allow_private_webhooks)
    )
    async with contextlib.AsyncExitStack() as stack:
        if needed:
            await stack.enter_async_context(running(bus, needed, config))
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
