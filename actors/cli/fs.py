"""The ``staffwork fs`` commands: a session's workspace (``ls``, ``cat``, ``get``, ``put``)."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from actors.cli.common import NatsOption, RootOption, bus_target, fail, out, run_async
from bus.errors import StaffworkError
from bus.provision import provision
from bus.workspace import Workspace

fs_app = typer.Typer(help="A session's workspace: ls, cat, put, get.", no_args_is_help=True)


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
