"""The ``staffwork dream`` commands: run a dream of a memory store, its status, cancel it, serve the
dreamer, and the before/after report of a store's dreams."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, TypeVar

import typer

from actors.agent.models import default_model
from actors.agent.models.base import Model
from actors.agent.models.offline import OfflineModel
from actors.cli.common import NatsOption, RootOption, bus_target, err, fail, out, run_async
from actors.cli.serve import serve_here
from actors.dreamer.actor import DreamSchedule, request_dream
from actors.dreamer.dream import DreamBook, Dreamer, cancel_dream, wait_dream
from actors.dreamer.sessions import DreamError
from actors.roles import RoleConfig
from actors.views.tail import parse_duration
from bus.connection import Bus
from bus.errors import NoResponders, StaffworkError
from bus.provision import provision
from schemas.dream import DreamRecord, DreamRequest

T = TypeVar("T")

dream_app = typer.Typer(
    help="Dreams: reorganise a memory store using past sessions, into a new store. "
    "`staffwork dream --store NAME ...` is `staffwork dream run --store NAME ...`.",
    invoke_without_command=True,
)


@dream_app.callback()
def dream_main(
    ctx: typer.Context,
    store: Annotated[
        str | None, typer.Option("--store", help="Dream over this store (as `dream run`).")
    ] = None,
    sessions: Annotated[int, typer.Option(help="The most recent N finished sessions (1-100).")] = 20,
    since: Annotated[str | None, typer.Option(help="Only sessions started this long ago or later.")] = None,
    model: Annotated[str, typer.Option(help="The model name, or 'offline' (deterministic).")] = "",
    instructions: Annotated[str, typer.Option(help="What to focus on (given to the model).")] = "",
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """`staffwork dream --store NAME [--sessions N | --since D] [--model M] [--instructions T]`."""
    if ctx.invoked_subcommand is not None:
        return
    if store is None:
        typer.echo(ctx.get_help())
        raise typer.Exit(0)
    run(
        store=store,
        sessions=sessions,
        since=since,
        model=model,
        instructions=instructions,
        nats=nats,
        root=root,
    )


def _with_bus(nats: str | None, root: str, body: Callable[[Bus], Awaitable[T]]) -> T:
    async def go() -> T:
        async with bus_target(nats, root, name="staffwork-dream") as target:
            await provision(target.bus)
            return await body(target.bus)

    return run_async(go)


def _model(name: str) -> Model:
    return OfflineModel() if name == "offline" else default_model()


def _line(text: str) -> None:
    out.print(text, highlight=False, markup=False)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _print_record(record: DreamRecord) -> None:
    _line(f"dream {record.dream_id}: {record.status}" + (f" ({record.phase})" if record.phase else ""))
    _line(f"  {record.store} -> {record.output_store}{' (existing store)' if record.target else ''}")
    _line(f"  model {record.model or '-'}; {len(record.sessions)} session(s) read")
    if record.error:
        _line(f"  error: {record.error}")
    report = record.report
    if report is None:
        return
    _line(
        f"  baseline: pass rate {_pct(report.pass_rate)} ({report.satisfied}/{report.with_outcome} with an "
        f"outcome), avg revisions {_num(report.avg_revisions)}, tool errors {report.tool_errors}, "
        f"follow-ups {report.follow_ups}"
    )
    for agent in report.agents:
        _line(
            f"    {agent.agent:<16} sessions {agent.sessions:>3}  avg revisions {agent.avg_revisions:.2f}  "
            f"tool errors {agent.tool_errors}"
        )
    _line(f"  files: {report.files_in} in, {report.files_out} out")
    for change in report.changes:
        _line(f"  - {change}")


@dream_app.command("run")
def run(
    store: Annotated[str, typer.Option("--store", help="The memory store to dream over (never written).")],
    sessions: Annotated[int, typer.Option(help="The most recent N finished sessions (1-100).")] = 20,
    since: Annotated[str | None, typer.Option(help="Only sessions started this long ago or later.")] = None,
    attached: Annotated[
        bool, typer.Option("--attached", help="Only sessions whose team attached it.")
    ] = False,
    model: Annotated[str, typer.Option(help="The model name, or 'offline' (deterministic).")] = "",
    instructions: Annotated[str, typer.Option(help="What to focus on (given to the model).")] = "",
    target: Annotated[str, typer.Option(help="Write into this existing store instead of a new one.")] = "",
    timeout: Annotated[float, typer.Option(help="Seconds to wait for a dreamer's dream to end.")] = 900.0,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Run a dream and print its report (through a running dreamer if there is one, else here)."""
    since_s = parse_duration(since).total_seconds() if since else None
    request = DreamRequest(
        store=store,
        sessions=sessions,
        since_s=since_s,
        attached_only=attached,
        model="" if model == "offline" else model,
        instructions=instructions,
        target=target,
    )

    async def body(bus: Bus) -> DreamRecord:
        if model != "offline":
            try:
                pending = await request_dream(bus, request)
            except NoResponders:
                pass  # no dreamer running: dream here
            else:
                err.print(f"dream {pending.dream_id} started by the dreamer", highlight=False, markup=False)
                return await wait_dream(bus, pending.dream_id, timeout=timeout)
        return await Dreamer(bus, _model(model)).dream(request)

    record = _with_bus(nats, root, body)
    _print_record(record)
    if record.status != "completed":
        raise typer.Exit(1)


@dream_app.command("status")
def status(dream_id: str, nats: NatsOption = None, root: RootOption = "sw") -> None:
    """A dream's status and report."""

    async def body(bus: Bus) -> DreamRecord:
        record = await DreamBook(bus).get(dream_id)
        if record is None:
            raise DreamError(f"no dream {dream_id!r} (under root {root!r})")
        return record

    _print_record(_with_bus(nats, root, body))


@dream_app.command("cancel")
def cancel(dream_id: str, nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Cancel a pending or running dream (it writes nothing)."""
    record = _with_bus(nats, root, lambda bus: cancel_dream(bus, dream_id))
    _line(f"dream {record.dream_id}: {record.status}")


@dream_app.command("report")
def report(name: str, nats: NatsOption = None, root: RootOption = "sw") -> None:
    """The dreams of a store's lineage in time order, each with the baseline of the sessions it read:
    the before/after of dreaming."""
    records = _with_bus(nats, root, lambda bus: DreamBook(bus).all())
    lineage = {name}
    grew = True
    while grew:  # the store, the stores dreamed from it, and those it was dreamed from
        grew = False
        for record in records:
            if (record.store in lineage) != (record.output_store in lineage):
                lineage |= {record.store, record.output_store}
                grew = True
    chosen = [r for r in records if r.store in lineage]
    if not chosen:
        err.print(f"no dreams of {name!r} yet (start one with: staffwork dream run --store {name})")
        return
    width = max(44, *(len(f"{r.store} -> {r.output_store}") for r in chosen))
    _line(
        f"{'DREAM':<30}  {'CREATED':<19}  {'STORE -> OUTPUT':<{width}} {'STATUS':<9} {'SESS':>4} "
        f"{'PASS':>5} {'AVG REV':>7} {'TOOL ERR':>8}"
    )
    for record in chosen:
        r = record.report
        created = datetime.fromtimestamp(record.created).astimezone().strftime("%Y-%m-%d %H:%M:%S")
        _line(
            f"{record.dream_id:<30}  {created}  {record.store + ' -> ' + record.output_store:<{width}} "
            f"{record.status:<9} {r.sessions if r else 0:>4} {_pct(r.pass_rate) if r else '-':>5} "
            f"{_num(r.avg_revisions) if r else '-':>7} {r.tool_errors if r else 0:>8}"
        )
    agents = sorted({a.agent for r in chosen if r.report for a in r.report.agents})
    if agents:
        _line("\navg revisions per agent, dream by dream:")
        for agent in agents:
            cells = []
            for record in chosen:
                found = [a for a in (record.report.agents if record.report else []) if a.agent == agent]
                cells.append(f"{found[0].avg_revisions:.2f}" if found else "-")
            _line(f"  {agent:<16} " + "  ".join(f"{c:>6}" for c in cells))


@dream_app.command("serve")
def serve(
    every: Annotated[
        str | None, typer.Option(help="Also dream on a schedule: every this long (30m, 6h, 1d).")
    ] = None,
    stores: Annotated[
        list[str] | None, typer.Option("--store", help="A store to dream on the schedule (repeatable).")
    ] = None,
    sessions: Annotated[int, typer.Option(help="Sessions each scheduled dream reads.")] = 20,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Run the dreamer actor: dreams on request (``<root>.api.dream``), and on a schedule with
    ``--every`` and ``--store``, until Ctrl-C."""
    if bool(every) != bool(stores):
        fail(StaffworkError("a schedule needs both --every DURATION and at least one --store NAME"))
    period = parse_duration(every).total_seconds() if every else 0.0
    schedules = [
        DreamSchedule(every_s=period, request=DreamRequest(store=name, sessions=sessions))
        for name in stores or []
    ]

    async def body(bus: Bus) -> None:
        planned = f"; every {every}: {', '.join(stores or [])}" if schedules else ""
        ready = f"dreamer ready (root {root!r}) on {bus.subjects.api_dream}{planned}"
        await serve_here(bus, ["dreamer"], RoleConfig(schedules=schedules), ready)

    _with_bus(nats, root, body)
