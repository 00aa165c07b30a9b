"""How ``staffwork run`` runs a session (:func:`run_session`) and what it returns (:class:`RunOutcome`).

Which actors run it: only actors of this run's model (provider and endpoint). Processes that serve
sessions say which model they use (``actors.roles.ModelNotice``); when one on the root uses another
model, the session goes to a root of this model's own, ``<root>.<model>`` (:func:`_root_of_own_model`).
There, for each role the team needs, whether its consumer has active pullers (``up``, or actors
deployed against ``--nats``); this process runs the roles nobody serves. If a lead runs elsewhere, it
adds workers only for agents nobody serves; otherwise it runs the lead and all the team's agents
itself. What ``run`` prints and ``--json``'s ``model`` are the model ids the session's model calls
really answered with, read from its trace.

Tool calls that wait for a person's confirmation: ``actors.cli.confirming.Confirmations``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.live import Live

from actors.agent.models import default_model, model_profile
from actors.agent.models.base import Model
from actors.cli.common import Target, seed_memory
from actors.cli.confirming import Confirmations
from actors.cli.progress import Progress
from actors.client import Client
from actors.roles import ROLES, ModelNotice, RoleConfig, running
from actors.webhooks.actor import WebhookSettings
from bus import local
from bus.codec import Decoder
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import BusTimeout, MessageRejected, StaffworkError
from bus.provision import provision
from schemas.ids import new_id
from schemas.session import SessionResult
from schemas.team import TeamSpec
from schemas.trace import AnyTraceEvent

_trace_event: Decoder[AnyTraceEvent] = Decoder(AnyTraceEvent)


def _model_line(profile: str) -> str:
    if profile == "offline":
        return "offline (no ANTHROPIC_API_KEY: deterministic playbooks over the real data, no network)"
    if profile.startswith("anthropic"):
        return f"Claude through {profile} (ANTHROPIC_API_KEY is set)"
    return profile


@dataclass
class RunOutcome:
    result: SessionResult
    progress: Progress
    wall_s: float
    model: str  # the model ids that answered the session's model calls (from its trace)
    profile: str  # the provider and endpoint of the actors that served it
    root: str  # the root the session ran under

    def served(self) -> str:
        return self.model if self.model == self.profile else f"{self.model} via {self.profile}"

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


async def _webhook_notices(bus: Bus, session_id: str, progress: Progress, console: Console) -> None:
    """Print what the user must see of the session's webhooks (deliveries skipped or given up, an
    endpoint disabled) that the live view missed: it ends when the lead goes idle, before the last
    deliveries. ``progress`` prints each line once."""
    subject = bus.subjects.events(session_id, "webhook.>")
    async for stored in read_subject(bus, bus.subjects.log_stream, subject):
        with contextlib.suppress(MessageRejected):  # of a newer staffwork: tail shows it
            if (line := progress.notice(_trace_event.decode(stored.data, subject=subject))) is not None:
                console.print(line, highlight=False, markup=False)


def _model_token(profile: str) -> str:
    """A root part naming ``profile``: the provider, and a digest of the endpoint if it has one."""
    provider, _, endpoint = profile.partition(" at ")
    token = re.sub(r"[^A-Za-z0-9_-]", "_", provider)[:40] or "model"
    return f"{token}-{hashlib.sha256(endpoint.encode()).hexdigest()[:8]}" if endpoint else token


@contextlib.asynccontextmanager
async def _root_of_own_model(target: Target, profile: str) -> AsyncIterator[tuple[Target, list[str], bool]]:
    """Where a session of model ``profile`` runs; the other models serving sessions on ``target``'s
    root (none: it runs there); whether another process there says it serves with ``profile``. This
    run's own notice is up for the block, written before it looks, so of two runs starting at once
    with different models, at least one sees the other.

    When a process on the root serves sessions with another model, the session goes to
    ``<root>.<model>`` (its own streams and buckets, provisioned here), where only this model runs.
    """
    notice = ModelNotice(target.bus, profile)
    lines = set((await notice.start()).values())
    others = sorted(lines - {profile})
    if not others:
        try:
            yield target, [], profile in lines
        finally:
            await notice.stop()
        return
    await notice.stop()
    root = f"{target.bus.subjects.root}.{_model_token(profile)}"
    async with await Bus.connect(target.url, root=root, name="staffwork-run") as bus:
        await provision(bus)
        own = ModelNotice(bus, profile)
        try:
            lines = set((await own.start()).values())
            if again := sorted(lines - {profile}):
                raise StaffworkError(
                    f"roots {target.bus.subjects.root!r} and {root!r} are both served with other models "
                    f"({', '.join(sorted({*others, *again}))}) than this run's ({profile}): give --root"
                )
            yield Target(bus, target.url, target.where, owned=target.owned), others, profile in lines
        finally:
            await own.stop()


async def run_session(
    target: Target,
    team: TeamSpec,
    task: str,
    inputs: list[Path],
    *,
    memory: dict[str, Path] | None = None,
    console: Console,
    live: bool,
    timeout: float | None = None,
    allow_private_webhooks: bool = False,
) -> RunOutcome:
    """Run one session on an already provisioned bus (the ``run`` command provisions it first), served
    only by actors of this process's model."""
    started = time.perf_counter()
    model = default_model()
    profile = model_profile(model)
    async with _root_of_own_model(target, profile) as (here, others, announced):
        if live:
            console.print(f"model: {_model_line(profile)}", highlight=False, markup=False)
            if others:
                console.print(
                    f"root: {here.bus.subjects.root} (root {target.bus.subjects.root!r} is served with "
                    f"{', '.join(others)}: this session runs on actors of its own model under "
                    f"{here.bus.subjects.root!r}; pass --root {here.bus.subjects.root} to trace it)",
                    highlight=False,
                    markup=False,
                )
        await seed_memory(here.bus, memory or {})  # on the root the session runs on
        outcome = await _run_here(
            here,
            team,
            task,
            inputs,
            model=model,
            announced=announced,
            console=console,
            live=live,
            timeout=timeout,
            allow_private_webhooks=allow_private_webhooks,
        )
    outcome.wall_s = time.perf_counter() - started
    return outcome


async def _run_here(
    target: Target,
    team: TeamSpec,
    task: str,
    inputs: list[Path],
    *,
    model: Model,
    announced: bool,
    console: Console,
    live: bool,
    timeout: float | None,
    allow_private_webhooks: bool,
) -> RunOutcome:
    """Run the session on ``target``'s root; ``announced``: a process there says it serves sessions
    with this run's model."""
    bus = target.bus
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
    profile = model_profile(model)
    grader_elsewhere = ROLES["grader"].needed(team) and "grader" not in needed
    if not announced and (has_lead or grader_elsewhere):
        # Actors of an older staffwork, say: they serve this session, and say nothing of their model.
        profile = "actors that do not say their model"
        if live:
            console.print(
                f"note: actors already running on root {bus.subjects.root!r} serve part of this session "
                "and do not say which model they use; the model at the end is read from the trace",
                highlight=False,
                markup=False,
            )
    hooks = "webhooks" in needed
    config = RoleConfig(
        model=model,
        agents=missing,
        webhooks=WebhookSettings.from_env(os.environ, allow_private=allow_private_webhooks),
        team=team,
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
        ask = live and console.is_terminal and sys.stdin.isatty()
        confirmations = Confirmations(bus, session_id, console, display, ask=ask)

        async def follow() -> None:
            async for event in client.events(session_id):
                progress.apply(event)
                confirmations.see(event)
                if (line := progress.notice(event)) is not None:
                    confirmations.say(line)
                if display is not None:
                    display.update(progress.table())

        with contextlib.ExitStack() as finish:
            if display is not None:
                finish.callback(console.line)  # the display's last frame ends without a newline
                finish.enter_context(display)
            follower = asyncio.ensure_future(follow())
            asker = asyncio.ensure_future(confirmations.run())  # it asks until the session ends
            try:
                # The result decides the end: a session that fails never goes idle, but has a result.
                result = await client.wait(session_id, timeout=timeout)
                with contextlib.suppress(TimeoutError):  # let the display catch up with the last events
                    await asyncio.wait_for(asyncio.shield(follower), 2.0)
            except BusTimeout:
                await client.cancel(session_id, f"gave up after {timeout:g}s")
                raise StaffworkError(f"gave up after {timeout:g}s; session {session_id} canceled") from None
            finally:
                for job in (follower, asker):
                    job.cancel()
                # waited for, not awaited: a Ctrl-C (this task's own cancel) that lands here is not
                # taken for the jobs' CancelledError and swallowed
                await asyncio.wait({follower, asker})
                for job in (follower, asker):
                    if not job.cancelled() and (error := job.exception()) is not None:
                        raise error
            progress.finish(result.status)  # a lead that failed for good shows as failed too
            if display is not None:
                display.update(progress.table())
        if hooks:  # the session's webhooks go out before this process (their deliverer) ends
            await _deliveries_settled(bus, console, timeout=15.0)
        if team.webhooks:
            await _webhook_notices(bus, session_id, progress, console)
        if target.owned and (not has_lead or missing) and local.other_clients():
            # Commands attached to our server may be relying on the actors we run: keep serving.
            console.print("other staffwork commands are using this server's actors: waiting for them")
            await local.wait_for_clients()
    return RunOutcome(
        result=result,
        progress=progress,
        wall_s=0.0,
        model=", ".join(progress.models) or model.name,
        profile=profile,
        root=bus.subjects.root,
    )
