"""``staffwork ps`` (every actor process under the root, as its micro service reports itself) and
``staffwork health`` (does an actor process of a role answer healthy on this host: a container's
healthcheck). Neither starts a server: they ask the one given with ``--nats``, or the user's running
``up``, ``server`` or ``run``."""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from typing import Annotated

import msgspec
import typer

from actors.cli.common import NatsOption, RootOption, err, fail, out, run_async
from actors.roles import ROLES
from bus import local
from bus.connection import Bus
from bus.errors import StaffworkError
from bus.health import HealthRecord, discover, probe

TimeoutOption = Annotated[float, typer.Option(help="Seconds to wait for the processes' answers.")]


def ps(
    as_json: Annotated[
        bool, typer.Option("--json", help="A JSON list of the processes' health records.")
    ] = False,
    timeout: TimeoutOption = 1.0,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Every staffwork actor process under the root: role, agents, host, pid, uptime, restarts, work
    in flight, messages handled and failed, health."""

    async def go() -> list[HealthRecord]:
        async with await Bus.connect(_url(nats), root=root, name="staffwork-ps") as bus:
            return await discover(bus, timeout=timeout)

    records = sorted((r for r in run_async(go) if r.root == root), key=_order)
    if as_json:
        sys.stdout.write(json.dumps(msgspec.to_builtins(records)) + "\n")
        return
    if not records:
        err.print(f"no staffwork process under root {root!r} answered within {timeout:g}s", highlight=False)
        return
    rows = [
        (
            ",".join(r.roles),
            ",".join(r.agents) or "-",
            r.host,
            str(r.pid),
            uptime(r.uptime_s),
            str(r.restarts),
            str(r.in_flight),
            f"{r.handled}/{r.failed}",
            r.status,
        )
        for r in records
    ]
    header = ("ROLE", "AGENTS", "HOST", "PID", "UPTIME", "RESTARTS", "IN-FLIGHT", "HANDLED/FAILED", "HEALTH")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        out.print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(),
            highlight=False,
            markup=False,
        )


def health(
    role: Annotated[str | None, typer.Option(help=f"The role to look for: {', '.join(ROLES)}.")] = None,
    agents: Annotated[str, typer.Option(help="Comma-separated agents it must serve (subagent).")] = "",
    timeout: TimeoutOption = 2.0,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Exit 0 if an actor process (of ROLE, serving AGENTS) on this host answers that it is healthy
    within the timeout, else 1 with one line: a container's healthcheck."""
    if role is not None and role not in ROLES:
        fail(StaffworkError(f"unknown role {role!r} (roles: {', '.join(ROLES)})"))
    wanted = {a for a in agents.split(",") if a}
    host = socket.gethostname()

    def here(record: HealthRecord) -> bool:
        return record.host == host and (role is None or role in record.roles) and wanted <= set(record.agents)

    async def go() -> list[HealthRecord]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with await Bus.connect(_url(nats), root=root, name="staffwork-health", timeout=timeout) as bus:
            left = max(deadline - loop.time(), 0.05)
            return await probe(bus, timeout=left, enough=lambda r: here(r) and r.status == "ok")

    records = [r for r in run_async(go) if here(r)]
    what = (role or "staffwork") + (f" ({', '.join(sorted(wanted))})" if wanted else "")
    if healthy := [r for r in records if r.status == "ok"]:
        out.print(
            f"{what} on {host}: ok (pid {healthy[0].pid}, up {uptime(healthy[0].uptime_s)})",
            highlight=False,
            markup=False,
        )
        return
    if records:
        states = ", ".join(f"pid {r.pid} {r.status}" for r in records)
        fail(StaffworkError(f"{what} on {host} is not healthy: {states}"))
    fail(StaffworkError(f"no {what} process on host {host!r} answered within {timeout:g}s (root {root!r})"))


def _url(nats: str | None) -> str:
    """``--nats``, else the user's running server; never a server started for the question."""
    if nats:
        return nats
    if (running := local.running_server()) is not None:
        return running.url
    raise StaffworkError("no NATS server: give --nats URL (or start one with staffwork up)")


def _order(record: HealthRecord) -> tuple[int, tuple[str, ...], str, int]:
    names = list(ROLES)
    rank = min((names.index(r) for r in record.roles if r in names), default=len(names))
    return rank, record.agents, record.host, record.pid


def uptime(seconds: float) -> str:
    """``12.3s``, ``4m05s``, ``2h03m``, ``3d04h``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"
