"""What every ``staffwork`` command shares: the consoles, the common options, how a command reaches
the bus and runs its async body, how it reports an error (one line on stderr naming the offending
value, exit 1), and the team files and bundled examples.

Where the bus is: ``--nats URL`` if given; else the user's running embedded server (``up``, ``server``
or another ``run``, found through the state file); else the command starts the embedded server on
the user's persistent store and stops it afterwards (waiting for other commands attached to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import sys
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console, RenderableType
from rich.measure import Measurement

from actors.client import Client
from bus import local
from bus.connection import Bus
from bus.errors import MemoryStoreExists, StaffworkError, StoreInUse
from bus.memory import Memory
from bus.paths import data_dir, server_store_dir
from bus.provision import provision
from bus.server import EmbeddedServer
from bus.subjects import check_token
from schemas.memory import Writer
from schemas.session import SessionRecord
from schemas.team import TeamSpec, parse_team

T = TypeVar("T")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def print_whole(renderable: RenderableType) -> None:
    """Print to stdout; when stdout is not a terminal (a pipe, a log file), at the renderable's own
    width rather than rich's default of 80 columns, so nothing a user pipes or logs is cut or folded."""
    if out.is_terminal:
        out.print(renderable)
        return
    width = Measurement.get(out, out.options.update_width(1 << 20), renderable).maximum
    Console(file=out.file, soft_wrap=True, width=max(width, out.width)).print(renderable)


class State:
    verbose = False


NatsOption = Annotated[
    str | None,
    typer.Option(
        "--nats", envvar="STAFFWORK_NATS_URL", help="NATS server URL; without it an embedded server is used."
    ),
]
OtlpOption = Annotated[
    str | None,
    typer.Option(
        "--otlp",
        envvar="STAFFWORK_OTLP_URL",
        help="Also export the trace as OpenTelemetry spans (GenAI conventions) to this OTLP/HTTP endpoint.",
    ),
]
AllowPrivateOption = Annotated[
    bool,
    typer.Option(
        "--allow-private-webhooks",
        envvar="STAFFWORK_WEBHOOKS_ALLOW_PRIVATE",
        help="Deliver webhooks to private and loopback addresses too (refused by default).",
    ),
]
ApiPortOption = Annotated[
    int, typer.Option("--api-port", help="The HTTP API's port (api role; 0 picks a free one).")
]
ApiHostOption = Annotated[
    str, typer.Option("--api-host", help="The HTTP API's address (api role; 0.0.0.0 for every interface).")
]
RootOption = Annotated[
    str,
    typer.Option(
        "--root", envvar="STAFFWORK_ROOT", help="Subject root: every subject and stream is under it."
    ),
]


def fail(exc: BaseException) -> NoReturn:
    if State.verbose:
        traceback.print_exception(exc, file=sys.stderr)
    message = str(exc) or type(exc).__name__
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def run_async(factory: Callable[[], Awaitable[T]]) -> T:
    try:
        return asyncio.run(factory())  # type: ignore[arg-type]
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    except (StaffworkError, OSError) as exc:
        fail(exc)
    except Exception as exc:  # a bug or an untranslated error: still one line, the traceback on -v
        fail(RuntimeError(f"unexpected {type(exc).__name__}: {exc} (run with --verbose for the traceback)"))


async def session_record(bus: Bus, session: str, root: str) -> SessionRecord:
    """The session's record, or one clear error (a malformed id, or no such session)."""
    check_token(session, "session id")
    await provision(bus)  # on a fresh store there is no directory yet: that is "no session", not a crash
    record = await Client(bus).status(session)
    if record is None:
        raise StaffworkError(f"no session {session!r} (under root {root!r})")
    return record


# --- the bus ---------------------------------------------------------------------------------------


@dataclass
class Target:
    bus: Bus
    url: str
    where: str  # a sentence for the user
    owned: bool = False  # this process started the server (others may attach to it)


@contextlib.asynccontextmanager
async def bus_target(nats: str | None, root: str, *, name: str = "staffwork") -> AsyncIterator[Target]:
    """Connect to ``nats``, or the user's running server, or a server started (and stopped) here."""
    if nats:
        async with await Bus.connect(nats, root=root, name=name) as bus:
            yield Target(bus, nats, f"NATS at {nats}")
        return
    running = local.running_server()
    server: EmbeddedServer | None = None
    if running is None:
        server = EmbeddedServer(server_store_dir(), port=-1)
        try:
            await server.start()
        except StoreInUse:
            # Another command holds the store: it is starting its server (wait for its announcement)
            # or stopping it (then the store frees up and we start our own).
            running = await local.announced(timeout=15.0)
            if running is None:
                await server.start()  # the other one stopped meanwhile; if not, its error stands
            else:
                server = None
    if server is not None:
        url = server.url

        def waiting(count: int) -> None:
            Console(stderr=True).print(f"waiting for {count} other staffwork command(s) using this server")

        where = f"embedded nats-server at {url} (store {server.store_dir})"
        async with (
            local.serving(server, "run", on_wait=waiting),
            await Bus.connect(url, root=root, name=name) as bus,
        ):
            yield Target(bus, url, where, owned=True)
        return
    assert running is not None
    with local.attached():
        async with await Bus.connect(running.url, root=root, name=name) as bus:
            yield Target(bus, running.url, f"the running staffwork {running.mode} at {running.url}")


# --- teams and examples ----------------------------------------------------------------------------


@dataclass
class Example:
    team: TeamSpec
    task: str
    data: Path
    #: memory stores the example's team reads, each seeded from a folder of its data
    memory: dict[str, Path] = field(default_factory=dict)


def load_team(path: Path) -> TeamSpec:
    return parse_team(path.read_bytes(), source=str(path))


def load_example(name: str) -> Example:
    folder = EXAMPLES / name
    team_file = folder / "team.toml"
    if not team_file.is_file():
        known = ", ".join(sorted(p.name for p in EXAMPLES.iterdir() if (p / "team.toml").is_file()))
        raise FileNotFoundError(f"no example {name!r} (known: {known})")
    team = load_team(team_file)
    data = data_dir() / "examples" / name
    package = importlib.import_module(f"examples.{name}")
    package.ensure_data(data)
    # the session's inputs: the data folder, or its INPUTS part (the rest is for the example's services
    # and its memory stores)
    memory = {store: data / folder for store, folder in getattr(package, "MEMORY", {}).items()}
    return Example(team=team, task=package.TASK, data=data / getattr(package, "INPUTS", ""), memory=memory)


async def seed_memory(bus: Bus, stores: dict[str, Path]) -> None:
    """Create each memory store that does not exist yet with the files of its folder (written by the
    user ``example``); a store that exists is left as it is, with whatever was learned in it since."""
    memory = Memory(bus)
    writer = Writer(kind="user", user="example")
    for store, folder in stores.items():
        try:
            await memory.create(store, f"seeded from the example's {folder.name}/")
        except MemoryStoreExists:
            continue
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            content = await asyncio.to_thread(path.read_text)
            await memory.write(store, str(path.relative_to(folder)), content, writer=writer)
