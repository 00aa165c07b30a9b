"""Benchmark: the events/s the trace collector stores with no loss, against raw JetStream publishing.

1. Raw publish: N realistic trace events (model request spans with usage, tool calls and results,
   messages; 300-600 bytes of JSON each, encoded before the clock starts, with the headers
   ``Bus.emit`` sends) published to a fresh root's event subjects with pipelined acks
   (``js.publish_async``, the mechanism of ``Bus.emit``), timed until every ack is in.
2. Live: a collector process (``staffwork actor collector``) is ready on another fresh root; N new
   events are published the same way, timed from the first publish until its SQLite database holds
   all N (polled read-only every few ms). Goal (issue #15): the collector keeps up with >= 80% of the
   raw rate (the goal before it was >= 50%).
3. Catch-up: a collector started on the stream of step 1 (a backlog of N events), timed from its
   "collector ready" line until all N are stored.

Every phase checks no loss and no duplicates: exactly N rows, N distinct stream sequences, N distinct
msg ids, and the collector's consumer left with nothing pending, unacknowledged or redelivered.

The rates depend on what else the machine runs; the CPU each process spends per event (read from
``/proc``, on Linux) does much less, and says which process bounds the live rate: the publisher, the
nats-server and the collector share the cores.

Run: ``python bench/trace.py [--events 20000] [--rounds 3]``, against an embedded nats-server with
file storage in a temporary directory. ``--profile`` instead runs the catch-up phase with the
collector in this process under cProfile and prints where it spends its time.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory would come first on sys.path (bench/bus.py would shadow
# the bus package); drop it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from typing import TypedDict  # noqa: E402

import nats  # noqa: E402
from nats.js import JetStreamContext  # noqa: E402

from actors.collector.actor import TraceStore  # noqa: E402
from actors.roles import RoleConfig, serve_roles  # noqa: E402
from bus.codec import encode  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.logs import configure_logging  # noqa: E402
from bus.provision import provision  # noqa: E402
from bus.server import EmbeddedServer  # noqa: E402
from schemas.base import Usage  # noqa: E402
from schemas.ids import new_id  # noqa: E402
from schemas.trace import (  # noqa: E402
    AgentMessage,
    AgentToolResult,
    AgentToolUse,
    ModelRequestEnd,
    ModelRequestStart,
    ThreadMessageSent,
    TraceEvent,
    event_kind,
)

STAFFWORK = Path(sys.executable).with_name("staffwork")  # the venv's entry point
DURABLE = "collector"  # the collector's consumer (CollectorActor.consumer)
POLL = 0.005  # seconds between COUNT(*) polls of the collector's database
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

#: One event ready to publish: subject, JSON payload, headers (traceparent and Nats-Msg-Id).
Publication = tuple[str, bytes, dict[str, str]]


class _Ids(TypedDict):
    session_id: str
    thread_id: str
    agent: str
    span_id: str
    parent_span_id: str


def _hex(n: int) -> str:
    return os.urandom(n).hex()


def trace_events(session_id: str, count: int) -> list[TraceEvent]:
    """``count`` events as agent turns emit them: model request, tool call and result, text, delegation."""
    grep_output = "\n".join(
        f"src/app/{name}.py:{line}: def {name}_{line}(self, request: Request) -> Response:"
        for name, line in (("views", 41), ("models", 118), ("forms", 7))
    )
    events: list[TraceEvent] = []
    while len(events) < count:
        turn = len(events) // 6
        ids = _Ids(
            session_id=session_id,
            thread_id=new_id("thr"),
            agent=f"agent{turn % 20:02d}",
            span_id=_hex(8),
            parent_span_id=_hex(8),
        )
        tool_use_id = f"toolu_01{_hex(11)}"
        events += [
            ModelRequestStart(**ids, model="claude-sonnet-4-5"),
            AgentToolUse(
                **ids,
                tool_use_id=tool_use_id,
                name="grep",
                input={"pattern": r"def \w+\(self", "path": "src/app", "glob": "*.py", "max_results": 50},
            ),
            AgentToolResult(**ids, tool_use_id=tool_use_id, name="grep", content=grep_output),
            ModelRequestEnd(
                **ids,
                model="claude-sonnet-4-5",
                stop_reason="tool_use",
                usage=Usage(
                    input_tokens=12_873, output_tokens=412, cache_read_input_tokens=11_520, cost_usd=0.0123
                ),
                duration_ms=2345.6,
            ),
            AgentMessage(
                **ids,
                text="The request handlers live in src/app/views.py; each one validates its form, "
                "loads the model and renders a template. I will add the missing permission check "
                "to the three views that write.",
            ),
            ThreadMessageSent(
                **ids,
                to_thread_id=new_id("thr"),
                to_agent="reviewer",
                content="Review the permission checks added to src/app/views.py (three views).",
            ),
        ]
    return events[:count]


def publications(bus: Bus, session_id: str, count: int) -> list[Publication]:
    """The events encoded once, with their subjects and the headers ``Bus.emit`` would send."""
    return [
        (bus.subjects.event(e.session_id, event_kind(e)), encode(e), bus.headers(e.msg_id))
        for e in trace_events(session_id, count)
    ]


@contextlib.asynccontextmanager
async def raw_jetstream(url: str) -> AsyncIterator[JetStreamContext]:
    """JetStream on a plain nats-py connection: the raw publishing side, and consumer state."""
    nc = await nats.connect(url, name="bench-raw")
    try:
        yield nc.jetstream()
    finally:
        await nc.drain()


async def publish_all(js: JetStreamContext, batch: list[Publication]) -> float:
    """Publish with pipelined acks (at most nats-py's 4000 in flight); seconds until every ack is in."""
    started = time.perf_counter()
    async with asyncio.timeout(120):
        futures = [await js.publish_async(subject, data, headers=headers) for subject, data, headers in batch]
        acks = await asyncio.gather(*futures)
    elapsed = time.perf_counter() - started
    if max(ack.seq for ack in acks) != len(batch):
        raise RuntimeError("the phase's stream is not fresh: its events are not sequences 1..N")
    duplicates = sum(1 for ack in acks if ack.duplicate)
    if duplicates:
        raise RuntimeError(f"{duplicates} of {len(batch)} publishes were deduplicated (msg ids repeat)")
    return elapsed


class Database:
    """The collector's SQLite database, read-only, polled while the collector writes it."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def last_seq(self) -> int:
        return int(self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events").fetchone()[0])

    async def wait_for(self, count: int, timeout: float) -> float:
        """Poll until the ``count``-th event of the phase's fresh stream (stream sequence ``count``) is
        stored; the time (perf_counter) it was first seen. The collector stores in stream order, and
        :meth:`check` verifies afterwards that all ``count`` are there, exactly once. (MAX on the
        primary key costs microseconds; a COUNT(*) every few ms would take CPU from the collector.)"""
        async with asyncio.timeout(timeout):
            while self.last_seq() < count:  # noqa: ASYNC110 - another process writes it: nothing to wait on
                await asyncio.sleep(POLL)
        return time.perf_counter()

    def check(self, session_id: str, expected: int) -> None:
        """Exactly ``expected`` rows, all of ``session_id``, with distinct stream sequences and msg ids."""
        rows, seqs, msg_ids, ours = self.db.execute(
            "SELECT COUNT(*), COUNT(DISTINCT seq), COUNT(DISTINCT json_extract(data, '$.msg_id')),"
            " SUM(session_id = ?) FROM events",
            (session_id,),
        ).fetchone()
        if (rows, seqs, msg_ids, ours) != (expected,) * 4:
            raise RuntimeError(
                f"stored {rows} rows ({seqs} distinct seq, {msg_ids} distinct msg ids, {ours} of "
                f"session {session_id!r}); expected exactly {expected}"
            )

    def close(self) -> None:
        self.db.close()


async def settled(js: JetStreamContext, stream: str, timeout: float = 30.0) -> int:
    """Wait until the collector's consumer has nothing pending or unacked; its redelivery count."""
    async with asyncio.timeout(timeout):
        while True:
            info = await js.consumer_info(stream, DURABLE)
            if info.num_pending == 0 and info.num_ack_pending == 0:
                return int(info.num_redelivered)
            await asyncio.sleep(POLL)


def cpu_seconds(pid: int | None) -> float:
    """The CPU time (user and system) process ``pid`` has used; NaN where ``/proc`` cannot say."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / _TICKS


@dataclass
class Collector:
    pid: int
    ready_at: float  # perf_counter when it said it was ready


@contextlib.asynccontextmanager
async def collector_process(url: str, root: str, db: Path) -> AsyncIterator[Collector]:
    """``staffwork actor collector`` as a child process; yields when it says it is ready."""
    proc = await asyncio.create_subprocess_exec(
        str(STAFFWORK),
        *("actor", "collector", "--nats", url, "--db", str(db), "--root", root),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    stderr = proc.stderr
    lines: list[str] = []

    async def ready() -> float:
        while raw := await stderr.readline():
            lines.append(raw.decode(errors="replace").rstrip())
            if raw.startswith(b"collector ready"):
                return time.perf_counter()
        raise RuntimeError(f"the collector exited ({await proc.wait()}) before it was ready: {lines[-5:]}")

    async def drain() -> None:  # keep reading stderr so a full pipe never blocks the collector
        while raw := await stderr.readline():
            lines.append(raw.decode(errors="replace").rstrip())

    try:
        async with asyncio.timeout(30):
            ready_at = await ready()
        reader = asyncio.create_task(drain())
        try:
            yield Collector(pid=proc.pid, ready_at=ready_at)
        finally:
            proc.terminate()
            async with asyncio.timeout(30):
                code = await proc.wait()
                await reader
            if code != 0:
                raise RuntimeError(f"the collector exited with code {code}: {lines[-5:]}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@dataclass
class Round:
    raw: float  # events/s, publish until all acks are in, no collector running
    live: float  # events/s, first publish until the collector has stored all
    live_publish: float  # events/s, the publish side of the live phase (sharing the CPU with it)
    catch_up: float  # events/s, collector ready until it stored a backlog of N
    startup: float  # seconds, spawn to "collector ready"
    redelivered: int
    # CPU microseconds per event
    cpu_publisher: float  # raw phase
    cpu_server_raw: float
    cpu_collector_live: float  # first publish -> all stored
    cpu_server_live: float
    cpu_collector_catch_up: float  # ready -> all stored


async def one_round(url: str, server_pid: int | None, tmp: Path, number: int, events: int) -> Round:
    timeout = max(60.0, events / 200)
    # Raw publish on a fresh root, then a collector catching up on that backlog.
    root, session_id = f"trace_backlog{number}", f"ses_backlog{number}"
    async with await Bus.connect(url, root=root, name="bench-publisher") as bus, raw_jetstream(url) as js:
        await provision(bus)
        batch = publications(bus, session_id, events)
        publisher, server = time.process_time(), cpu_seconds(server_pid)
        raw_s = await publish_all(js, batch)
        cpu_publisher, cpu_server_raw = time.process_time() - publisher, cpu_seconds(server_pid) - server
        db_path = tmp / f"{root}.db"
        spawned = time.perf_counter()
        async with collector_process(url, root, db_path) as collector:
            collector_cpu = cpu_seconds(collector.pid)
            db = Database(db_path)
            try:
                stored_at = await db.wait_for(events, timeout)
                cpu_catch_up = cpu_seconds(collector.pid) - collector_cpu
                redelivered = await settled(js, bus.subjects.log_stream)
                db.check(session_id, events)
            finally:
                db.close()
        catch_up_s, startup_s = stored_at - collector.ready_at, collector.ready_at - spawned
    # Live: a ready collector on another fresh root, N new events.
    root, session_id = f"trace_live{number}", f"ses_live{number}"
    async with await Bus.connect(url, root=root, name="bench-publisher") as bus, raw_jetstream(url) as js:
        await provision(bus)
        batch = publications(bus, session_id, events)
        db_path = tmp / f"{root}.db"
        async with collector_process(url, root, db_path) as collector:
            db = Database(db_path)
            try:
                collector_cpu, server = cpu_seconds(collector.pid), cpu_seconds(server_pid)
                started = time.perf_counter()
                publish_s = await publish_all(js, batch)
                live_s = await db.wait_for(events, timeout) - started
                cpu_live = cpu_seconds(collector.pid) - collector_cpu
                cpu_server_live = cpu_seconds(server_pid) - server
                redelivered += await settled(js, bus.subjects.log_stream)
                db.check(session_id, events)
            finally:
                db.close()
    return Round(
        raw=events / raw_s,
        live=events / live_s,
        live_publish=events / publish_s,
        catch_up=events / catch_up_s,
        startup=startup_s,
        redelivered=redelivered,
        cpu_publisher=cpu_publisher * 1e6 / events,
        cpu_server_raw=cpu_server_raw * 1e6 / events,
        cpu_collector_live=cpu_live * 1e6 / events,
        cpu_server_live=cpu_server_live * 1e6 / events,
        cpu_collector_catch_up=cpu_catch_up * 1e6 / events,
    )


async def main(events: int, rounds: int) -> None:
    results: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="staffwork-bench-") as tmp:
        async with EmbeddedServer(Path(tmp) / "nats") as server:
            for number in range(rounds):
                results.append(await one_round(server.url, server.pid, Path(tmp), number, events))

    median = statistics.median
    raw = median(r.raw for r in results)
    live = median(r.live for r in results)
    catch_up = median(r.catch_up for r in results)
    ratio = live / raw

    def row(label: str, values: list[float], ratio_to_raw: float | None, digits: int = 0) -> None:
        each = "  ".join(f"{v:8,.{digits}f}" for v in values)
        shown = f"{ratio_to_raw:5.2f}" if ratio_to_raw is not None else "     "
        print(f"{label:<44} {median(values):9,.{digits}f}   {shown}     {each}")

    print(
        f"# staffwork bench/trace.py: {events} trace events ({_size_range()} B of JSON each) x {rounds} "
        "rounds; collector as its own process (staffwork actor collector), SQLite in WAL mode; "
        "embedded nats-server, file storage"
    )
    print(f"{'## events/s':<44} {'median':>9}   {'x raw':>5}     rounds")
    row("raw JetStream publish, pipelined acks", [r.raw for r in results], 1.0)
    row("collector live: first publish -> all stored", [r.live for r in results], ratio)
    row("  its publish side (sharing the CPU)", [r.live_publish for r in results], None)
    row("collector catch-up: backlog of N -> stored", [r.catch_up for r in results], catch_up / raw)
    startup = median(r.startup for r in results)
    print(f"collector process start (spawn -> ready): {startup:.2f} s, not included in the rates above")
    print(f"{'## CPU per event, us':<44} {'median':>9}             rounds")
    row("publisher (raw phase)", [r.cpu_publisher for r in results], None, digits=1)
    row("nats-server (raw phase)", [r.cpu_server_raw for r in results], None, digits=1)
    row("nats-server (live phase)", [r.cpu_server_live for r in results], None, digits=1)
    row("collector (live phase)", [r.cpu_collector_live for r in results], None, digits=1)
    row("collector (catch-up phase)", [r.cpu_collector_catch_up for r in results], None, digits=1)
    loads = ", ".join(f"{load:.2f}" for load in os.getloadavg())
    print(f"load average at the end: {loads} on {os.cpu_count()} CPUs (other work slows every rate)")
    redelivered = sum(r.redelivered for r in results)
    print(
        f"no loss, no duplicates: exactly {events} rows, distinct seq and msg ids, consumer drained, in "
        f"every phase of every round ({redelivered} redeliveries)"
    )
    verdict = "met" if ratio >= 0.8 else "MISSED"
    print(f"goal collector >= 80% of raw publish: {verdict} (ratio {ratio:.2f}; it was >= 50% before)")


def _size_range() -> str:
    sizes = [len(encode(e)) for e in trace_events("ses_live0", 600)]
    return f"{min(sizes)}-{max(sizes)}"


async def profile(events: int, top: int) -> None:
    """The catch-up phase with the collector in this process under cProfile."""
    with tempfile.TemporaryDirectory(prefix="staffwork-bench-") as tmp:
        async with EmbeddedServer(Path(tmp) / "nats") as server:
            root, session_id = "trace_profile", "ses_profile"
            async with (
                await Bus.connect(server.url, root=root, name="bench-publisher") as bus,
                raw_jetstream(server.url) as js,
            ):
                await provision(bus)
                await publish_all(js, publications(bus, session_id, events))
            async with await Bus.connect(server.url, root=root, name="bench-collector") as bus:
                path = Path(tmp) / "trace.db"
                TraceStore(path).close()  # the schema, for the read-only reader
                db = Database(path)
                stop = asyncio.Event()
                ready = asyncio.Event()
                profiler = cProfile.Profile()
                try:
                    async with asyncio.TaskGroup() as tg:
                        config = RoleConfig(db=path)
                        tg.create_task(serve_roles(bus, ["collector"], config, stop, on_ready=ready.set))
                        await ready.wait()
                        started = time.perf_counter()
                        profiler.enable()
                        stored_at = await db.wait_for(events, max(60.0, events / 200))
                        profiler.disable()
                        stop.set()
                    db.check(session_id, events)
                finally:
                    db.close()
    elapsed = stored_at - started
    print(
        f"# collector in this process, catch-up on {events} events: {events / elapsed:,.0f}/s under cProfile"
    )
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)
    print(out.getvalue())


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="profile an in-process collector instead")
    parser.add_argument("--top", type=int, default=30, help="functions shown by --profile")
    args = parser.parse_args()
    configure_logging("warning")
    if args.profile:
        asyncio.run(profile(args.events, args.top))
    else:
        asyncio.run(main(args.events, args.rounds))
