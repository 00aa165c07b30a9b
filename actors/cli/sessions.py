"""The session commands: ``run`` (submit a session and follow it live; how it runs one is in
:mod:`actors.cli.running`), ``submit``, ``send`` (a follow-up), ``status``, ``cancel``,
``interrupt`` (one thread's work, or the whole session's, without ending it), ``answer`` (a
custom tool call), ``approve`` and ``deny`` (a tool call waiting for a person's confirmation)."""

from __future__ import annotations

import getpass
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import msgspec
import typer

from actors.cli.common import (
    AllowPrivateOption,
    NatsOption,
    RootOption,
    bus_target,
    err,
    load_example,
    load_team,
    out,
    run_async,
    seed_memory,
    session_record,
)
from actors.cli.running import RunOutcome, run_session
from actors.client import Client, SubmitRefused
from actors.sessions.cancel import interrupt as interrupt_work
from actors.sessions.directory import TERMINAL
from bus.errors import StaffworkError
from bus.provision import provision
from bus.subjects import check_token
from schemas.ids import new_id
from schemas.session import SessionResult
from schemas.team import AgentSpec, TeamSpec
from schemas.trace import CustomToolUse, ToolConfirmationRequested

TeamOption = Annotated[Path | None, typer.Option("--team", help="A team file (TOML).")]
ExampleOption = Annotated[
    str | None, typer.Option("--example", help="A bundled example team (e.g. incident).")
]
InputOption = Annotated[
    list[Path] | None, typer.Option("--input", help="A directory to upload into the session's workspace.")
]
MemoryOption = Annotated[
    list[str] | None,
    typer.Option(
        "--memory",
        help="STORE=OTHER: attach the memory store OTHER wherever the team attaches STORE (a dream's new "
        "store, say).",
    ),
]


def with_stores(team: TeamSpec, swaps: list[str]) -> TeamSpec:
    """``team`` with each ``STORE=OTHER`` swap made in every agent's memory attachments (the lead's
    too); a swap of a store the team does not attach is one error naming the ones it does."""
    attached = sorted({m.store for agent in [team.lead, *team.agents] for m in agent.memory})
    names: dict[str, str] = {}
    for swap in swaps:
        store, sep, other = swap.partition("=")
        if not sep or not store or not other:
            raise StaffworkError(
                f"--memory {swap!r}: give STORE=OTHER (e.g. --memory deals=deals-dream-1a2b)"
            )
        if store not in attached:
            raise StaffworkError(
                f"--memory {swap!r}: team {team.name!r} attaches no store {store!r} "
                f"(it attaches: {', '.join(attached) or 'none'})"
            )
        names[store] = other

    def swapped(agent: AgentSpec) -> AgentSpec:
        memory = [msgspec.structs.replace(m, store=names.get(m.store, m.store)) for m in agent.memory]
        return msgspec.structs.replace(agent, memory=memory)

    if not names:
        return team
    return msgspec.structs.replace(team, lead=swapped(team.lead), agents=[swapped(a) for a in team.agents])


def _directories(paths: list[Path]) -> list[Path]:
    for path in paths:
        if not path.is_dir():
            raise StaffworkError(f"--input {str(path)!r} is not a directory")
    return paths


def _team_and_task(
    team: Path | None, example: str | None, task: str | None, inputs: list[Path]
) -> tuple[TeamSpec, str, list[Path], dict[str, Path]]:
    """The team, the task, the folders to upload, and the memory stores to seed (an example's)."""
    if team is not None and example is not None:
        raise StaffworkError("give --team FILE or --example NAME, not both")
    inputs = _directories(inputs)
    if team is not None:
        if not task:
            raise StaffworkError('give the TASK to run (staffwork run --team team.toml "...")')
        return load_team(team), task, inputs, {}
    if example is None:
        raise StaffworkError("give --team FILE or --example NAME (try: staffwork run --example incident)")
    bundled = load_example(example)
    return bundled.team, task or bundled.task, [bundled.data, *inputs], bundled.memory


def run(
    task: Annotated[
        str | None, typer.Argument(help="What the team should do (examples have a default).")
    ] = None,
    team: TeamOption = None,
    example: ExampleOption = None,
    inputs: InputOption = None,
    memory_swaps: MemoryOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one machine-readable result.")] = False,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
    allow_private: AllowPrivateOption = False,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Run a team on a task and follow it live; at the end, the deliverable, files, usage and cost
    (and, when the team has an outcome, the grader's verdict on each attempt)."""

    async def go() -> RunOutcome:
        spec, text, folders, memory = _team_and_task(team, example, task, list(inputs or []))
        spec = with_stores(spec, list(memory_swaps or []))
        async with bus_target(nats, root, name="staffwork-run") as target:
            await provision(target.bus)  # a bus that cannot be used says so before anything else
            if not as_json:
                err.print(f"bus: {target.where}", highlight=False)
                err.print(f"team: {spec.name} (lead + {len(spec.agents)} agents)", highlight=False)
            return await run_session(
                target,
                spec,
                text,
                folders,
                memory=memory,
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
        out.print(f"files: {files_line(result.files)}", highlight=False, markup=False)
        out.print(
            f"usage: {usage.input_tokens:,} input + {usage.output_tokens:,} output tokens, "
            f"cost ${usage.cost_usd:.4f} (model: {outcome.served()})",
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


def submit(
    task: Annotated[str | None, typer.Argument(help="What the team should do.")] = None,
    team: TeamOption = None,
    example: ExampleOption = None,
    inputs: InputOption = None,
    memory_swaps: MemoryOption = None,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Start a session and print its id, without waiting (a lead must be running: staffwork up)."""

    async def go() -> str:
        spec, text, folders, memory = _team_and_task(team, example, task, list(inputs or []))
        spec = with_stores(spec, list(memory_swaps or []))
        async with bus_target(nats, root, name="staffwork-submit") as target:
            await provision(target.bus)
            await seed_memory(target.bus, memory)
            client = Client(target.bus)
            session_id = new_id("ses")
            uploaded: list[str] = []
            for folder in folders:
                uploaded += await client.upload(session_id, folder)
            return await client.submit(text, team=spec, inputs=uploaded, session_id=session_id)

    out.print(run_async(go), highlight=False)


def send(
    session: str,
    text: Annotated[str, typer.Argument(help="The follow-up, in plain language.")],
    inputs: InputOption = None,
    wait: Annotated[
        bool, typer.Option("--wait/--no-wait", help="Wait for the turn's result and print it.")
    ] = True,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the result.")] = 3600.0,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Send a follow-up to an idle session: the lead takes another turn with everything so far."""

    async def go() -> SessionResult | int:
        async with bus_target(nats, root, name="staffwork-send") as target:
            client = Client(target.bus)
            await session_record(target.bus, session, root)
            uploaded: list[str] = []
            for folder in inputs or []:
                uploaded += await client.upload(session, folder)
            try:
                turn = await client.send(session, text, inputs=uploaded)
            except SubmitRefused as exc:
                raise StaffworkError(f"{session}: {exc.kind}: {exc}") from None
            if not wait:
                return turn
            return await client.wait(session, timeout, turn=turn)

    answer = run_async(go)
    if isinstance(answer, int):
        out.print(f"{session}: turn {answer} sent", highlight=False)
        return
    out.print(answer.final_text, markup=False, highlight=False)
    out.print(f"status: {answer.status}   session: {session}   turn: {answer.turn}", highlight=False)
    if answer.status != "idle":
        raise typer.Exit(2)


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
            for call in await Client(target.bus).custom_tool_calls(session):
                out.print(
                    f"waiting for you: {call.agent} called {call.name} {json.dumps(call.input)} "
                    f"(answer: staffwork answer {session} {call.tool_use_id} TEXT)",
                    highlight=False,
                    markup=False,
                )
            for request in await Client(target.bus).confirmations(session):
                use = request.tool_use_id
                out.print(
                    f"waiting for your confirmation: {request.agent} ({request.thread_id}) calls "
                    f"{request.name} {json.dumps(request.input)} (staffwork approve {session} {use}, "
                    f"or staffwork deny {session} {use} --reason TEXT)",
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
    """End a session: the lead and every running thread stop within moments; an idle one takes no
    more follow-ups."""

    async def go() -> None:
        async with bus_target(nats, root, name="staffwork-cancel") as target:
            record = await session_record(target.bus, session, root)
            if record.status in TERMINAL and record.status != "idle":
                out.print(f"{session}: already ended ({record.status}); nothing to cancel", highlight=False)
                return
            await Client(target.bus).cancel(session)
            was = " (it was idle: it takes no more follow-ups)" if record.status == "idle" else ""
            out.print(f"{session}: canceled{was}", highlight=False)

    run_async(go)


def interrupt(
    session: str,
    thread: Annotated[
        str,
        typer.Option("--thread", help="The thread to stop (without it: every thread and the lead's turn)."),
    ] = "",
    reason: Annotated[str, typer.Option("--reason", help="Why, in a few words (its model reads it).")] = "",
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Stop work in progress without ending the session: one thread, or all of them. An interrupted
    thread keeps its history and idles; a follow-up continues it. A thread not working is left as is."""

    async def go() -> None:
        async with bus_target(nats, root, name="staffwork-interrupt") as target:
            record = await session_record(target.bus, session, root)
            if record.status in TERMINAL:
                out.print(f"{session}: not running ({record.status}); nothing to interrupt", highlight=False)
                return
            if thread:
                check_token(thread, "thread id")
                if await target.bus.last(target.bus.subjects.history(session, thread)) is None:
                    threads = f"staffwork trace {session} shows its threads"
                    raise StaffworkError(f"no thread {thread!r} in session {session!r} ({threads})")
            await interrupt_work(target.bus, session, thread, reason, by=getpass.getuser())
            what = f"thread {thread}" if thread else "every thread"
            out.print(f"{session}: interrupted {what}", highlight=False, markup=False)

    run_async(go)


def answer(
    session: str,
    tool_use_id: Annotated[
        str | None, typer.Argument(help="The call's id (without it: list the calls waiting for an answer).")
    ] = None,
    content: Annotated[
        str | None, typer.Argument(help="The result the agent gets ('-' reads stdin).")
    ] = None,
    error: Annotated[bool, typer.Option("--error", help="The call failed: the result is an error.")] = False,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Answer a custom tool call (a tool the caller answers): the waiting thread goes on with it."""

    async def go() -> None:
        async with bus_target(nats, root, name="staffwork-answer") as target:
            await session_record(target.bus, session, root)
            client = Client(target.bus)
            if tool_use_id is None:
                calls = await client.custom_tool_calls(session)
                _list_waiting(calls, f"{session}: no custom tool call is waiting for an answer")
                return
            if content is None:
                raise StaffworkError(
                    "give the result: staffwork answer SESSION TOOL_USE_ID TEXT (or - for stdin)"
                )
            text = sys.stdin.read() if content == "-" else content
            await client.answer_tool(session, tool_use_id, text, is_error=error)
            out.print(f"{session}: answered {tool_use_id}", highlight=False)

    run_async(go)


ToolUseArgument = Annotated[
    str | None,
    typer.Argument(help="The call's id (without it: list the calls waiting for a confirmation)."),
]


def approve(
    session: str, tool_use_id: ToolUseArgument = None, nats: NatsOption = None, root: RootOption = "sw"
) -> None:
    """Let a tool call that waits for your confirmation run."""
    _confirm(session, tool_use_id, "allow", "", nats, root)


def deny(
    session: str,
    tool_use_id: ToolUseArgument = None,
    reason: Annotated[str, typer.Option("--reason", help="Why (the agent's model reads it).")] = "",
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Refuse a tool call that waits for your confirmation: the agent gets an error result saying so."""
    _confirm(session, tool_use_id, "deny", reason, nats, root)


def _confirm(
    session: str, tool_use_id: str | None, result: str, reason: str, nats: str | None, root: str
) -> None:
    async def go() -> None:
        async with bus_target(
            nats, root, name=f"staffwork-{'approve' if result == 'allow' else 'deny'}"
        ) as target:
            await session_record(target.bus, session, root)
            client = Client(target.bus)
            if tool_use_id is None:
                waiting = await client.confirmations(session)
                _list_waiting(waiting, f"{session}: no tool call is waiting for a confirmation")
                return
            by = getpass.getuser()
            if result == "allow":
                await client.approve(session, tool_use_id, by=by)
                out.print(f"{session}: allowed {tool_use_id}", highlight=False, markup=False)
            else:
                await client.deny(session, tool_use_id, reason, by=by)
                out.print(f"{session}: denied {tool_use_id}", highlight=False, markup=False)

    run_async(go)


def _list_waiting(calls: Sequence[CustomToolUse | ToolConfirmationRequested], none: str) -> None:
    """One line per waiting call (its id first), or ``none``."""
    for call in calls:
        line = f"{call.tool_use_id}  {call.agent}  {call.name} {json.dumps(call.input)}"
        out.print(line, highlight=False, markup=False)
    if not calls:
        out.print(none, highlight=False, markup=False)


def files_line(files: list[str], *, most: int = 5) -> str:
    """The workspace's files in one line: a folder holding more than ``most`` of them as one entry
    with its count (a batch of logs), the others by path."""
    folders: dict[str, int] = {}
    for path in files:
        folder = path.rpartition("/")[0]
        folders[folder] = folders.get(folder, 0) + 1
    shown: list[str] = []
    for path in files:
        folder = path.rpartition("/")[0]
        if not folder or folders[folder] <= most:
            shown.append(path)
        elif (entry := f"{folder}/ ({folders[folder]} files)") not in shown:
            shown.append(entry)
    return ", ".join(shown) or "none"
