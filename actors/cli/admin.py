"""The installation commands: ``doctor`` (the nats-server binary; a server's reachability with
JetStream; for a remote deployment, this identity's permissions) and ``schema`` (the JSON Schema of
every message, or the AsyncAPI catalogue of every subject)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from actors.asyncapi import asyncapi_document
from actors.cli.common import NatsOption, RootOption, err, fail, out, print_whole, run_async
from bus.connection import Bus, ServerInfo, StreamSummary
from bus.errors import BusError, NoResponders, StaffworkError
from bus.server import EmbeddedServer, find_server_binary, server_version
from bus.subjects import Subjects
from schemas import json_schema
from schemas.session import SessionCancel


def _version() -> str:
    try:
        return metadata.version("staffwork")
    except metadata.PackageNotFoundError:
        return "unknown"


def doctor(nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Check this installation: the nats-server binary, and a server's reachability with JetStream.

    With --nats (a remote deployment), as the identity the connection options give: who connected,
    JetStream, the root's log stream and its replicas, and what this identity may do (each operation
    a role needs, tried harmlessly: ok or refused). Exits 1 when the connection or JetStream fails."""

    async def go() -> bool:
        table = Table(show_header=False, box=None, pad_edge=False)
        permissions: list[Outcome] = []
        ok = True

        def row(name: str, status: str, detail: str) -> None:
            nonlocal ok
            ok &= status != "FAIL"
            color = {"ok": "green", "warn": "yellow"}.get(status, "red")
            table.add_row(f"[{color}]{status if status != 'ok' else 'ok '}[/]", escape(name), escape(detail))

        row("staffwork", "ok", f"{_version()} on Python {platform.python_version()} ({sys.platform})")
        binary = None
        try:
            binary = find_server_binary()
            row("nats-server binary", "ok", f"{binary} ({server_version(binary)})")
        except StaffworkError as exc:  # not needed to check a server elsewhere
            row("nats-server binary", "warn" if nats else "FAIL", str(exc))
        if nats:
            permissions = await _check_server(nats, root, row)
        elif binary is not None:
            with tempfile.TemporaryDirectory(prefix="staffwork-doctor-") as tmp:
                started = time.perf_counter()
                try:
                    async with EmbeddedServer(tmp, port=-1, binary=binary) as srv:
                        row(
                            "embedded server",
                            "ok",
                            f"started in {(time.perf_counter() - started) * 1000:.0f} ms at {srv.url}",
                        )
                        permissions = await _check_server(srv.url, root, row)
                except StaffworkError as exc:
                    row("embedded server", "FAIL", str(exc))
        print_whole(table)  # piped or logged: whole paths, not cut to 80 columns
        if nats and permissions:  # the embedded server has no users: everything is allowed there
            out.print("\nwhat this identity may do (each tried harmlessly):", highlight=False)
            listed = Table(show_header=False, box=None, pad_edge=False)
            for outcome in permissions:
                color = {"ok": "green", "n/a": "yellow"}.get(outcome.status, "red")
                listed.add_row(
                    f"  [{color}]{outcome.status}[/]",
                    escape(outcome.what),
                    escape(outcome.detail),
                    f"[dim]for {escape(outcome.needed_by)}[/]",
                )
            print_whole(listed)
        return ok

    if not run_async(go):
        raise typer.Exit(1)


PROBE_TIMEOUT = 3.0  # seconds: a refused operation is known at once, but an unanswered one is not


@dataclass(frozen=True)
class Outcome:
    """One operation tried: ``ok``, ``refused`` (the server's permission violation), ``n/a`` (nothing
    to try it on yet) or ``failed``."""

    what: str
    needed_by: str
    status: str
    detail: str


async def _attempt(bus: Bus, action: Callable[[], Awaitable[str]]) -> tuple[str, str]:
    """Run ``action``; ``refused`` as soon as the server reports a permission violation meanwhile
    (the refused operation itself would only wait out its deadline)."""
    mark = bus.permission_errors.count
    work = asyncio.ensure_future(action())
    refusal = asyncio.ensure_future(bus.permission_errors.after(mark))
    try:
        done, _ = await asyncio.wait(
            {work, refusal}, timeout=PROBE_TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for task in (work, refusal):
            task.cancel()
        await asyncio.gather(work, refusal, return_exceptions=True)
    if refused := bus.permission_errors.since(mark):
        return "refused", refused[0]
    if work not in done:
        return "failed", f"no answer within {PROBE_TIMEOUT:g}s"
    if (exc := work.exception()) is None:
        return "ok", work.result()
    if isinstance(exc, StaffworkError):
        return "failed", str(exc)
    raise exc


async def _check_server(url: str, root: str, row: Callable[[str, str, str], None]) -> list[Outcome]:
    try:
        started = time.perf_counter()
        bus = await Bus.connect(url, root=root, name="staffwork-doctor", timeout=5.0)
    except StaffworkError as exc:
        row("NATS connection", "FAIL", str(exc))
        return []
    try:
        info = await bus.server_info()
        cluster = f", cluster {info.cluster!r} of {info.cluster_size}" if info.cluster else ""
        row(
            "NATS connection",
            "ok",
            f"{bus.url} as {bus.options.describe()} (server {info.version}{cluster}, "
            f"connect {(time.perf_counter() - started) * 1000:.1f} ms, "
            f"rtt {info.rtt * 1000:.2f} ms, max payload {info.max_payload // 1024} KiB)",
        )
        return await _check_identity(bus, root, info, row)
    finally:
        await bus.close()


async def _check_identity(
    bus: Bus, root: str, info: ServerInfo, row: Callable[[str, str, str], None]
) -> list[Outcome]:
    """JetStream, the log stream, and each operation a role needs, tried without side effects."""
    subjects = bus.subjects
    stream = subjects.log_stream
    inbox = f"_INBOX.doctor{uuid.uuid4().hex}"

    async def subscribe(subject: str) -> str:
        listener = await bus.listen(subject, SessionCancel, lambda _: None)
        try:
            await bus.settle(PROBE_TIMEOUT)  # a refusal arrives before the server's answer to this
        finally:
            await listener.close()
        return "allowed"

    async def jetstream() -> str:
        account = await bus.account_info(timeout=PROBE_TIMEOUT)
        return f"enabled ({account.streams} streams, {account.storage / 1e6:.1f} MB stored)"

    summary: StreamSummary | None = None

    async def log_stream() -> str:
        nonlocal summary
        summary = await bus.stream_summary(stream, timeout=PROBE_TIMEOUT)
        if summary is None:
            return "allowed (no such stream yet)"
        return f"allowed ({summary.messages} messages, R{summary.replicas})"

    async def consumer() -> str:
        serving = await bus.consumer_active(subjects.lead_consumer)
        return "allowed (a lead is pulling)" if serving else "allowed (no lead pulling now)"

    async def kv_get() -> str:
        try:
            kv = await bus.kv(subjects.sessions_bucket)
        except BusError as exc:
            if "does not exist" in str(exc):
                raise NothingThere("the bucket does not exist yet (not provisioned)") from None
            raise
        await kv.get("doctor-probe")
        return "allowed"

    async def service_request() -> str:
        subject = Subjects.service_info("staffwork-doctor-probe")
        with contextlib.suppress(NoResponders):  # allowed: nobody serves that name, as expected
            await bus.request(subject, b"", timeout=PROBE_TIMEOUT)
        return "allowed"

    probes: list[tuple[str, str, Callable[[], Awaitable[str]]]] = [
        ("subscribe to _INBOX.>", "replies to every request (every role)", lambda: subscribe(inbox)),
        ("JetStream API", "streams, consumers, KV (every role)", jetstream),
        (f"read stream {stream}", "provisioning (every role)", log_stream),
        (f"read consumer {subjects.lead_consumer}", "whether a lead serves (run, submit)", consumer),
        (f"read KV {subjects.sessions_bucket}", "session records (status, the lead, the gateway)", kv_get),
        (
            f"subscribe to {subjects.all_ctl}",
            "cancelling (the lead, subagents)",
            lambda: subscribe(subjects.all_ctl),
        ),
        ("request $SRV.INFO.*", "tool services (subagents)", service_request),
    ]
    outcomes = []
    bus.permission_errors.probing = True  # refusals are what we look for: not warnings in the log
    for what, needed_by, action in probes:
        try:
            status, detail = await _attempt(bus, action)
        except NothingThere as exc:
            status, detail = "n/a", str(exc)
        outcomes.append(Outcome(what, needed_by, status, detail))
    replies, js, log_info = outcomes[0], outcomes[1], outcomes[2]

    if js.status == "ok":
        row("JetStream", "ok", js.detail)
    else:
        row("JetStream", "FAIL", f"{js.status}: {js.detail}")
    if replies.status != "ok":
        row("replies", "FAIL", f"cannot subscribe to _INBOX.>: {replies.detail}")
    if log_info.status != "ok":
        row(f"root {root!r}", "warn", f"cannot read stream {stream}: {log_info.detail}")
    elif summary is None:
        row(f"root {root!r}", "ok", "not provisioned yet (staffwork run provisions it)")
    elif summary.replicas == 1 and info.cluster_size > 1:
        row(
            f"root {root!r}",
            "warn",
            f"provisioned ({summary.messages} messages in {stream}), but R1 on a cluster of "
            f"{info.cluster_size} servers: losing its server ({summary.leader or '?'}) stops the root",
        )
    else:
        row(
            f"root {root!r}",
            "ok",
            f"provisioned ({summary.messages} messages in {stream}, R{summary.replicas})",
        )
    return outcomes


class NothingThere(Exception):
    """A probe found nothing to try the operation on (not provisioned yet): neither allowed nor refused."""


def schema(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to a file instead of stdout.")
    ] = None,
    tag: Annotated[str | None, typer.Option(help="Only this message (e.g. session.submit.v1).")] = None,
    team: Annotated[bool, typer.Option("--team", help="Only the team file's schema.")] = False,
    asyncapi: Annotated[
        bool,
        typer.Option(
            "--asyncapi", help="The AsyncAPI 3.0 catalogue: every subject, what it carries, who uses it."
        ),
    ] = False,
) -> None:
    """Print the JSON Schema (2020-12) of every message, so any system can publish without our code;
    or, with --asyncapi, the event catalogue of every subject."""
    if sum([tag is not None, team, asyncapi]) > 1:
        fail(StaffworkError("give at most one of --tag, --team and --asyncapi"))
    try:
        document = asyncapi_document() if asyncapi else json_schema(tag, team=team)
    except StaffworkError as exc:
        fail(exc)
    text = json.dumps(document, indent=2)
    if output:
        output.write_text(text + "\n")
        err.print(f"wrote {output}")
    else:
        sys.stdout.write(text + "\n")
