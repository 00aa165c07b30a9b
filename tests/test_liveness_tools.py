"""Liveness of the workspace tools (issue 12, cases 7 and 8): a pattern or a query the model writes
cannot block the worker's event loop, stop it from stopping, or grow its memory without bound."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from actors.agent.tools import sql as sql_module
from actors.agent.tools.base import Tool, ToolContext
from actors.agent.tools.sql import sql
from actors.agent.tools.workspace import grep
from bus.connection import Bus
from tests.helpers import tool_context

SID = "ses_live"

# Each line backtracks about 2^28 steps in a backtracking engine against this pattern: 60 such
# lines blocked a worker for about a minute, 150 for almost half an hour.
CATASTROPHIC = r"^(a+)+$"
BAD_LINE = "a" * 28 + "!"


@pytest.fixture
def ctx(bus: Bus) -> ToolContext:
    return tool_context(bus, SID)


async def run(tool: Tool, ctx: ToolContext, **arguments: Any) -> tuple[str, bool, float]:
    """The tool's result text, whether it is an error, and the seconds it took."""
    start = time.monotonic()
    result = await tool.run(ctx, arguments)
    return result.content, result.is_error, time.monotonic() - start


@asynccontextmanager
async def heartbeat() -> AsyncIterator[list[float]]:
    """Beat every 10 ms on the event loop while the block runs; yields the gaps between beats (s)."""
    gaps: list[float] = []

    async def beat() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    task = asyncio.create_task(beat())
    try:
        yield gaps
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


# --- case 7: grep ---


async def test_grep_with_a_catastrophic_pattern_answers_at_once(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "logs/bad.log", f"{BAD_LINE}\n" * 150 + "aaaa\n")
    async with asyncio.timeout(20):
        text, is_error, seconds = await run(grep, ctx, pattern=CATASTROPHIC)
    assert not is_error, text
    assert text.splitlines() == [
        "logs/bad.log:151: aaaa",
        "",
        "matches per file:",
        "  logs/bad.log: 1",
        "1 match in 1 file",
    ]
    assert seconds < 5


async def test_grep_leaves_the_event_loop_free(ctx: ToolContext) -> None:
    """Other coroutines (heartbeats, other threads' model calls) run while grep searches, and a grep
    that is cancelled (the worker stopping) ends at once."""
    await ctx.workspace.put(SID, "big.log", f"{BAD_LINE}\n" * 20_000 + "found\n" + "quiet line\n" * 100_000)
    # Most lines match, so the search has Python work on every line (a pattern that matches few
    # lines is scanned in RE2's C code, over before the first heartbeat).
    async with asyncio.timeout(30), heartbeat() as gaps:
        text, is_error, seconds = await run(grep, ctx, pattern=rf"{CATASTROPHIC}|found|quiet")
    assert not is_error, text
    assert text.endswith("100001 matches in 1 file (showing the first 200)")
    assert "big.log:20001: found" in text
    assert len(gaps) > 0
    assert max(gaps) < 0.5, f"the event loop stalled {max(gaps):.2f} s while grep ran {seconds:.2f} s"

    async with asyncio.timeout(10):
        # every line matches: a line at a time in Python, so it is still running when cancelled
        task = asyncio.create_task(grep.run(ctx, {"pattern": "."}))
        await asyncio.sleep(0.05)
        task.cancel()
        start = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert time.monotonic() - start < 1


@pytest.mark.parametrize(
    ("pattern", "reason"),
    [
        (r"(\w+) \1", r"invalid escape sequence: \1"),
        (r"error(?= in db)", "invalid perl operator: (?="),
        (r"(?<!no )error", "invalid perl operator: (?<!"),
        (r"(?>a+)b", "invalid perl operator: (?>"),
        (r"end\Z", r"invalid escape sequence: \Z"),
    ],
)
async def test_grep_refuses_what_re2_cannot_run(ctx: ToolContext, pattern: str, reason: str) -> None:
    await ctx.workspace.put(SID, "a.log", "error error in db\n")
    text, is_error, _ = await run(grep, ctx, pattern=pattern)
    assert is_error, text
    assert text == (
        f"grep cannot run {pattern!r} ({reason}): its patterns are RE2 syntax, which has no backreferences, "
        r"lookarounds, atomic groups, possessive repeats, conditionals or \Z"
    )


async def test_grep_says_which_syntax_it_takes(ctx: ToolContext) -> None:
    assert "RE2 syntax" in grep.description
    await ctx.workspace.put(SID, "a.log", "Error: Ünïcode\nERROR 42\nwarning\n")
    text, is_error, _ = await run(grep, ctx, pattern=r"(?P<level>error):? \pL+|\d{2}$", ignore_case=True)
    assert not is_error, text
    assert text.splitlines()[:2] == ["a.log:1: Error: Ünïcode", "a.log:2: ERROR 42"]


# --- case 8: sql ---

RUNAWAY = "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"


async def test_sql_refuses_a_huge_value(ctx: ToolContext) -> None:
    text, is_error, seconds = await run(sql, ctx, query="SELECT length(randomblob(900000000)) AS n")
    assert is_error, text
    assert text.splitlines()[0] == (
        "the query was stopped: a value passed 16 MiB, the limit on one string or blob "
        "(string or blob too big)"
    )
    assert seconds < 5


MEMORY_PROBE = """
import sys
from actors.agent.tools.base import ToolError
from actors.agent.tools.sql import _run_query

def peak_kib() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

before = peak_kib()
try:
    print(_run_query([], sys.argv[1], 200).splitlines()[-1])
except ToolError as exc:
    print(str(exc).splitlines()[0])
print((peak_kib() - before) // 1024)
"""


@pytest.mark.parametrize(
    ("query", "outcome", "most_mib"),
    [
        ("SELECT length(randomblob(900000000))", "a value passed 16 MiB", 100),
        # Big rows are cut as they come, not kept whole until the end.
        (
            "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 150) "
            "SELECT x, zeroblob(15000000) AS b FROM r",
            "150 rows",
            100,
        ),
        # What SQLite holds at once (here a sort of 1.5 GB) is capped.
        (
            "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r WHERE x < 1500) "
            "SELECT count(*) FROM (SELECT zeroblob(1000000) || x AS b FROM r ORDER BY b)",
            "it needed more than the 512 MiB that sql may use",
            600,
        ),
    ],
)
def test_sql_memory_stays_bounded(query: str, outcome: str, most_mib: int) -> None:
    """The worker's peak RSS, measured in a process of its own, grows by at most ``most_mib`` (before
    the bounds: 860, 2,220 and 1,450 MiB)."""
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, query], capture_output=True, text=True, timeout=60, check=True
    )
    result, growth = done.stdout.splitlines()
    assert outcome in result
    assert int(growth) < most_mib, f"peak RSS grew {growth} MiB"


async def test_sql_runaway_query_is_stopped(ctx: ToolContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sql_module, "SQL_SECONDS", 1.0)
    text, is_error, seconds = await run(sql, ctx, query=RUNAWAY)
    assert is_error, text
    assert text.splitlines()[0] == "the query was stopped after 1 s"
    assert seconds < 5


async def test_a_cancelled_sql_query_stops_its_thread(ctx: ToolContext) -> None:
    """A worker that stops cancels its tool calls, then waits for its threads (``asyncio.run`` does):
    the query ends at once instead of at its deadline."""
    task = asyncio.create_task(sql.run(ctx, {"query": RUNAWAY}))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    start = time.monotonic()
    async with asyncio.timeout(5):
        await asyncio.get_running_loop().shutdown_default_executor()
    assert time.monotonic() - start < 1
