"""What every ``staffwork`` command shares: the consoles, the common options, and how a command
runs its async body and reports an error (one line on stderr naming the offending value, exit 1)."""

from __future__ import annotations

import asyncio
import sys
import traceback
from collections.abc import Awaitable, Callable
from typing import Annotated, NoReturn, TypeVar

import typer
from rich.console import Console

from actors.client import Client
from actors.sessions.directory import SessionRecord
from bus.connection import Bus
from bus.errors import StaffworkError
from bus.provision import provision
from bus.subjects import check_token

T = TypeVar("T")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


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
