"""The ``staffwork`` command line.

Every error is one line on stderr naming the offending value, and a non-zero exit code;
``--verbose`` adds the traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from bus.connection import Bus
from bus.errors import StaffworkError
from bus.lifecycle import install_stop_signals
from bus.logs import configure_logging
from bus.paths import server_store_dir
from bus.provision import provision
from bus.server import EmbeddedServer, find_server_binary, server_version
from bus.subjects import Subjects
from bus.workspace import Workspace
from schemas import json_schema

T = TypeVar("T")

app = typer.Typer(
    name="staffwork",
    help="Multiagent orchestration with Claude on NATS: a lead agent, parallel specialist subagents, "
    "a shared filesystem and a full trace.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


class _State:
    verbose = False


NatsOption = Annotated[
    str | None,
    typer.Option(
        "--nats", envvar="STAFFWORK_NATS_URL", help="NATS server URL; without it an embedded server is used."
    ),
]
RootOption = Annotated[
    str,
    typer.Option(
        "--root", envvar="STAFFWORK_ROOT", help="Subject root: every subject and stream is under it."
    ),
]


def _version() -> str:
    try:
        return metadata.version("staffwork")
    except metadata.PackageNotFoundError:
        return "unknown"


def _fail(exc: BaseException) -> None:
    if _State.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = str(exc) or type(exc).__name__
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def _run(factory: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (StaffworkError, OSError) as exc:
        _fail(exc)
        raise  # unreachable: _fail exits
    except Exception as exc:  # a bug or an untranslated error: still one line, the traceback on -v
        _fail(RuntimeError(f"unexpected {type(exc).__name__}: {exc} (run with --verbose for the traceback)"))
        raise


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks and debug logs.")] = False,
    log_json: Annotated[
        bool | None, typer.Option("--log-json/--log-console", help="Log format (default: by TTY).")
    ] = None,
) -> None:
    _State.verbose = verbose
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
            await srv.stop()
        out.print("NATS server stopped")

    _run(go)


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

    if not _run(go):
        raise typer.Exit(1)


async def _check_server(url: str, root: str, row: Callable[[str, bool, str], None]) -> None:
    try:
        started = time.perf_counter()
        bus = await Bus.connect(url, root=root, name="staffwork-doctor", timeout=5.0)
    except StaffworkError as exc:
        row("NATS connection", False, str(exc))
        return
    try:
        rtt = await bus.nc.rtt()
        info = bus.nc._server_info
        row(
            "NATS connection",
            True,
            f"{url} (server {info.get('version', '?')}, "
            f"connect {(time.perf_counter() - started) * 1000:.1f} ms, "
            f"rtt {rtt * 1000:.2f} ms, max payload {info.get('max_payload', 0) // 1024} KiB)",
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
        try:
            stream = await bus.js.stream_info(bus.subjects.log_stream)
            row(
                f"root {root!r}",
                True,
                f"provisioned ({stream.state.messages} messages in {bus.subjects.log_stream})",
            )
        except Exception:
            row(f"root {root!r}", True, "not provisioned yet (staffwork run provisions it)")
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
            _fail(StaffworkError(f"no message with tag {tag!r} (known: {', '.join(sorted(messages))})"))
        document = {"$schema": document["$schema"], "$defs": document["$defs"], **messages[tag]}
    text = json.dumps(document, indent=2, sort_keys=True)
    if output:
        output.write_text(text + "\n")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text + "\n")


@app.command()
def run(nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Bring up the bus (the embedded server unless --nats is given), provision it and report readiness."""

    async def go() -> None:
        started = time.perf_counter()
        srv: EmbeddedServer | None = None
        url = nats
        try:
            if url is None:
                srv = EmbeddedServer(server_store_dir(), port=-1)
                url = await srv.start()
            server_ms = (time.perf_counter() - started) * 1000
            async with await Bus.connect(url, root=root, name="staffwork-run") as bus:
                await provision(bus)
                check_started = time.perf_counter()
                workspace = Workspace(bus)
                session = f"selfcheck-{os.getpid()}"
                await workspace.put(session, "ready.txt", b"staffwork is ready\n")
                back = await workspace.get(session, "ready.txt")
                await workspace.delete(session, "ready.txt")
                check_ms = (time.perf_counter() - check_started) * 1000
                if back != b"staffwork is ready\n":
                    raise StaffworkError("the shared filesystem returned different bytes than were written")
                subjects = Subjects(root)
                where = f"embedded nats-server, store {srv.store_dir}" if srv else "external server"
                out.print(f"[bold green]ready[/] staffwork {_version()} on {url} ({where})", highlight=False)
                out.print(
                    f"  bus up in {server_ms:.0f} ms; JetStream provisioned under root {root!r}: stream "
                    f"{subjects.log_stream}, buckets {subjects.files_bucket}, {subjects.sessions_bucket}, "
                    f"{subjects.registry_bucket}; shared filesystem write/read/delete in {check_ms:.1f} ms",
                    highlight=False,
                )
        finally:
            if srv is not None:
                await srv.stop()

    _run(go)


def main() -> None:
    """Console entry point."""
    try:
        app()
    except StaffworkError as exc:  # raised outside _run (argument handling)
        err.print(f"error: {exc}", highlight=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
