"""The ``staffwork memory`` commands: memory stores and their files, versions and diffs.

Changes made here are recorded as made by the user running the command (``getpass.getuser()``).
"""

from __future__ import annotations

import difflib
import getpass
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, TypeVar

import typer

from actors.cli.common import NatsOption, RootOption, bus_target, err, fail, out, run_async
from bus.errors import MemoryFileNotFound, StaffworkError
from bus.memory import Memory
from bus.provision import provision
from schemas.memory import MemoryVersion, Writer

T = TypeVar("T")

memory_app = typer.Typer(
    help="Memory stores: named trees of small text files that outlive sessions; every change is a version.",
    no_args_is_help=True,
)

IfSha256Option = Annotated[
    str | None,
    typer.Option(
        "--if-sha256",
        metavar="SHA256",
        help="Only if the file's content still has this sha256 (else fail: someone changed it).",
    ),
]


def _with_memory(nats: str | None, root: str, body: Callable[[Memory], Awaitable[T]]) -> T:
    async def go() -> T:
        async with bus_target(nats, root, name="staffwork-memory") as target:
            await provision(target.bus)
            return await body(Memory(target.bus))

    return run_async(go)


def _user() -> Writer:
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database
        user = "unknown"
    return Writer(kind="user", user=user)


def _when(time: datetime) -> str:
    return time.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _line(text: str) -> None:
    out.print(text, highlight=False, markup=False)


@memory_app.command("create")
def create(
    name: str,
    description: Annotated[str, typer.Option(help="What the store is for (agents are told this).")] = "",
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Create a memory store."""
    info = _with_memory(nats, root, lambda memory: memory.create(name, description))
    _line(f"created memory store {info.name}")


@memory_app.command("ls")
def ls(
    name: Annotated[str | None, typer.Argument(help="The store; without it, list the stores.")] = None,
    prefix: Annotated[str, typer.Argument(help="Only paths starting with this.")] = "",
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """List a store's files (path, size, version, who wrote it), or the stores."""
    if name is None:
        stores = _with_memory(nats, root, lambda memory: memory.stores())
        if not stores:
            err.print("no memory stores yet (create one with: staffwork memory create NAME)", highlight=False)
        for info in stores:
            _line(f"{info.name}  {info.description}".rstrip())
        return
    store = name
    files = _with_memory(nats, root, lambda memory: memory.list(store, prefix))
    if not files:
        where = f" under {prefix!r}" if prefix else ""
        err.print(f"no files in memory store {store!r}{where}", highlight=False, markup=False)
        return
    width = max(len("PATH"), *(len(f.path) for f in files))
    _line(f"{'PATH':<{width}}  {'SIZE':>8}  {'VERSION':>7}  WHO")
    for f in files:
        _line(f"{f.path:<{width}}  {f.size:>8,}  {f.version:>7}  {f.writer.describe()}")


@memory_app.command("cat")
def cat(
    name: str,
    path: str,
    version: Annotated[
        int | None, typer.Option("--version", help="This version instead of the latest.")
    ] = None,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Print a file (its latest version, or --version N)."""
    file = _with_memory(nats, root, lambda memory: memory.read(name, path, version=version))
    sys.stdout.write(file.content)
    sys.stdout.flush()


@memory_app.command("put")
def put(
    name: str,
    path: str,
    file: Annotated[
        Path | None, typer.Argument(help="Read the content from this file; without it, stdin.")
    ] = None,
    if_sha256: IfSha256Option = None,
    new: Annotated[bool, typer.Option("--new", help="Only if the file does not exist yet.")] = False,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Write a file (a new version) from FILE or stdin."""
    if new and if_sha256 is not None:
        fail(StaffworkError("give --new or --if-sha256, not both"))
    content = _read_content(file)
    expected = "" if new else if_sha256
    version = _with_memory(
        nats,
        root,
        lambda memory: memory.write(name, path, content, writer=_user(), expected_sha256=expected),
    )
    _line(
        f"wrote {version.path} ({version.size:,} bytes): version {version.version}, sha256 {version.sha256}"
    )


def _read_content(file: Path | None) -> str:
    source = "stdin" if file is None or str(file) == "-" else repr(str(file))
    try:
        raw = sys.stdin.buffer.read() if file is None or str(file) == "-" else file.read_bytes()
    except OSError as exc:
        fail(StaffworkError(f"cannot read {source}: {exc.strerror or exc}"))
    try:
        return raw.decode()
    except UnicodeDecodeError as exc:
        fail(StaffworkError(f"{source} is not UTF-8 text (byte {exc.start}): memory files are text"))


@memory_app.command("rm")
def rm(
    name: str,
    path: str,
    if_sha256: IfSha256Option = None,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Delete a file (a new version; the old ones stay readable)."""
    version = _with_memory(
        nats, root, lambda memory: memory.delete(name, path, writer=_user(), expected_sha256=if_sha256)
    )
    _line(f"deleted {version.path}: version {version.version}")


@memory_app.command("versions")
def versions(
    name: str,
    path: Annotated[
        str | None, typer.Argument(help="One file's versions; without it, the whole store's.")
    ] = None,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Every change to a file (or to the whole store), oldest first."""
    found = _with_memory(nats, root, lambda memory: memory.versions(name, path))
    if not found:
        err.print(f"no changes in memory store {name!r} yet", highlight=False, markup=False)
        return
    width = max(len("PATH"), *(len(v.path) for v in found))
    _line(f"{'VERSION':>7}  {'TIME':<19}  {'OP':<6}  {'PATH':<{width}}  {'SIZE':>8}  {'SHA256':<12}  WHO")
    for v in found:
        _line(
            f"{v.version:>7}  {_when(v.time)}  {v.op:<6}  {v.path:<{width}}  {v.size:>8,}  "
            f"{v.sha256[:12] or '-':<12}  {v.writer.describe()}"
        )


@memory_app.command("diff")
def diff(
    name: str,
    path: str,
    from_version: Annotated[
        int | None, typer.Option("--from", help="The old version (default: the one before --to).")
    ] = None,
    to_version: Annotated[
        int | None, typer.Option("--to", help="The new version (default: the latest).")
    ] = None,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """A unified diff between two versions of a file (by default the previous and the latest)."""

    async def body(memory: Memory) -> list[str]:
        history = await memory.versions(name, path)
        by_number = {v.version: v for v in history}
        for asked in (from_version, to_version):
            if asked is not None and asked not in by_number:
                raise MemoryFileNotFound(name, history[0].path, version=asked)
        new = by_number[to_version] if to_version is not None else history[-1]
        if from_version is not None:
            old: MemoryVersion | None = by_number[from_version]
        else:
            earlier = [v for v in history if v.version < new.version]
            old = earlier[-1] if earlier else None
        old_text = await _content(memory, old)
        new_text = await _content(memory, new)
        return list(
            difflib.unified_diff(
                old_text.splitlines(keepends=True),
                new_text.splitlines(keepends=True),
                fromfile=_label(old),
                tofile=_label(new),
            )
        )

    for chunk in _with_memory(nats, root, body):
        sys.stdout.write(chunk if chunk.endswith("\n") else chunk + "\n\\ No newline at end of file\n")
    sys.stdout.flush()


async def _content(memory: Memory, version: MemoryVersion | None) -> str:
    if version is None or version.op == "delete":
        return ""
    return (await memory.read(version.store, version.path, version=version.version)).content


def _label(version: MemoryVersion | None) -> str:
    if version is None:
        return "/dev/null"
    what = "deleted" if version.op == "delete" else _when(version.time)
    return f"{version.path}@{version.version}\t{what}, {version.writer.describe()}"
