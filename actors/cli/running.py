"""How ``staffwork run`` runs a session (:func:`run_session`) and what it returns (:class:`RunOutcome`).

Which actors run it: only actors of this run's model (provider and endpoint). Processes that serve
sessions say which model they use (``actors.roles.ModelNotice``); when one on the root uses another
model, the session goes to a root of this model's own, ``<root>.<model>`` (:func:`_root_of_own_model`).
There, for each role the team needs, whether its consumer has active pullers (``up``, or actors
deployed against ``--nats``); this process runs the roles nobody serves. If a lead runs elsewhere, it
adds workers only for agents nobody serves; otherwise it runs the lead and all the team's agents
itself. What ``run`` prints and ``--json``'s ``model`` are the model ids the session's model calls
really answered with, read from its trace.

Tool calls that wait for a person's confirmation (:class:`Confirmations`): on a terminal, ``run`` asks
about each, one at a time in the order they came, while the session goes on; elsewhere (a pipe,
``--json``) it prints the commands that answer them.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import hashlib
import os
import re
import sys
import termios
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import msgspec
from rich.console import Console
from rich.live import Live

from actors.agent.models import default_model, model_profile
from actors.agent.models.base import Model
from actors.cli.common import Target
from actors.cli.progress import Progress, confirmation_answer, confirmation_hint, confirmation_request
from actors.client import Client
from actors.roles import ROLES, ModelNotice, RoleConfig, running
from actors.sessions import approvals
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
from schemas.trace import AgentToolResult, AnyTraceEvent, ToolConfirmationAnswered, ToolConfirmationRequested

_trace_event: Decoder[AnyTraceEvent] = Decoder(AnyTraceEvent)


class _Lines:
    """Lines typed at the terminal, read without blocking the event loop: the terminal stays in its
    normal mode (its own line editing; Ctrl-C interrupts the process as it does anywhere in ``run``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.closed = False

    def discard_typed_ahead(self) -> None:
        """Forget what was typed before a question was shown: a stray Enter answers nothing."""
        self.buffer = b""
        with contextlib.suppress(termios.error, OSError):
            termios.tcflush(self.fd, termios.TCIFLUSH)

    async def readline(self) -> str | None:
        """The next line, without its end; None once the input is closed (Ctrl-D)."""
        loop = asyncio.get_running_loop()
        while b"\n" not in self.buffer and not self.closed:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.fd, _settle, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)
            chunk = os.read(self.fd, 4096)
            self.buffer += chunk
            self.closed = not chunk
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace").strip()


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


@contextlib.contextmanager
def _paused(display: Live | None) -> Iterator[None]:
    """The live table erased while a question is open, and drawn again below it after."""
    if display is None or not display.is_started:
        yield
        return
    display.transient = True
    display.stop()
    try:
        yield
    finally:  # the end of the session (or Ctrl-C) draws its last frame, as without a question
        display.transient, display.vertical_overflow = False, "ellipsis"
        display.start(refresh=True)


_CHOICES: dict[str, Literal["allow", "deny"]] = {
    "y": "allow",
    "yes": "allow",
    "allow": "allow",
    "n": "deny",
    "no": "deny",
    "deny": "deny",
}


class Confirmations:
    """What ``run`` does with tool calls that wait for a person's confirmation.

    With ``ask`` (stdin and the console are a terminal), it asks about each call, one at a time in
    the order they came, and answers with :func:`actors.sessions.approvals.answer` as
    ``run:<user>``. While a question is open the live table is paused and other lines are held; the
    session goes on. A call answered meanwhile (by ``staffwork approve``, the API, a timeout, an
    interrupt) is said so, and the next one asked. Without ``ask``, one line per call says how to
    answer it, and one line per answer who gave it."""

    def __init__(
        self, bus: Bus, session_id: str, console: Console, display: Live | None, *, ask: bool
    ) -> None:
        self.bus, self.session_id, self.console, self.display = bus, session_id, console, display
        self.stdin = _Lines(sys.stdin.fileno()) if ask else None
        self.by = f"run:{getpass.getuser()}"
        self.waiting: asyncio.Queue[ToolConfirmationRequested] = asyncio.Queue()  # unbounded: one per call
        self.seen: set[str] = set()
        self.ended: dict[str, str] = {}  # call -> how it ended without this prompt (an answer, a result)
        self.asking = ""
        self.meanwhile = asyncio.Event()  # the call being asked about ended elsewhere
        self.held: list[str] = []

    def say(self, line: str) -> None:
        """Print ``line`` above the table, or after the open question."""
        if self.asking:
            self.held.append(line)
        else:
            self.console.print(line, highlight=False, markup=False)

    def see(self, event: AnyTraceEvent) -> None:
        """Follow the session's events: requests to ask about, answers and results that end them."""
        call = getattr(event, "tool_use_id", "")
        match event:
            case ToolConfirmationRequested() if call not in self.seen:
                self.seen.add(call)
                if self.stdin is None:
                    self.say(confirmation_hint(event))
                else:
                    self.waiting.put_nowait(event)
            case ToolConfirmationAnswered() if call in self.seen and call not in self.ended:
                self.ended[call] = confirmation_answer(event)
                if self.stdin is None:
                    self.say(self.ended[call])
            case AgentToolResult() if call in self.seen and call not in self.ended:
                self.ended[call] = f"{event.name} ({call}) was closed without an answer: {event.content}"
            case _:
                return
        if call == self.asking and call in self.ended:
            self.meanwhile.set()

    async def run(self) -> None:
        """Ask about each waiting call in turn (until the input closes or the task is cancelled)."""
        while self.stdin is not None:
            request = await self.waiting.get()
            if request.tool_use_id in self.ended:
                self.say(f"answered meanwhile: {self.ended[request.tool_use_id]}")
                continue
            self.asking, self.held = request.tool_use_id, []
            self.meanwhile.clear()
            lines: list[str] = []
            with _paused(self.display):
                try:
                    lines.append(await self._ask(request, self.stdin))
                except asyncio.CancelledError:
                    self.console.print()  # ends the open question's line
                    raise
                finally:
                    self.asking = ""
                    for line in [*lines, *self.held]:
                        self.say(line)

    async def _ask(self, request: ToolConfirmationRequested, stdin: _Lines) -> str:
        """One call's question and answer; the line that says how it ended."""
        self.console.print(confirmation_request(request), highlight=False, markup=False)
        stdin.discard_typed_ahead()
        question = "allow it? [y]es, allow / [n]o, deny: "
        while (typed := await self._line(stdin, question)) is not None:
            if (choice := _CHOICES.get(typed.lower())) is not None:
                break
            question = "y to allow it, n to deny it: "
        else:
            return self._gave_up(request)
        reason = ""
        if choice == "deny":
            typed = await self._line(stdin, "why (the model reads it; Enter for no reason): ")
            if typed is None:
                return self._gave_up(request)
            reason = typed
        if self.meanwhile.is_set():
            return f"answered meanwhile: {self.ended[request.tool_use_id]}"
        try:
            async with asyncio.timeout(30):
                await approvals.answer(
                    self.bus, self.session_id, request.tool_use_id, choice, deny_message=reason, by=self.by
                )
        except (StaffworkError, TimeoutError) as exc:
            return f"{request.name} ({request.tool_use_id}) not answered: {exc or 'no reply within 30s'}"
        return f"{request.name} ({request.tool_use_id}) {'allowed' if choice == 'allow' else 'denied'}" + (
            f": {reason}" if reason else ""
        )

    async def _line(self, stdin: _Lines, prompt: str) -> str | None:
        """A line typed after ``prompt``; None when the input closed or the call ended meanwhile."""
        if self.meanwhile.is_set():
            return None
        self.console.print(prompt, end="", highlight=False, markup=False)
        read = asyncio.ensure_future(stdin.readline())
        ended = asyncio.ensure_future(self.meanwhile.wait())
        try:
            await asyncio.wait({read, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            read.cancel()
            ended.cancel()
            await asyncio.gather(read, ended, return_exceptions=True)
        if read.cancelled():
            self.console.print()
            return None
        return read.result()

    def _gave_up(self, request: ToolConfirmationRequested) -> str:
        """The line for a question that got no answer here: the call ended elsewhere, or the input
        closed (then the other calls are only listed, with how to answer them)."""
        call = request.tool_use_id
        if call in self.ended:
            return f"answered meanwhile: {self.ended[call]}"
        self.stdin = None
        while not self.waiting.empty():
            self.held.append(confirmation_hint(self.waiting.get_nowait()))
        return f"stdin is closed: not asking any more\n{confirmation_hint(request)}"


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
                    with contextlib.suppress(asyncio.CancelledError):
                        await job
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
