"""Benchmark: N concurrent sessions of the incident team against a running ``staffwork up``.

For each N (``--sessions 20,100``) a fresh ``staffwork up`` (a subprocess: its own STAFFWORK_HOME in a
temporary directory and a free port; ready once each of its processes said so) runs with the offline
model. One warm-up session first; then each of N sessions gets the generated incident data uploaded
as its inputs through the Python client, and all N are submitted at once (``Client.submit``, through
the gateway); the clock of a session runs from its submit to its result (a subscription to every
session's result, made before the submits). Printed:

- sessions per minute (N / first submit -> last result) and p50/p99 session time;
- peak RSS per process of ``up``'s tree (nats-server, every actor, the MCP servers they start),
  sampled from /proc every ``--sample`` seconds, and the largest total of one sample; CPU seconds
  per process over the sessions;
- the JetStream store's growth (its directory, and per stream from ``$JS.API.STREAM.LIST``).

Goals: >= 200 sessions/min, total RSS <= 2 GB. Every wait is bounded; on failure or Ctrl-C ``up``'s
whole process tree is stopped. ``--distinct`` gives each session inputs of its own (the generated
data plus one line of its own: nothing is shared in the store or in a worker's sql cache), the case
of many different incidents. ``--py-spy FILE`` records ``up``'s processes with py-spy (raw format)
while the sessions run and prints where their time goes.

Run: ``python bench/load.py [--sessions 20,100] [--timeout 900] [--distinct]``.
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
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

from actors.client import Client  # noqa: E402
from bench._proc import (  # noqa: E402
    TICK,
    MemorySampler,
    Up,
    UpFailed,
    Window,
    disk_usage,
    kill_leftovers,
    mib,
)
from bus.connection import Bus  # noqa: E402
from bus.errors import StaffworkError  # noqa: E402
from bus.logs import configure_logging  # noqa: E402
from examples.incident.generate import FILES, generate  # noqa: E402
from schemas.ids import new_id  # noqa: E402
from schemas.session import SessionResult  # noqa: E402

TASK = "Payments are failing since this afternoon. Find out what happened and write the incident report."
RATE_GOAL = 200.0  # sessions per minute
RSS_GOAL = 2 * 2**30
UPLOADS_AT_ONCE = 4


class BenchFailed(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- JetStream figures -----------------------------------------------------------------------------


@dataclass
class Store:
    """The JetStream store at one moment: its directory and its streams."""

    size: int  # bytes of the files
    disk: int  # bytes they take on disk
    streams: dict[str, dict[str, int]]  # name -> messages, bytes, consumers, subjects
    account: dict[str, int]  # $JS.API.INFO: memory, storage, streams, consumers


async def store_now(bus: Bus, directory: Path) -> Store:
    streams: dict[str, dict[str, int]] = {}
    offset = 0
    while True:
        raw, _ = await bus.request_raw(
            "$JS.API.STREAM.LIST", json.dumps({"offset": offset}).encode(), timeout=10
        )
        page = json.loads(raw)
        for info in page.get("streams") or []:
            state = info["state"]
            streams[info["config"]["name"]] = {
                "messages": state.get("messages", 0),
                "bytes": state.get("bytes", 0),
                "consumers": state.get("consumer_count", 0),
                "subjects": state.get("num_subjects", 0),
            }
        offset += len(page.get("streams") or [])
        if not page.get("streams") or offset >= page.get("total", 0):
            break
    raw, _ = await bus.request_raw("$JS.API.INFO", b"", timeout=10)
    info = json.loads(raw)
    account = {k: int(info.get(k, 0)) for k in ("memory", "storage", "streams", "consumers")}
    size, disk = await asyncio.to_thread(disk_usage, directory)
    return Store(size, disk, streams, account)


# --- one batch of N sessions -----------------------------------------------------------------------


@dataclass
class Batch:
    n: int
    warmup: float = 0.0
    upload: float = 0.0
    submitted: dict[str, float] = field(default_factory=dict)  # session -> submit time (perf_counter)
    results: dict[str, tuple[float, SessionResult]] = field(default_factory=dict)
    late: dict[str, SessionResult] = field(default_factory=dict)  # stored, but not seen within the bound
    stores: dict[str, Store] = field(default_factory=dict)  # "before", "uploaded", "after"
    windows: dict[str, Window] = field(default_factory=dict)  # "idle", "uploads", "sessions"
    timed_out: bool = False


def inputs_of(files: dict[str, bytes], session_id: str, distinct: bool) -> dict[str, bytes]:
    """The files a session gets: the generated ones, or with ``distinct`` a copy of its own (one more
    INFO log line and one more metrics row, which change no finding) that shares nothing with the
    other sessions' (no stored content, no sql cache entry)."""
    if not distinct:
        return files
    line = {
        "time": "2024-05-14T23:59:59.999Z",
        "service": "bench",
        "level": "INFO",
        "status": 200,
        "route": "GET /bench",
        "latency_ms": 1,
        "msg": f"bench session {session_id}",
        "trace_id": session_id,
    }
    return files | {
        "app.jsonl": files["app.jsonl"] + json.dumps(line, separators=(",", ":")).encode() + b"\n",
        "metrics.csv": files["metrics.csv"] + f"2024-05-14T23:59:00Z,bench-{session_id},rps,1\n".encode(),
    }


async def run_batch(
    up: Up, sampler: MemorySampler, n: int, files: dict[str, bytes], timeout: float, distinct: bool
) -> Batch:
    batch = Batch(n)
    store_dir = up.home / "nats"
    async with await Bus.connect(up.url, root="sw", name="bench-load") as bus:
        client = Client(bus)

        async def upload(session_id: str) -> None:
            for name, content in inputs_of(files, session_id, distinct).items():
                await client.workspace.put(session_id, name, content)

        # A warm-up session: the workers' first calls (the MCP server's start, say) are not in the batch.
        session_id = new_id("ses")
        started = time.perf_counter()
        await upload(session_id)
        await client.submit(TASK, team="incident", inputs=list(FILES), session_id=session_id, timeout=60)
        result = await client.wait(session_id, timeout=120)
        batch.warmup = time.perf_counter() - started
        if result.status != "idle":
            raise BenchFailed(f"the warm-up session {session_id} ended {result.status}: {result.error}")

        batch.stores["before"] = await store_now(bus, store_dir)
        batch.windows["idle"] = sampler.window()

        sessions = [new_id("ses") for _ in range(n)]
        started = time.perf_counter()
        slots = asyncio.Semaphore(UPLOADS_AT_ONCE)

        async def upload_one(session_id: str) -> None:
            async with slots:
                await upload(session_id)

        async with asyncio.timeout(timeout):
            await asyncio.gather(*(upload_one(s) for s in sessions))
        batch.upload = time.perf_counter() - started
        batch.windows["uploads"] = sampler.window()
        batch.stores["uploaded"] = await store_now(bus, store_dir)

        wanted = set(sessions)
        done = asyncio.Event()

        def arrived(result: SessionResult) -> None:
            if result.session_id in wanted and result.session_id not in batch.results:
                batch.results[result.session_id] = (time.perf_counter(), result)
                if len(batch.results) == n:
                    done.set()

        listener = await bus.listen(
            bus.subjects.all_out("result"), SessionResult, arrived, max_bytes=4 * 1024 * 1024
        )
        try:

            async def submit(session_id: str) -> None:
                batch.submitted[session_id] = time.perf_counter()
                await client.submit(
                    TASK, team="incident", inputs=list(FILES), session_id=session_id, timeout=60
                )

            try:
                async with asyncio.timeout(timeout):
                    await asyncio.gather(*(submit(s) for s in sessions))
                    await done.wait()
            except TimeoutError:
                batch.timed_out = True
        finally:
            await listener.close()
        batch.windows["sessions"] = sampler.window()
        for session_id in wanted - set(batch.results):  # done since, or its live message missed? (bounded)
            with contextlib.suppress(Exception):
                batch.late[session_id] = await client.wait(session_id, timeout=0.5)
        batch.stores["after"] = await store_now(bus, store_dir)
    return batch


# --- printing --------------------------------------------------------------------------------------


def report(batch: Batch, sampler: MemorySampler, names: list[str], up: Up) -> bool:
    n = batch.n
    ends = sorted(t for t, _ in batch.results.values())
    first = min(batch.submitted.values()) if batch.submitted else 0.0
    times = sorted(batch.results[s][0] - batch.submitted[s] for s in batch.results if s in batch.submitted)
    statuses = Counter(r.status for _, r in batch.results.values())
    outcomes = Counter(r.outcome.result if r.outcome else "none" for _, r in batch.results.values())
    span = (ends[-1] - first) if ends else 0.0
    rate = len(ends) / span * 60 if span else 0.0
    print(f"## N = {n}: {n} sessions submitted at once ({len(names)} processes under up)")
    print(
        f"warm-up session {batch.warmup:.2f} s (upload included); uploads of the N sessions' inputs: "
        f"{batch.upload:.1f} s ({UPLOADS_AT_ONCE} sessions at once)"
    )
    if batch.timed_out:
        print(
            f"TIMED OUT: {len(ends)} of {n} results within the bound; {len(batch.late)} more stored by the "
            f"time it was checked ({dict(Counter(r.status for r in batch.late.values()))}), not timed"
        )
    print(
        f"results {len(ends)}/{n}: status {dict(statuses)}, outcome {dict(outcomes)}; "
        f"first submit -> last result {span:.1f} s"
    )
    if times:
        p99 = times[max(0, int(len(times) * 0.99 + 0.5) - 1)]
        print(
            f"sessions/min {rate:7.1f}   session p50 {statistics.median(times):6.2f} s   p99 {p99:6.2f} s   "
            f"min {times[0]:.2f} s   max {times[-1]:.2f} s"
        )
    sessions, idle, uploads = batch.windows["sessions"], batch.windows["idle"], batch.windows["uploads"]
    groups: dict[str, list[tuple[int, int]]] = {}  # by name: a restarted actor, the grader's checks
    for key in set(sessions.peak) | set(uploads.peak) | set(idle.last):
        groups.setdefault(sampler.seen[key], []).append(key)

    def most(values: dict[tuple[int, int], int], keys: list[tuple[int, int]]) -> int:
        return max(values.get(k, 0) for k in keys)

    rows = sorted(groups.items(), key=lambda g: -max(most(sessions.peak, g[1]), most(uploads.peak, g[1])))
    print("peak RSS per process (sampled; idle = after the warm-up; VmHWM = the kernel's lifetime peak;")
    print("x N: N processes of that name, each at most this much; CPU = seconds while the sessions ran)")
    print(f"  {'process':26s} {'idle':>11s} {'uploads':>11s} {'sessions':>11s} {'VmHWM':>11s} {'CPU s':>7s}")
    for name, keys in rows:
        cpu = sum(c[1] - c[0] for k in keys if (c := sessions.cpu.get(k)))
        shown = name if len(keys) == 1 else f"{name} x {len(keys)}"
        print(
            f"  {shown:26s} {mib(most(idle.last, keys)):>11s} {mib(most(uploads.peak, keys)):>11s} "
            f"{mib(most(sessions.peak, keys)):>11s} {mib(most(sessions.hwm, keys)):>11s} {cpu / TICK:7.1f}"
        )
    peak_total = max(sessions.peak_total, uploads.peak_total)
    print(
        f"  {'total (largest sum at once)':26s} {mib(sum(idle.last.values())):>11s} "
        f"{mib(uploads.peak_total):>11s} {mib(sessions.peak_total):>11s}   ({sessions.samples} samples)"
    )
    before, uploaded, after = batch.stores["before"], batch.stores["uploaded"], batch.stores["after"]
    print(
        f"JetStream store: {mib(before.size)} -> {mib(uploaded.size)} after the uploads -> {mib(after.size)} "
        f"(on disk {mib(after.disk)}; account storage {mib(after.account['storage'])}, "
        f"memory {mib(after.account['memory'])}, {after.account['consumers']} consumers)"
    )
    print(
        f"  {'stream':24s} {'msgs before':>11s} {'msgs after':>11s} {'bytes before':>13s} "
        f"{'after uploads':>14s} {'bytes after':>13s} {'consumers':>9s}"
    )
    for name in sorted(after.streams, key=lambda s: -after.streams[s]["bytes"]):
        b, u, a = before.streams.get(name, {}), uploaded.streams.get(name, {}), after.streams[name]
        print(
            f"  {name:24s} {b.get('messages', 0):11,d} {a['messages']:11,d} {mib(b.get('bytes', 0)):>13s} "
            f"{mib(u.get('bytes', 0)):>14s} {mib(a['bytes']):>13s} {a['consumers']:9d}"
        )
    per_session = (after.size - uploaded.size) / max(len(ends), 1)
    inputs = (uploaded.size - before.size) / n
    print(f"  store growth per session: inputs {mib(inputs)}, the session itself {mib(per_session)}")
    odd = [
        line for line in up.lines if "[supervisor]" in line or "Traceback" in line or "error" in line.lower()
    ]
    if odd:
        print(f"up said ({len(odd)} lines of restarts or errors; the first 10):")
        for line in odd[:10]:
            print(f"  {line[:200]}")
    rate_met = rate >= RATE_GOAL and len(ends) == n
    rss_met = peak_total <= RSS_GOAL
    print(f"goal >= {RATE_GOAL:.0f} sessions/min: {rate:.1f} {'met' if rate_met else 'MISSED'}")
    print(f"goal total RSS <= 2 GB: {mib(peak_total)} {'met' if rss_met else 'MISSED'}")
    return rate_met and rss_met


#: Leaf frames of a thread that waits (py-spy counts some waits as activity).
WAITING = ("_worker (concurrent/futures/thread.py", "EpollSelector.select", "_do_waitpid", "Condition.wait")


def profile_summary(path: Path, top: int = 12) -> None:
    """Where py-spy saw ``up``'s processes busy: samples per process, and for the busiest the
    functions most often at the top of the stack (self) and, of staffwork's own, anywhere on it."""
    per_process: Counter[str] = Counter()
    waiting: Counter[str] = Counter()
    own: dict[str, Counter[str]] = {}
    total: dict[str, Counter[str]] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        at = 1 if len(frames) > 1 and frames[1].startswith("process ") else 0
        process = _process_name(frames[at])
        if frames[-1].startswith(WAITING):
            waiting[process] += count
            continue
        per_process[process] += count
        own.setdefault(process, Counter())[frames[-1]] += count
        for frame in set(frames[at + 1 :]):
            if "/" in frame and not frame.split("(")[-1].startswith(
                ("asyncio/", "<frozen", "typer/", "runpy")
            ):
                total.setdefault(process, Counter())[frame] += count
    busy = sum(per_process.values())
    print(f"## py-spy: {busy} busy samples while the sessions ran ({sum(waiting.values())} waiting; {path})")
    for name, count in per_process.most_common():
        print(f"  {count / busy:6.1%}  {name}")
    for name, count in per_process.most_common(3):
        print(f"  {name} ({count} samples), self:")
        for frame, n in own[name].most_common(top):
            print(f"    {n / count:6.1%}  {frame[:140]}")
        print(f"  {name}, anywhere on the stack (staffwork's and libraries' functions):")
        for frame, n in total.get(name, Counter()).most_common(top):
            print(f"    {n / count:6.1%}  {frame[:140]}")


def _process_name(frame: str) -> str:
    """``agent:logs``, ``lead``... from py-spy's ``process PID:"command line"`` frame."""
    command = frame.partition(":")[2].strip('"').split()
    if "actor" in command:
        role = command[command.index("actor") + 1]
        return f"agent:{command[command.index('--agents') + 1]}" if "--agents" in command else role
    return "up" if "up" in command else " ".join(command[:3])


# --- main ------------------------------------------------------------------------------------------


async def one_n(
    n: int, files: dict[str, bytes], timeout: float, every: float, py_spy: Path | None, distinct: bool
) -> bool:
    with tempfile.TemporaryDirectory(prefix="staffwork-bench-load-") as home:
        up = Up(Path(home), free_port())
        spy: subprocess.Popen[bytes] | None = None
        with MemorySampler(up.proc.pid, every) as sampler:
            try:
                names = await asyncio.to_thread(up.wait_ready, 60.0)
                if py_spy is not None:
                    spy = start_py_spy(up.proc.pid, py_spy.with_suffix(f".n{n}.txt"))
                batch = await run_batch(up, sampler, n, files, timeout, distinct)
            finally:
                if spy is not None:
                    stop_py_spy(spy)
                code = await asyncio.to_thread(up.stop, 60.0)
                left = kill_leftovers(sampler)
                if left:
                    print(f"warning: up (exit code {code}) left {left} running: killed", file=sys.stderr)
        met = report(batch, sampler, names, up)
    if py_spy is not None:
        profile_summary(py_spy.with_suffix(f".n{n}.txt"))
    return met


def start_py_spy(pid: int, out: Path) -> subprocess.Popen[bytes]:
    spy = Path(sys.executable).parent / "py-spy"
    return subprocess.Popen(
        [str(spy), "record", "-f", "raw", "--subprocesses", "-r", "50", "-p", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def stop_py_spy(spy: subprocess.Popen[bytes]) -> None:
    """py-spy writes its file on SIGINT; bounded, then killed."""
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()
        spy.wait(10)
    if spy.returncode not in (0, -signal.SIGINT) and spy.stderr is not None:
        print(
            f"py-spy: exit {spy.returncode}: {spy.stderr.read().decode(errors='replace')[-500:]}",
            file=sys.stderr,
        )


def main(counts: list[int], timeout: float, every: float, py_spy: Path | None, distinct: bool) -> int:
    print(
        f"# staffwork bench/load.py: incident sessions on staffwork up, offline model; {os.cpu_count()} CPUs"
    )
    with tempfile.TemporaryDirectory(prefix="incident-data-") as scratch:
        generate(Path(scratch))
        files = {name: (Path(scratch) / name).read_bytes() for name in FILES}
    print(
        f"inputs per session: {len(files)} files, {mib(sum(map(len, files.values())))}, "
        + ("each session's its own (--distinct)" if distinct else "the same for every session")
    )
    met = True
    for n in counts:
        try:
            met = asyncio.run(one_n(n, files, timeout, every, py_spy, distinct)) and met
        except (BenchFailed, UpFailed, StaffworkError, TimeoutError) as exc:
            print(f"error at N = {n}: {exc or type(exc).__name__}", file=sys.stderr)
            return 1
    return 0 if met else 2


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="20,100", help="comma-separated N (default 20,100)")
    parser.add_argument(
        "--timeout", type=float, default=900.0, help="seconds for the uploads and for the sessions, per N"
    )
    parser.add_argument("--sample", type=float, default=0.2, help="seconds between memory samples")
    parser.add_argument("--py-spy", type=Path, help="record up's processes with py-spy into FILE.n<N>.txt")
    parser.add_argument(
        "--distinct",
        action="store_true",
        help="give each session inputs of its own (nothing shared or cached)",
    )
    args = parser.parse_args()
    configure_logging("warning")
    counts = [int(n) for n in args.sessions.split(",")]
    sys.exit(main(counts, args.timeout, args.sample, args.py_spy, args.distinct))
