"""The trace commands: ``tail`` (live events from the stream), ``trace`` (a session's tree, its
timeline page, a file's provenance) and ``sessions`` (recent sessions)."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.console import Console
from rich.text import Text

from actors.cli.common import NatsOption, RootOption, bus_target, err, fail, out, run_async, session_record
from actors.client import Client
from actors.sessions.directory import TERMINAL
from actors.views.provenance import file_origin, render_origin
from actors.views.tail import event_subjects, line, parse_duration
from actors.views.timeline import render_html
from actors.views.tree import render
from bus.codec import Decoder
from bus.direct import StoredMsg, read_subject, tail_subjects
from bus.errors import MessageRejected, StaffworkError
from bus.provision import provision
from bus.subjects import Subjects
from schemas.session import SessionRecord
from schemas.trace import AnyTraceEvent


def tail(
    session: Annotated[str | None, typer.Option(help="Only this session's events.")] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent's events.")] = None,
    kind: Annotated[
        str | None, typer.Option(help="Only this kind (agent.tool_use) or family (agent, span, session).")
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Start this long ago (30s, 10m, 2h, 1d) instead of with new events.")
    ] = None,
    follow: Annotated[
        bool, typer.Option("--follow/--no-follow", help="Keep following, or stop at the last stored event.")
    ] = True,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Follow trace events as they happen, one line each, coloured by agent (works without the collector)."""
    start = datetime.now(UTC) - parse_duration(since) if since else None
    try:
        subjects = event_subjects(Subjects(root), session, kind)
    except StaffworkError as exc:
        fail(exc)
    console = _TailConsole(soft_wrap=True, width=None if out.is_terminal else 240)

    async def go() -> None:
        async with bus_target(nats, root, name="staffwork-tail") as target:
            await provision(target.bus)
            decoder: Decoder[Any] = Decoder(AnyTraceEvent, max_bytes=4 * 1024 * 1024)
            stream = target.bus.subjects.log_stream
            messages = tail_subjects(
                target.bus,
                stream,
                subjects,
                since=start,
                follow=follow,
                on_following=lambda: err.print(
                    f"following {' and '.join(subjects)} (Ctrl-C to stop)", highlight=False, markup=False
                ),
            )
            async with contextlib.aclosing(messages):
                try:
                    await _print_events(messages, decoder, console, agent, as_json, with_session=not session)
                except BrokenPipeError:  # the reader went away (| head): stop quietly, as Unix tools do
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())

    run_async(go)


async def _print_events(
    messages: AsyncGenerator[StoredMsg, None],
    decoder: Decoder[Any],
    console: Console,
    agent: str | None,
    as_json: bool,
    *,
    with_session: bool,
) -> None:
    async for msg in messages:
        try:
            event = decoder.decode(msg.data, subject=msg.subject)
        except MessageRejected as exc:
            if agent is None:
                _tail_undecodable(console, msg.subject, msg.seq, exc.reason, as_json)
            continue
        if agent is not None and event.agent != agent:
            continue
        if as_json:
            sys.stdout.write(msg.data.decode(errors="replace") + "\n")
            sys.stdout.flush()
        else:
            console.print(line(event, with_session=with_session))


class _TailConsole(Console):
    def on_broken_pipe(self) -> None:  # rich exits with 1; tail stops quietly instead
        self.quiet = True
        raise BrokenPipeError


def _tail_undecodable(console: Console, subject: str, seq: int, reason: str, as_json: bool) -> None:
    if as_json:
        record = {"type": "undecodable", "subject": subject, "seq": seq, "error": reason}
        sys.stdout.write(json.dumps(record) + "\n")
        sys.stdout.flush()
    else:
        console.print(Text(f"undecodable message #{seq} on {subject}: {reason}", style="red"))


def trace(
    session: str,
    file: Annotated[
        str | None, typer.Option("--file", help="Provenance of this workspace file instead of the tree.")
    ] = None,
    html: Annotated[
        Path | None, typer.Option("--html", help="Also write a self-contained timeline page to this file.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="The events (or the provenance) as JSON.")] = False,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """A session as a tree: each thread, its model calls and tool calls, durations, tokens and cost.

    With --file, where a file came from: the thread, agent and tool call that wrote it and the tool
    results that thread had read before (followed into the subagents whose replies it read)."""

    async def go() -> list[Any]:
        async with bus_target(nats, root, name="staffwork-trace") as target:
            await session_record(target.bus, session, root)
            subject = target.bus.subjects.events(session)
            decoder: Decoder[Any] = Decoder(AnyTraceEvent, max_bytes=4 * 1024 * 1024)
            found = []
            async for m in read_subject(target.bus, target.bus.subjects.log_stream, subject):
                with contextlib.suppress(MessageRejected):  # undecodable traffic is not part of the tree
                    found.append(decoder.decode(m.data, subject=m.subject))
            return found

    events = run_async(go)
    wide = out if out.is_terminal else Console(soft_wrap=True, width=240)  # a pipe gets whole lines
    if file is not None:
        try:
            origin = file_origin(events, file)
        except StaffworkError as exc:
            fail(exc)
        if as_json:
            sys.stdout.write(json.dumps(origin.to_dict(), indent=2) + "\n")
        else:
            wide.print(render_origin(origin))
        return
    if html is not None:
        try:
            html.write_text(render_html(session, events), encoding="utf-8")
        except OSError as exc:
            fail(StaffworkError(f"--html: cannot write {str(html)!r}: {exc.strerror or exc}"))
        err.print(f"wrote the timeline to {html}", highlight=False, markup=False)
    if as_json:
        for event in events:
            sys.stdout.write(msgspec.json.encode(event).decode() + "\n")
        return
    wide.print(render(session, events))


def sessions(
    limit: Annotated[int, typer.Option(help="How many of the most recent sessions.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Recent sessions: status, duration, threads, cost, team and task."""

    async def go() -> list[SessionRecord]:
        async with bus_target(nats, root, name="staffwork-sessions") as target:
            await provision(target.bus)
            kv = await target.bus.kv(target.bus.subjects.sessions_bucket)
            directory = Client(target.bus).directory
            records = [await directory.get(key) for key in await kv.keys()]
            return sorted((r for r in records if r is not None), key=lambda r: r.started, reverse=True)

    records = run_async(go)[:limit]
    if as_json:
        for record in records:
            row = msgspec.to_builtins(record)
            row.pop("team")
            sys.stdout.write(json.dumps({"team": record.team.name, **row}) + "\n")
        return
    if not records:
        err.print("no sessions yet (start one with: staffwork run --example incident)", highlight=False)
        return
    out.print(
        f"{'SESSION':<30}  {'STARTED':<19}  {'STATUS':<16} {'DURATION':>9} {'THREADS':>7} {'COST':>9}  "
        f"{'TEAM':<12} TASK",
        highlight=False,
    )
    now = time.time()
    for record in records:
        started = datetime.fromtimestamp(record.started).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        running = record.status not in TERMINAL
        duration = (record.ended or now) - record.started if (record.ended or running) else None
        shown = "-" if duration is None else f"{duration:.1f}s" + ("…" if running else "")
        threads = str(record.threads) if record.ended else "-"
        cost = f"${record.usage.cost_usd:.4f}" if record.ended else "-"
        task = " ".join(record.task.split())
        out.print(
            f"{record.session_id:<30}  {started}  {record.status:<16} {shown:>9} {threads:>7} {cost:>9}  "
            f"{record.team.name:<12} {task[:60]}",
            highlight=False,
            markup=False,
        )
