"""Benchmark: the ``sql`` tool on the incident example's data, a cold call against a warm one.

The data is ``examples/incident/generate.py``'s (seed 7: about 11 MB, 10 MB of it app.jsonl) and
the queries are the ``sql`` calls of the incident team's playbooks (those of one offline session).

1. In this process, the work of one call: build the database from the files' bytes and query it
   (cold), query a built one (warm: a private copy of the kept image), and the tool before the cache
   (``--baseline``, a git revision: every call loaded every file).
2. Through the tool on an embedded nats-server, the files in a session's workspace: the eight calls
   of a session, the first with an empty cache (list, read and load the files, query), the others
   warm (list, query), against the baseline tool doing the same eight calls.

Times are medians over ``--rounds``: wall time, and the CPU time of this process (the server's is
not counted). Run: ``python bench/sql.py [--rounds 5] [--baseline 66cb69b]``.
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
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import tomllib  # noqa: E402
from collections.abc import Awaitable, Callable  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import partial  # noqa: E402
from types import ModuleType  # noqa: E402

from actors.agent.tools import sql as sql_module  # noqa: E402
from actors.agent.tools.base import Tool, ToolContext  # noqa: E402
from actors.agent.tools.sql_cache import BuildCache, Database, Files  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.logs import configure_logging  # noqa: E402
from bus.provision import provision  # noqa: E402
from bus.server import EmbeddedServer  # noqa: E402
from bus.workspace import Workspace  # noqa: E402
from examples.incident.generate import FILES, generate  # noqa: E402

ROOT = _HERE.parent
BASELINE = "66cb69b"  # the last revision before the cache
SESSION = "ses_bench"


@dataclass
class Timing:
    wall: float
    cpu: float

    def __str__(self) -> str:
        return f"{self.wall * 1000:8.1f} ms wall {self.cpu * 1000:8.1f} ms CPU"


def median(timings: list[Timing]) -> Timing:
    return Timing(statistics.median(t.wall for t in timings), statistics.median(t.cpu for t in timings))


def timed(fn: Callable[[], object]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


async def atimed(fn: Callable[[], Awaitable[object]]) -> Timing:
    wall, cpu = time.perf_counter(), time.process_time()
    await fn()
    return Timing(time.perf_counter() - wall, time.process_time() - cpu)


def playbook_queries() -> list[str]:
    team = tomllib.loads((ROOT / "examples" / "incident" / "team.toml").read_text())
    return [
        call["input"]["query"]
        for agent in team["agents"]
        for call in agent.get("playbook", {}).get("calls", [])
        if call["tool"] == "sql"
    ]


def baseline_module(revision: str) -> ModuleType | None:
    """The sql module as it was at ``revision``, or None if git cannot show it."""
    try:
        source = subprocess.run(
            ["git", "show", f"{revision}:actors/agent/tools/sql.py"],
            cwd=ROOT,
            capture_output=True,
            check=True,
            text=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = ModuleType("sql_baseline")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:actors/agent/tools/sql.py", "exec"), module.__dict__)
    return module


def fresh_cache() -> BuildCache[Files, Database]:
    return BuildCache(
        max_bytes=sql_module.SQL_CACHE_BYTES,
        max_entries=sql_module.SQL_CACHE_ENTRIES,
        weigh=lambda db: len(db.image),
    )


def in_process(
    sources: list[tuple[str, bytes]], queries: list[str], rounds: int, baseline: ModuleType | None
) -> dict[str, Timing]:
    """The median time of one call's work, over every query and round."""
    database = sql_module._build(sources)
    found: dict[str, list[Timing]] = {"cold": [], "warm": [], "baseline": []}
    for _ in range(rounds):
        for query in queries:
            found["cold"].append(timed(partial(sql_module._run_query, sources, query, 200)))
            found["warm"].append(timed(partial(sql_module._query, database, query, 200)))
            if baseline is not None:
                found["baseline"].append(timed(partial(baseline._run_query, sources, query, 200)))
    return {name: median(timings) for name, timings in found.items() if timings}


async def session_calls(tool: Tool, ctx: ToolContext, queries: list[str]) -> list[Timing]:
    timings = []
    for query in queries:

        async def call(q: str = query) -> None:
            result = await tool.run(ctx, {"query": q})
            assert not result.is_error, result.content

        timings.append(await atimed(call))
    return timings


async def through_the_tool(
    data: Path, queries: list[str], rounds: int, baseline: ModuleType | None, store: Path
) -> dict[str, Timing]:
    found: dict[str, list[Timing]] = {
        "first": [],
        "later": [],
        "session": [],
        "baseline": [],
        "baseline_session": [],
    }
    async with EmbeddedServer(store) as server:
        bus = await Bus.connect(server.url, root="bench")
        try:
            await provision(bus)
            workspace = Workspace(bus)
            for name in FILES:
                await workspace.put(SESSION, name, (data / name).read_bytes())
            ctx = ToolContext(
                bus=bus, workspace=workspace, session_id=SESSION, thread_id="thr_1", agent="bench"
            )
            for _ in range(rounds):
                sql_module._CACHE = fresh_cache()  # the process's first session over these files
                calls = await session_calls(sql_module.sql, ctx, queries)
                found["first"].append(calls[0])
                found["later"].extend(calls[1:])
                found["session"].append(Timing(sum(t.wall for t in calls), sum(t.cpu for t in calls)))
                if baseline is not None:
                    calls = await session_calls(baseline.sql, ctx, queries)
                    found["baseline"].extend(calls)
                    found["baseline_session"].append(
                        Timing(sum(t.wall for t in calls), sum(t.cpu for t in calls))
                    )
        finally:
            await bus.close()
    return {name: median(timings) for name, timings in found.items() if timings}


def ratio(old: Timing, new: Timing) -> str:
    return f"{old.wall / new.wall:6.1f}x wall {old.cpu / new.cpu:6.1f}x CPU"


async def main(rounds: int, revision: str) -> None:
    queries = playbook_queries()
    baseline = baseline_module(revision)
    with tempfile.TemporaryDirectory(prefix="staffwork-bench-") as tmp:
        data = Path(tmp) / "data"
        generate(data, seed=7)
        sources = [(name, (data / name).read_bytes()) for name in FILES]
        local = in_process(sources, queries, rounds, baseline)
        tool = await through_the_tool(data, queries, rounds, baseline, Path(tmp) / "store")

    mib = sum(len(b) for _, b in sources) / 2**20
    print(f"# staffwork bench/sql.py: {len(queries)} playbook queries x {rounds} rounds over {mib:.1f} MiB")
    print("## one call's work, in this process (median per call)")
    if "baseline" in local:
        print(f"before the cache ({revision}), every call  {local['baseline']}")
    print(f"cold: build and query                     {local['cold']}")
    print(f"warm: query a copy of the kept image      {local['warm']}")
    if "baseline" in local:
        print(f"cold vs before                            {ratio(local['baseline'], local['cold'])}")
        print(f"warm vs before                            {ratio(local['baseline'], local['warm'])}")
    print("## the tool, on an embedded nats-server (median)")
    if "baseline" in tool:
        print(f"before the cache, per call                {tool['baseline']}")
    print(f"first call (list, read, build, query)     {tool['first']}")
    print(f"later calls (list, query)                 {tool['later']}")
    if "baseline" in tool:
        print(f"warm vs before, per call                  {ratio(tool['baseline'], tool['later'])}")
        print(f"a session's {len(queries)} calls, before            {tool['baseline_session']}")
    print(f"a session's {len(queries)} calls, now               {tool['session']}")
    if "baseline" in tool:
        print(f"session vs before                         {ratio(tool['baseline_session'], tool['session'])}")
    if baseline is None:
        print(f"(no baseline: git could not show {revision}:actors/agent/tools/sql.py)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--baseline", default=BASELINE, help="the git revision to compare with")
    args = parser.parse_args()
    configure_logging("warning")
    asyncio.run(main(args.rounds, args.baseline))
