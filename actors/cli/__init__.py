"""The ``staffwork`` command line.

Every error is one line on stderr naming the offending value, and a non-zero exit code;
``--verbose`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import msgspec
import typer
from rich.table import Table

from actors.agent.models import default_model
from actors.cli.common import (
    AllowPrivateOption,
    NatsOption,
    OtlpOption,
    RootOption,
    State,
    err,
    fail,
    out,
    run_async,
    session_record,
)
from actors.cli.dream import dream_app
from actors.cli.memory import memory_app
from actors.cli.sessions import EXAMPLES, RunOutcome, bus_target, load_example, load_team, run_session
from actors.cli.trace import register as register_trace_commands
from actors.client import Client
from actors.collector.actor import TraceStore, serve_collector
from actors.collector.otlp import OtlpExporter
from actors.dreamer.actor import serve_dreamer
from actors.grader.actor import serve_grader
from actors.roles import serve_agents
from actors.sessions.directory import TERMINAL
from actors.sessions.teams import register_team, registered_teams
from actors.webhooks.actor import WebhookSettings, enable_endpoint, endpoint_states, serve_webhooks
from actors.webhooks.http import send_test_event
from bus import local
from bus.connection import Bus
from bus.errors import StaffworkError
from bus.lifecycle import install_stop_signals
from bus.logs import configure_logging
from bus.paths import data_dir, server_store_dir
from bus.provision import provision
from bus.server import EmbeddedServer, die_with_parent, find_server_binary, server_version
from bus.workspace import Workspace
from schemas import json_schema
from schemas.ids import new_id
from schemas.session import SessionResult
from schemas.team import TeamSpec

app = typer.Typer(
    name="staffwork",
    help="Multiagent orchestration with Claude on NATS: a lead agent, parallel specialist subagents, "
    "a shared filesystem and a full trace.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version() -> str:
    try:
        return metadata.version("staffwork")
    except metadata.PackageNotFoundError:
        return "unknown"


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")] = False,
    log_json: Annotated[
        bool | None, typer.Option("--log-json/--log-console", help="Log format (default: by TTY).")
    ] = None,
) -> None:
    State.verbose = verbose
    configure_logging("debug" if verbose else "warning", json=log_json)


@app.command()
def server(
    port: Annotated[int, typer.Option(help="Client port (-1 picks a free one).")] = 4222,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    store: Annotated[Path | None, typer.Option(help="JetStream store directory.")] = None,
) -> None:
    """Run a NATS server with JetStream in the foreground (Ctrl-C stops it)."""

    async def go() -> None:
        srv = EmbeddedServer(store or server_store_dir(), host=host, port=port)
        url = await srv.start()
        if store is None:  # the user's default store: other commands find and use this server
            local.announce(
                local.LocalServer(url=url, pid=os.getpid(), mode="server", store=str(srv.store_dir))
            )
        try:
            out.print(
                f"NATS server ready at [bold]{url}[/] (JetStream store {srv.store_dir})", highlight=False
            )
            out.print(f"export STAFFWORK_NATS_URL={url}", highlight=False)
            stop = asyncio.Event()
            install_stop_signals(stop)
            waiter = asyncio.ensure_future(srv.wait())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if waiter in done:
                waiter.result()  # raises ServerFailed with its [FTL] lines
            else:
                waiter.cancel()
        finally:
            local.withdraw(os.getpid())
            await srv.stop()
        out.print("NATS server stopped")

    run_async(go)


@app.command()
def doctor(nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Check this installation: the nats-server binary, and a server's reachability with JetStream."""

    async def go() -> bool:
        table = Table(show_header=False, box=None, pad_edge=False)
        ok = True

        def row(name: str, good: bool, detail: str) -> None:
            nonlocal ok
            ok &= good
            table.add_row(f"[{'green' if good else 'red'}]{'ok ' if good else 'FAIL'}[/]", name, detail)

        row("staffwork", True, f"{_version()} on Python {platform.python_version()} ({sys.platform})")
        binary = None
        try:
            binary = find_server_binary()
            row("nats-server binary", True, f"{binary} ({server_version(binary)})")
        except StaffworkError as exc:
            row("nats-server binary", False, str(exc))
        if nats:
            await _check_server(nats, root, row)
        elif binary is not None:
            with tempfile.TemporaryDirectory(prefix="staffwork-doctor-") as tmp:
                started = time.perf_counter()
                try:
                    async with EmbeddedServer(tmp, port=-1, binary=binary) as srv:
                        row(
                            "embedded server",
                            True,
                            f"started in {(time.perf_counter() - started) * 1000:.0f} ms at {srv.url}",
                        )
                        await _check_server(srv.url, root, row)
                except StaffworkError as exc:
                    row("embedded server", False, str(exc))
        out.print(table)
        return ok

    if not run_async(go):
        raise typer.Exit(1)


async def _check_server(url: str, root: str, row: Callable[[str, bool, str], None]) -> None:
    try:
        started = time.perf_counter()
        bus = await Bus.connect(url, root=root, name="staffwork-doctor", timeout=5.0)
    except StaffworkError as exc:
        row("NATS connection", False, str(exc))
        return
    try:
        info = await bus.server_info()
        row(
            "NATS connection",
            True,
            f"{url} (server {info.version}, "
            f"connect {(time.perf_counter() - started) * 1000:.1f} ms, "
            f"rtt {info.rtt * 1000:.2f} ms, max payload {info.max_payload // 1024} KiB)",
        )
        try:
            account = await bus.account_info()
            row(
                "JetStream",
                True,
                f"enabled ({account.streams} streams, {account.storage / 1e6:.1f} MB stored)",
            )
        except StaffworkError as exc:
            row("JetStream", False, str(exc))
            return
        messages = await bus.stream_messages(bus.subjects.log_stream)
        if messages is None:
            row(f"root {root!r}", True, "not provisioned yet (staffwork run provisions it)")
        else:
            row(f"root {root!r}", True, f"provisioned ({messages} messages in {bus.subjects.log_stream})")
    finally:
        await bus.close()


@app.command()
def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to a file instead of stdout.")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Only this message (e.g. session.submit.v1).")] = None,
) -> None:
    """Print the JSON Schema of every public message, so any system can publish without our code."""
    document: dict[str, Any] = json_schema()
    if tag is not None:
        messages = document["messages"]
        if tag not in messages:
            fail(StaffworkError(f"no message with tag {tag!r} (known: {', '.join(sorted(messages))})"))
        document = {"$schema": document["$schema"], "$defs": document["$defs"], **messages[tag]}
    text = json.dumps(document, indent=2, sort_keys=True)
    if output:
        output.write_text(text + "\n")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text + "\n")


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


@app.command()
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


@app.command()
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


@app.command()
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


@app.command()
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


register_trace_commands(app)  # tail, trace, sessions
app.add_typer(memory_app, name="memory")
app.add_typer(dream_app, name="dream")

fs_app = typer.Typer(help="A session's workspace: ls, cat, put, get.", no_args_is_help=True)
app.add_typer(fs_app, name="fs")


@fs_app.command("ls")
def fs_ls(session: str, prefix: str = "", nats: NatsOption = None, root: RootOption = "sw") -> None:
    """List a session's files with size and who wrote them."""

    async def go() -> None:
        async with bus_target(nats, root, name="staffwork-fs") as target:
            for info in await Workspace(target.bus).list(session, prefix):
                who = info.provenance.agent or "user"
                out.print(f"{info.size:>10,}  {info.path}  ({who})", highlight=False, markup=False)

    run_async(go)


@fs_app.command("cat")
def fs_cat(session: str, path: str, nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Print a file of a session's workspace."""

    async def go() -> bytes:
        async with bus_target(nats, root, name="staffwork-fs") as target:
            return await Workspace(target.bus).get(session, path)

    sys.stdout.buffer.write(run_async(go))


@fs_app.command("get")
def fs_get(
    session: str, path: str, local_path: Path, nats: NatsOption = None, root: RootOption = "sw"
) -> None:
    """Copy a file from a session's workspace to a local file."""

    if local_path.is_dir() or not local_path.parent.is_dir():
        fail(StaffworkError(f"cannot write {str(local_path)!r}: not a file in an existing directory"))

    async def go() -> bytes:
        async with bus_target(nats, root, name="staffwork-fs") as target:
            return await Workspace(target.bus).get(session, path)

    data = run_async(go)
    try:
        local_path.write_bytes(data)
    except OSError as exc:
        fail(StaffworkError(f"cannot write {str(local_path)!r}: {exc.strerror}"))
    out.print(f"wrote {len(data):,} bytes to {local_path}", highlight=False)


@fs_app.command("put")
def fs_put(
    session: str, local_path: Path, path: str, nats: NatsOption = None, root: RootOption = "sw"
) -> None:
    """Copy a local file into a session's workspace."""

    async def go() -> int:
        async with bus_target(nats, root, name="staffwork-fs") as target:
            await provision(target.bus)
            with local_path.open("rb") as handle:
                info = await Workspace(target.bus).put(session, path, handle)
            return info.size

    out.print(f"stored {run_async(go):,} bytes at {path}", highlight=False)


ROLES = ("lead", "subagent", "collector", "grader", "webhooks", "dreamer")


@app.command()
def actor(
    role: Annotated[str, typer.Argument(help="lead, subagent, collector, grader, webhooks or dreamer")],
    agents: Annotated[
        str, typer.Option(help="Comma-separated agents to serve (subagent; default: all registered).")
    ] = "",
    db: Annotated[Path | None, typer.Option(help="The collector's SQLite database.")] = None,
    otlp: OtlpOption = None,
    allow_private: AllowPrivateOption = False,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Run one actor process against a NATS server (what a container runs)."""
    if role not in ROLES:
        fail(StaffworkError(f"unknown role {role!r} (roles: {', '.join(ROLES)})"))

    async def go() -> None:
        url = nats or (running.url if (running := local.running_server()) else None)
        if url is None:
            raise StaffworkError("no NATS server: give --nats URL (or start one with staffwork up)")
        async with await Bus.connect(url, root=root, name=f"staffwork-{role}") as bus:
            await provision(bus)
            if role == "collector":
                await _collect(bus, url, db or data_dir() / "trace.db", otlp)
                return
            if role in ("grader", "webhooks", "dreamer"):
                await _serve_role(bus, url, root, role, allow_private)
                return
            names = [a for a in agents.split(",") if a]
            if role == "subagent" and not names:
                names = sorted({a.name for team in await registered_teams(bus) for a in team.agents})
                if not names:
                    raise StaffworkError("no agents to serve: give --agents a,b or register a team first")
            stop = asyncio.Event()
            install_stop_signals(stop)

            def ready() -> None:
                served = "lead" if role == "lead" else ", ".join(names)
                err.print(f"{role} ready on {url} (root {root!r}): {served}", highlight=False)

            await serve_agents(
                bus,
                default_model(),
                stop,
                lead=role == "lead",
                agents=names if role == "subagent" else [],
                on_ready=ready,
            )

    run_async(go)


async def _serve_role(bus: Bus, url: str, root: str, role: str, allow_private: bool) -> None:
    stop = asyncio.Event()
    install_stop_signals(stop)

    def ready() -> None:
        err.print(f"{role} ready on {url} (root {root!r})", highlight=False, markup=False)

    if role == "grader":
        await serve_grader(bus, default_model(), stop, on_ready=ready)
    elif role == "dreamer":
        await serve_dreamer(bus, default_model(), stop, on_ready=ready)
    else:
        await serve_webhooks(bus, stop, settings=WebhookSettings(allow_private=allow_private), on_ready=ready)


async def _collect(bus: Bus, url: str, db: Path, otlp: str | None) -> None:
    try:
        exporter = OtlpExporter(otlp) if otlp else None
    except ValueError as exc:
        raise StaffworkError(f"--otlp: {exc}") from None
    store = TraceStore(db)
    stop = asyncio.Event()
    install_stop_signals(stop)
    exporting = f"; exporting spans to {exporter.url}" if exporter else ""
    try:
        await serve_collector(
            bus,
            store,
            stop,
            exporter=exporter,
            on_ready=lambda: err.print(
                f"collector ready on {url}: {store.path}{exporting}", highlight=False, markup=False
            ),
        )
    finally:
        store.close()


@app.command()
def up(
    port: Annotated[int, typer.Option(help="Client port (-1 picks a free one).")] = -1,
    otlp: OtlpOption = None,
    allow_private: AllowPrivateOption = False,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """The embedded server plus every actor as its own process (lead, one worker per agent of the
    registered teams); logs prefixed by role; Ctrl-C stops them all gracefully."""

    async def go() -> None:
        if nats is None and (running := local.running_server()) is not None:
            raise StaffworkError(
                f"a staffwork {running.mode} already runs at {running.url} (pid {running.pid}): "
                "use it, or stop it first"
            )
        async with contextlib.AsyncExitStack() as owned:
            url = nats
            if url is None:
                server = EmbeddedServer(server_store_dir(), port=port)
                url = await server.start()

                def waiting(count: int) -> None:
                    err.print(f"waiting for {count} staffwork command(s) still using this server")

                await owned.enter_async_context(local.serving(server, "up", on_wait=waiting))
            clean = await _up(url, root, otlp, allow_private)
        out.print("staffwork is down")
        if not clean:
            raise StaffworkError("an actor process exited unexpectedly (see its log above)")

    run_async(go)


async def _up(url: str, root: str, otlp: str | None = None, allow_private: bool = False) -> bool:
    """Register the bundled teams, then supervise one process per role until stopped."""
    async with await Bus.connect(url, root=root, name="staffwork-up") as bus:
        await provision(bus)
        for example in sorted(p.parent.name for p in EXAMPLES.glob("*/team.toml")):
            await register_team(bus, load_example(example).team)
        teams = await registered_teams(bus)
    agent_names = sorted({a.name for team in teams for a in team.agents})
    collector = ["collector", *(["--otlp", otlp] if otlp else [])]
    hooks = ["webhooks", *(["--allow-private-webhooks"] if allow_private else [])]
    roles = [
        ("lead", ["lead"]),
        ("collector", collector),
        ("grader", ["grader"]),
        ("webhooks", hooks),
        ("dreamer", ["dreamer"]),
    ] + [(f"agent:{a}", ["subagent", "--agents", a]) for a in agent_names]
    out.print(f"staffwork is up: NATS at [bold]{url}[/] (root {root!r})", highlight=False)
    out.print(
        f"teams: {', '.join(t.name for t in teams)}; processes: {', '.join(r for r, _ in roles)}",
        highlight=False,
    )
    out.print(f"export STAFFWORK_NATS_URL={url}", highlight=False)
    return await _supervise(url, root, roles)


async def _supervise(url: str, root: str, roles: list[tuple[str, list[str]]]) -> bool:
    """Start one process per role, prefix their output, stop them all on SIGINT/SIGTERM. False if a
    process exited on its own (the others are stopped then too)."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    procs: list[tuple[str, asyncio.subprocess.Process]] = []

    async def relay(name: str, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            out.print(
                f"[cyan]\\[{name}][/] {line.decode(errors='replace').rstrip()}", highlight=False, markup=True
            )

    async with asyncio.TaskGroup() as tg:
        for name, args in roles:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "actors.cli",
                "--log-console",
                "actor",
                *args,
                "--nats",
                url,
                "--root",
                root,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
                preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
            )
            procs.append((name, proc))
            assert proc.stdout is not None
            tg.create_task(relay(name, proc.stdout))
        exits = [asyncio.ensure_future(p.wait()) for _, p in procs]
        stopper = asyncio.ensure_future(stop.wait())
        await asyncio.wait({stopper, *exits}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        clean = stop.is_set()
        for name, proc in procs:
            if proc.returncode is not None and not stop.is_set():
                err.print(f"{name} exited with code {proc.returncode}; stopping the others", highlight=False)
            if proc.returncode is None:
                proc.terminate()
        _, pending = await asyncio.wait(exits, timeout=45)
        for _, proc in procs:
            if proc.returncode is None:
                proc.kill()
        if pending:
            await asyncio.wait(pending)
    return clean


webhooks_app = typer.Typer(help="Webhooks: send a signed sample event to an endpoint.", no_args_is_help=True)
app.add_typer(webhooks_app, name="webhooks")


@webhooks_app.command("test")
def webhooks_test(
    url: Annotated[str, typer.Argument(help="The endpoint.")],
    secret: Annotated[
        str, typer.Option(envvar="STAFFWORK_WEBHOOK_SECRET", help="The signing secret (whsec_..., base64).")
    ],
    allow_private: Annotated[
        bool, typer.Option("--allow-private", help="Allow a private or loopback address.")
    ] = False,
) -> None:
    """Send a signed sample event (Standard Webhooks), and print the endpoint's answer."""

    async def go() -> tuple[int, str]:
        return await send_test_event(url, secret, allow_private=allow_private)

    status, body = run_async(go)
    out.print(f"{url} answered {status}" + (f": {body}" if body else ""), highlight=False, markup=False)
    if not 200 <= status < 300:
        raise typer.Exit(1)


@webhooks_app.command("list")
def webhooks_list(nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Endpoints that have been called: consecutive failures, and whether (and why) disabled."""

    async def go() -> list[Any]:
        async with bus_target(nats, root, name="staffwork-webhooks") as target:
            await provision(target.bus)
            return await endpoint_states(target.bus)

    states = run_async(go)
    if not states:
        err.print("no webhook endpoint has been called yet", highlight=False)
    for state in states:
        status = f"disabled: {state.reason}" if state.disabled else "enabled"
        out.print(f"{state.url}  failures {state.failures}  {status}", highlight=False, markup=False)


@webhooks_app.command("enable")
def webhooks_enable(url: str, nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Enable a disabled endpoint again (its deliveries are attempted from now on)."""

    async def go() -> bool:
        async with bus_target(nats, root, name="staffwork-webhooks") as target:
            await provision(target.bus)
            return await enable_endpoint(target.bus, url)

    changed = run_async(go)
    out.print(f"{url}: {'enabled' if changed else 'was not disabled'}", highlight=False, markup=False)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except StaffworkError as exc:  # raised outside _run (argument handling)
        err.print(f"error: {exc}", highlight=False)
        sys.exit(1)
