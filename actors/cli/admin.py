"""The installation commands: ``doctor`` (the nats-server binary, a server's reachability with
JetStream) and ``schema`` (the JSON Schema of every public message)."""

from __future__ import annotations

import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from actors.cli.common import NatsOption, RootOption, err, fail, print_whole, run_async
from bus.connection import Bus
from bus.errors import StaffworkError
from bus.server import EmbeddedServer, find_server_binary, server_version
from schemas import json_schema


def _version() -> str:
    try:
        return metadata.version("staffwork")
    except metadata.PackageNotFoundError:
        return "unknown"


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
        print_whole(table)  # piped or logged: whole paths, not cut to 80 columns
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
