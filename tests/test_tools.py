"""The workspace tools, run the way an agent runs them (``Tool.run``) on a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import sqlite3
from typing import Any

import pytest

from actors.agent.tools import sql as sql_module
from actors.agent.tools.base import MAX_OUTPUT, Tool, ToolContext
from actors.agent.tools.sql import sql
from actors.agent.tools.sql_cache import BuildCache, Database, Files
from actors.agent.tools.workspace import WORKSPACE_TOOLS, grep, list_files, read_file, write_file
from bus.connection import Bus
from bus.workspace import Workspace
from schemas import Provenance
from tests.helpers import tool_context

SID = "ses_t"

METRICS_CSV = (
    "service,latency ms,status,region\n"
    "api,120,200,eu\n"
    "api,340,502,eu\n"
    "db,15,200,\n"
    "api,98.5,200,us\n"
    "db,22,500,us\n"
)
SERVICES_JSON = {
    "services": [{"name": "api", "team": "web", "tags": ["edge", "public"]}, {"name": "db", "team": "data"}]
}


@pytest.fixture
def ctx(bus: Bus) -> ToolContext:
    return tool_context(bus, SID)


async def ok(tool: Tool, ctx: ToolContext, **arguments: Any) -> str:
    result = await tool.run(ctx, arguments)
    assert not result.is_error, result.content
    assert result.tool_use_id == "toolu_1"
    return result.content


async def error(tool: Tool, ctx: ToolContext, **arguments: Any) -> str:
    result = await tool.run(ctx, arguments)
    assert result.is_error, result.content
    return result.content


def test_tools_are_exported_with_schemas() -> None:
    assert set(WORKSPACE_TOOLS) == {"list_files", "read_file", "write_file", "grep", "sql"}
    schema = read_file.input_schema
    assert schema["required"] == ["path"]
    assert schema["properties"]["offset"]["minimum"] == 0
    assert schema["properties"]["limit"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 10_000,
        "default": 2000,
        "description": "Most lines to return (1 to 10000).",
    }
    assert "cat -n" in read_file.description


async def test_list_files(ctx: ToolContext) -> None:
    assert await ok(list_files, ctx) == "the workspace is empty"
    await ctx.workspace.put(SID, "notes/b.md", "bb")
    await ctx.workspace.put(SID, "notes/a.md", "a" * 1200)
    await ctx.workspace.put(SID, "report.md", "")
    await ctx.workspace.put("ses_other", "secret.md", "not yours")
    assert await ok(list_files, ctx) == (
        "1200  notes/a.md\n   2  notes/b.md\n   0  report.md\n3 files, 1202 bytes"
    )
    assert (
        await ok(list_files, ctx, prefix="notes/")
        == "1200  notes/a.md\n   2  notes/b.md\n2 files, 1202 bytes"
    )
    assert await ok(list_files, ctx, prefix="logs/") == "no files under 'logs/'"


async def test_write_file_records_provenance(ctx: ToolContext) -> None:
    text = "# 502s\nfrom payments ✓\n"
    assert await ok(write_file, ctx, path="./notes/a.md", content=text) == (
        f"wrote {len(text.encode())} bytes to notes/a.md"
    )
    assert await ctx.workspace.read_text(SID, "notes/a.md") == text
    stat = await ctx.workspace.stat(SID, "notes/a.md")
    assert stat.provenance == Provenance(
        session_id=SID, thread_id="thr_1", agent="logs", tool_call_id="toolu_1"
    )


async def test_read_file_numbers_lines_like_cat_n(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "a.txt", "first\r\nsecond\n\nfourth")
    assert await ok(read_file, ctx, path="a.txt") == (
        "     1\tfirst\n     2\tsecond\n     3\t\n     4\tfourth"
    )
    await ctx.workspace.put(SID, "empty.txt", "")
    assert await ok(read_file, ctx, path="empty.txt") == "empty.txt is empty"


async def test_read_file_pages_with_offset_and_limit(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "log.txt", "".join(f"line {n}\n" for n in range(1, 11)))
    page = await ok(read_file, ctx, path="log.txt", limit=4)
    assert page == (
        "     1\tline 1\n     2\tline 2\n     3\tline 3\n     4\tline 4\n\n"
        "(lines 1-4 of 10; continue with offset=4)"
    )
    page = await ok(read_file, ctx, path="log.txt", offset=4, limit=4)
    assert page.splitlines()[0] == "     5\tline 5"
    assert page.endswith("(lines 5-8 of 10; continue with offset=8)")
    last = await ok(read_file, ctx, path="log.txt", offset=8, limit=4)
    assert last == "     9\tline 9\n    10\tline 10"  # the end: no note
    assert await error(read_file, ctx, path="log.txt", offset=10) == (
        "offset 10 is past the end of 'log.txt', which has 10 lines"
    )


async def test_read_file_replaces_undecodable_bytes(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "blob.bin", b"ok\n\xff\xfe\x00bin\xc3")
    assert await ok(read_file, ctx, path="blob.bin") == "     1\tok\n     2\t\ufffd\ufffd\x00bin\ufffd"


async def test_read_file_near_the_end_of_a_big_file(bus: Bus, ctx: ToolContext) -> None:
    # Small chunks, so lines and multi-byte characters straddle chunk boundaries.
    ctx.workspace = Workspace(bus, chunk_size=4096)
    text = "".join(f"entry {n:05d} é {'x' * (n % 40)}\n" for n in range(1, 50_001))
    await ctx.workspace.put(SID, "big.log", text)
    page = await ok(read_file, ctx, path="big.log", offset=49_990, limit=5)
    lines = page.splitlines()
    assert lines[0] == f" 49991\tentry 49991 é {'x' * (49_991 % 40)}"
    assert lines[4].startswith(" 49995\tentry 49995 é")
    assert lines[-1] == "(lines 49991-49995 of 50000; continue with offset=49995)"
    tail = await ok(read_file, ctx, path="big.log", offset=49_995)
    assert len(tail.splitlines()) == 5
    assert tail.splitlines()[-1].startswith(" 50000\tentry 50000 é")


@pytest.mark.parametrize(
    ("tool", "arguments", "field"),
    [
        (read_file, {"path": 3}, "$.path"),
        (read_file, {"path": "a.txt", "offset": -1}, "$.offset"),
        (read_file, {"path": "a.txt", "limit": 0}, "$.limit"),
        (read_file, {"path": "a.txt", "offset": "10"}, "$.offset"),
        (read_file, {"path": "a.txt", "lines": 5}, "lines"),
        (read_file, {}, "path"),
        (write_file, {"path": "a.txt"}, "content"),
        (grep, {"pattern": "x", "max_matches": 0}, "$.max_matches"),
        (sql, {"query": "SELECT 1", "rows": 5}, "rows"),
    ],
)
async def test_bad_arguments_name_the_field(
    ctx: ToolContext, tool: Tool, arguments: dict[str, Any], field: str
) -> None:
    message = await error(tool, ctx, **arguments)
    assert message.startswith(f"invalid input for {tool.name}:")
    assert field in message


@pytest.mark.parametrize("path", ["../x", "notes/../../x", "/etc/passwd"])
async def test_paths_cannot_escape_the_workspace(ctx: ToolContext, path: str) -> None:
    for tool, arguments in ((read_file, {}), (write_file, {"content": "x"})):
        message = await error(tool, ctx, path=path, **arguments)
        assert f"invalid workspace path {path!r}" in message


@pytest.mark.parametrize("tool", [grep, list_files])
async def test_prefixes_stay_in_the_workspace(ctx: ToolContext, tool: Tool) -> None:
    pattern = {"pattern": "x"} if tool is grep else {}
    message = await error(tool, ctx, prefix="../x", **pattern)
    assert message == "invalid workspace path '../x': it escapes the workspace ('..' is not allowed)"
    # A leading '/' means the workspace's root: this is the workspace's etc/passwd.
    assert await ok(tool, ctx, prefix="/etc/passwd", **pattern) == "no files under '/etc/passwd'"


async def test_read_file_missing(ctx: ToolContext) -> None:
    assert await error(read_file, ctx, path="nope.md") == (
        "no file 'nope.md' in the workspace of session 'ses_t'"
    )


async def test_grep_line_numbers_and_counts(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "logs/a.log", "ok\nERROR one\nok\nerror two\n" + "x" * 500 + "ERROR\n")
    await ctx.workspace.put(SID, "logs/b.log", "ERROR three")
    await ctx.workspace.put(SID, "notes.md", "ERROR elsewhere\n")
    out = await ok(grep, ctx, pattern=r"ERROR \w+|x+ERROR", prefix="logs/")
    assert out.splitlines() == [
        "logs/a.log:2: ERROR one",
        f"logs/a.log:5: {'x' * 300}…",
        "logs/b.log:1: ERROR three",
        "",
        "matches per file:",
        "  logs/a.log: 2",
        "  logs/b.log: 1",
        "3 matches in 2 files",
    ]
    out = await ok(grep, ctx, pattern="error t", ignore_case=True)
    assert out.splitlines()[:2] == ["logs/a.log:4: error two", "logs/b.log:1: ERROR three"]
    assert out.endswith("2 matches in 2 files")
    assert await ok(grep, ctx, pattern="nothing") == "no matches for 'nothing' in 3 files"


async def test_grep_counts_are_exact_beyond_max_matches(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "a.log", "hit\nmiss\n" * 1500)
    await ctx.workspace.put(SID, "b.log", "hit\n" * 7)
    out = await ok(grep, ctx, pattern="^hit$", max_matches=3)
    assert out.splitlines() == [
        "a.log:1: hit",
        "a.log:3: hit",
        "a.log:5: hit",
        "",
        "matches per file:",
        "  a.log: 1500",
        "  b.log: 7",
        "1507 matches in 2 files (showing the first 3)",
    ]


async def test_grep_invalid_regex(ctx: ToolContext) -> None:
    message = await error(grep, ctx, pattern="(unclosed")
    assert (
        message == "invalid regular expression '(unclosed': missing ), unterminated subpattern at position 0"
    )


async def test_big_output_is_spilled_to_the_workspace(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "big.log", "".join(f"request {n} failed with 502\n" for n in range(20_000)))
    result = await grep.run(ctx, {"pattern": "502", "max_matches": 2000})
    assert not result.is_error
    assert len(result.content) < MAX_OUTPUT
    assert "the full output is in the workspace at tool-outputs/toolu_1.txt" in result.content
    full = await ctx.workspace.read_text(SID, "tool-outputs/toolu_1.txt")
    assert len(full) > MAX_OUTPUT
    assert full.startswith("big.log:1: request 0 failed with 502\n")
    assert full.endswith("20000 matches in 1 file (showing the first 2000)")
    # The spilled output is not searched again unless asked for.
    assert (await ok(grep, ctx, pattern="request 0 ")).endswith("1 match in 1 file")
    assert (await ok(grep, ctx, pattern="request 0 ", prefix="tool-outputs/")).endswith("1 match in 1 file")


async def put_data(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "data/metrics.csv", METRICS_CSV)
    await ctx.workspace.put(SID, "services.json", json.dumps(SERVICES_JSON))


async def test_sql_group_by_over_csv(ctx: ToolContext) -> None:
    await put_data(ctx)
    out = await ok(
        sql,
        ctx,
        query="SELECT service, COUNT(*) AS n, MAX(latency_ms) AS worst FROM metrics "
        "GROUP BY service ORDER BY n DESC",
    )
    assert out == "service | n | worst\napi | 3 | 340.0\ndb | 2 | 22.0\n\n2 rows"
    out = await ok(sql, ctx, query="SELECT typeof(status), count(*) FROM metrics WHERE region IS NULL")
    assert out == "typeof(status) | count(*)\ninteger | 1\n\n1 row"


async def test_sql_json_files(ctx: ToolContext) -> None:
    await put_data(ctx)
    await ctx.workspace.put(
        SID, "events.jsonl", '{"id": 1, "ok": true}\n\n{"id": 2, "ok": false, "extra": 1.5}\n'
    )
    await ctx.workspace.put(SID, "plain.json", json.dumps([{"a": 1}, {"a": None}]))
    out = await ok(sql, ctx, query="SELECT name, team, tags, json_extract(tags, '$[0]') FROM services")
    assert out.splitlines() == [
        "name | team | tags | json_extract(tags, '$[0]')",
        'api | web | ["edge","public"] | edge',
        "db | data | NULL | NULL",
        "",
        "2 rows",
    ]
    assert await ok(sql, ctx, query="SELECT id, ok, extra FROM events") == (
        "id | ok | extra\n1 | 1 | NULL\n2 | 0 | 1.5\n\n2 rows"
    )
    assert await ok(sql, ctx, query="SELECT count(a) FROM plain") == "count(a)\n1\n\n1 row"


async def test_sql_join_across_files(ctx: ToolContext) -> None:
    await put_data(ctx)
    out = await ok(
        sql,
        ctx,
        query="""
            -- errors per team
            WITH errors AS (SELECT service FROM metrics WHERE status >= 500)
            SELECT s.team, COUNT(*) FROM errors e JOIN services s ON s.name = e.service
            GROUP BY s.team ORDER BY 1
        """,
    )
    assert out == "team | COUNT(*)\ndata | 1\nweb | 1\n\n2 rows"


async def test_sql_names_clashing_tables_and_odd_columns(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "data/metrics.csv", "a\n1\n")
    await ctx.workspace.put(SID, "old/metrics.csv", "a\n2\n")
    await ctx.workspace.put(SID, "2024 report.csv", 'x,x,"weird ""col""",,select\n1,2,3,4,5\n')
    await ctx.workspace.put(SID, "notes.json", '{"not": "rows"}')
    message = await error(sql, ctx, query="SELECT * FROM nope")
    assert message.splitlines() == [
        "SQL error: no such table: nope",
        "tables:",
        "  t_2024_report (2024 report.csv, 1 row): x INTEGER, x_2 INTEGER, weird_col INTEGER, c4 INTEGER, "
        "select INTEGER",
        "  data_metrics (data/metrics.csv, 1 row): a INTEGER",
        "  old_metrics (old/metrics.csv, 1 row): a INTEGER",
        "  notes.json: skipped, an object holding no array of objects",
    ]
    out = await ok(
        sql, ctx, query='SELECT d.a, o.a, "select" FROM data_metrics d, old_metrics o, t_2024_report'
    )
    assert out == "a | a | select\n1 | 2 | 5\n\n1 row"


async def test_sql_log_files_are_lines_and_a_folder_of_alike_files_is_one_table(ctx: ToolContext) -> None:
    for n in (1, 2):
        await ctx.workspace.put(SID, f"builds/ci/b-{n}.log", f"step one\r\nstep two: exit {n}\n")
    await ctx.workspace.put(SID, "builds/ci/summary.csv", "build,ok\nb-1,1\n")  # other columns: alone
    await ctx.workspace.put(SID, "exports/day-1.csv", "n,v\n1,x\n")
    await ctx.workspace.put(SID, "exports/day-2.csv", "n,v\n2,2.5\n")  # v is TEXT in one, REAL here
    await ctx.workspace.put(SID, "exports/odd.csv", "n\n3\n")
    out = await ok(sql, ctx, query="SELECT path, line, text FROM ci WHERE text LIKE '%exit%' ORDER BY path")
    assert (
        out == "path | line | text\nbuilds/ci/b-1.log | 2 | step two: exit 1\n"
        "builds/ci/b-2.log | 2 | step two: exit 2\n\n2 rows"
    )
    assert await ok(sql, ctx, query="SELECT COUNT(*) AS n FROM b_1") == "n\n2\n\n1 row"  # each file too
    assert await ok(sql, ctx, query="SELECT path, n, v FROM exports ORDER BY n") == (
        "path | n | v\nexports/day-1.csv | 1 | x\nexports/day-2.csv | 2 | 2.5\n\n2 rows"
    )
    message = await error(sql, ctx, query="SELECT * FROM nope")
    assert message.splitlines()[1:] == [
        "tables:",
        "  summary (builds/ci/summary.csv, 1 row): build TEXT, ok INTEGER",
        "  odd (exports/odd.csv, 1 row): n INTEGER",
        "  ci (the 2 files in builds/ci/, each also a table of its own: b_1, b_2, ...; 4 rows): path TEXT, "
        "line INTEGER, text TEXT",
        "  exports (the 2 files in exports/, each also a table of its own: day_1, day_2, ...; 2 rows): "
        "path TEXT, n INTEGER, v",
    ]


async def test_sql_table_valued_json_functions(ctx: ToolContext) -> None:
    await ctx.workspace.put(
        SID, "news.jsonl", '{"domain": "a.com", "news": [{"kind": "funding"}, {"kind": "hiring"}]}\n'
    )
    out = await ok(
        sql,
        ctx,
        query="SELECT n.domain, json_extract(j.value, '$.kind') AS kind "
        "FROM news AS n, json_each(n.news) AS j",
    )
    assert out == "domain | kind\na.com | funding\na.com | hiring\n\n2 rows"


async def test_sql_a_sqlite_database_brings_its_tables(ctx: ToolContext) -> None:
    book = sqlite3.connect(":memory:")
    book.execute(
        "CREATE TABLE journal (entry_id INTEGER PRIMARY KEY, account VARCHAR(20), amount NUMERIC(12,2))"
    )
    book.execute("CREATE TABLE metrics (k TEXT)")  # a name a CSV file takes too
    book.executemany("INSERT INTO journal VALUES (?, ?, ?)", [(1, "revenue", 120.5), (2, "revenue", 79.5)])
    book.execute("CREATE VIEW totals AS SELECT SUM(amount) FROM journal")
    await ctx.workspace.put(SID, "finance/ledger.sqlite", book.serialize())
    await ctx.workspace.put(SID, "metrics.csv", "service\napi\n")
    await ctx.workspace.put(SID, "broken.db", b"not a database at all")
    out = await ok(sql, ctx, query="SELECT account, SUM(amount) AS total FROM journal GROUP BY account")
    assert out == "account | total\nrevenue | 200.0\n\n1 row"
    message = await error(sql, ctx, query="SELECT * FROM totals")
    assert message.splitlines()[1:] == [
        "tables:",
        "  journal (finance/ledger.sqlite: journal, 2 rows): entry_id INTEGER, account TEXT, amount",
        "  ledger_metrics (finance/ledger.sqlite: metrics, 0 rows): k TEXT",
        "  metrics (metrics.csv, 1 row): service TEXT",
        "  broken.db: skipped, not a SQLite database: file is not a database",
    ]


async def test_sql_csv_results_are_whole_or_an_error(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "n.csv", 'n,label\n1,a\n2,"b, c"\n3,\n')
    out = await ok(sql, ctx, query="SELECT n, label FROM n ORDER BY n", format="csv")
    assert out == 'n,label\n1,a\n2,"b, c"\n3,\n'  # NULL is an empty field
    message = await error(sql, ctx, query="SELECT n FROM n", format="csv", max_rows=2)
    assert message.startswith("the result has 3 rows, more than the 2 a csv result may hold here")
    markdown = await ok(sql, ctx, query="SELECT n, label FROM n ORDER BY n", format="markdown")
    assert markdown == "| n | label |\n| --- | --- |\n| 1 | a |\n| 2 | b, c |\n| 3 |  |"
    text = await ok(sql, ctx, query="SELECT 'row', n, label FROM n ORDER BY n", format="text")
    assert text == "row 1 a\nrow 2 b, c\nrow 3"


async def test_sql_max_rows_and_exact_count(ctx: ToolContext) -> None:
    await ctx.workspace.put(SID, "n.csv", "n\n" + "".join(f"{i}\n" for i in range(1000)))
    out = await ok(sql, ctx, query="SELECT n FROM n ORDER BY n", max_rows=2)
    assert out == "n\n0\n1\n\n1000 rows (showing the first 2)"


@pytest.mark.parametrize(
    "query",
    [
        "INSERT INTO metrics VALUES ('x', 1, 200, 'eu')",
        "DROP TABLE metrics",
        "ATTACH DATABASE '/tmp/x.db' AS x",
        "PRAGMA query_only = OFF",
        "/* hidden */ delete from metrics",
        "WITH x AS (SELECT 1) INSERT INTO metrics SELECT 'x', 1, 200, 'eu' FROM x",
        "WITH x AS (SELECT 1) UPDATE metrics SET status = 0",
        "SELECT 1; DROP TABLE metrics",
        "   ",
    ],
)
async def test_sql_refuses_anything_but_one_select(ctx: ToolContext, query: str) -> None:
    await put_data(ctx)
    message = await error(sql, ctx, query=query)
    assert "allowed" in message
    assert await ok(sql, ctx, query="SELECT COUNT(*) FROM metrics") == "COUNT(*)\n5\n\n1 row"


async def test_sql_syntax_error_lists_the_tables(ctx: ToolContext) -> None:
    await put_data(ctx)
    message = await error(sql, ctx, query="SELECT service FROM metrics WHERE")
    assert message.splitlines() == [
        "SQL error: incomplete input",
        "tables:",
        "  metrics (data/metrics.csv, 5 rows): service TEXT, latency_ms REAL, status INTEGER, region TEXT",
        "  services (services.json, 2 rows): name TEXT, team TEXT, tags TEXT",
    ]
    assert await error(sql, ctx, query="SELEC 1") == (
        "only a single SELECT (or WITH ... SELECT) query is allowed, not a SELEC statement: "
        "the workspace's data is read-only"
    )


async def test_sql_with_no_data_files(ctx: ToolContext) -> None:
    assert await ok(sql, ctx, query="SELECT 1 + 1 AS two") == "two\n2\n\n1 row"
    assert await error(sql, ctx, query="SELECT * FROM t") == (
        "SQL error: no such table: t\n"
        "no tables: the workspace has no data files "
        "(.csv, .json, .jsonl, .ndjson, .log, .txt, .sqlite, .sqlite3, .db)"
    )


# --- sql: the built databases are kept, keyed by the files' digests -----------------------------------


class CountingWorkspace(Workspace):
    """The workspace, recording the files read whole."""

    def __init__(self, bus: Bus) -> None:
        super().__init__(bus)
        self.reads: list[str] = []

    async def get(self, session_id: str, path: str) -> bytes:
        self.reads.append(path)
        return await super().get(session_id, path)


@pytest.fixture
def counting(ctx: ToolContext) -> ToolContext:
    return dataclasses.replace(ctx, workspace=CountingWorkspace(ctx.bus))


def reads(ctx: ToolContext) -> list[str]:
    assert isinstance(ctx.workspace, CountingWorkspace)
    return ctx.workspace.reads


@pytest.fixture
def cache(monkeypatch: pytest.MonkeyPatch) -> BuildCache[Files, Database]:
    """An empty cache of this test's own (the module's is shared by every test of the process)."""
    fresh: BuildCache[Files, Database] = BuildCache(
        max_bytes=sql_module.SQL_CACHE_BYTES,
        max_entries=sql_module.SQL_CACHE_ENTRIES,
        weigh=lambda db: len(db.image),
    )
    monkeypatch.setattr(sql_module, "_CACHE", fresh)
    return fresh


async def count_metrics(ctx: ToolContext) -> str:
    return await ok(sql, ctx, query="SELECT COUNT(*) AS n FROM metrics")


async def test_sql_reads_and_loads_the_same_files_once(
    counting: ToolContext, cache: BuildCache[Files, Database]
) -> None:
    await put_data(counting)
    assert await count_metrics(counting) == "n\n5\n\n1 row"
    assert sorted(reads(counting)) == ["data/metrics.csv", "services.json"]
    await counting.workspace.put(SID, "notes.md", "not data")  # not a table: the same database
    out = await ok(sql, counting, query="SELECT team FROM services ORDER BY team")
    assert out == "team\ndata\nweb\n\n2 rows"
    other = dataclasses.replace(counting, session_id="ses_other")  # the same files elsewhere
    await other.workspace.put(other.session_id, "data/metrics.csv", METRICS_CSV)
    await other.workspace.put(other.session_id, "services.json", json.dumps(SERVICES_JSON))
    assert await count_metrics(other) == "n\n5\n\n1 row"
    assert sorted(reads(counting)) == ["data/metrics.csv", "services.json"]
    assert cache.builds == 1


async def test_sql_concurrent_calls_load_the_files_once(
    counting: ToolContext, cache: BuildCache[Files, Database]
) -> None:
    await put_data(counting)
    outs = await asyncio.gather(*(count_metrics(counting) for _ in range(4)))
    assert outs == ["n\n5\n\n1 row"] * 4
    assert sorted(reads(counting)) == ["data/metrics.csv", "services.json"]
    assert cache.builds == 1


async def test_sql_a_changed_file_is_loaded_again(
    counting: ToolContext, cache: BuildCache[Files, Database]
) -> None:
    await put_data(counting)
    assert await count_metrics(counting) == "n\n5\n\n1 row"
    await counting.workspace.put(SID, "data/metrics.csv", "service,status\napi,200\n")
    assert await count_metrics(counting) == "n\n1\n\n1 row"
    assert await ok(sql, counting, query="SELECT status FROM metrics") == "status\n200\n\n1 row"
    await counting.workspace.put(SID, "data/metrics.csv", METRICS_CSV)  # back as it was: kept
    assert await count_metrics(counting) == "n\n5\n\n1 row"
    await counting.workspace.delete(SID, "services.json")
    message = await error(sql, counting, query="SELECT * FROM services")
    assert message.splitlines()[0] == "SQL error: no such table: services"
    assert reads(counting).count("data/metrics.csv") == 3  # not when it came back
    assert cache.builds == 3


async def test_sql_queries_cannot_change_the_kept_database(
    ctx: ToolContext, cache: BuildCache[Files, Database]
) -> None:
    await put_data(ctx)
    assert await count_metrics(ctx) == "n\n5\n\n1 row"
    files = tuple((info.path, info.digest) for info in await ctx.workspace.list(SID))
    database = cache.get(files)  # kept under the digests the workspace lists
    assert database is not None
    image = hashlib.sha256(database.image).hexdigest()
    for query in [
        "DELETE FROM metrics",
        "WITH x AS (SELECT 1) UPDATE metrics SET status = 0",
        "PRAGMA query_only = OFF",
        "SELECT 1; DROP TABLE metrics",
    ]:
        assert "allowed" in await error(sql, ctx, query=query)
    # Each query has a copy of its own: what is done to one (here with no guard), the next does not see.
    conn = sql_module._open(database)
    try:
        conn.execute("DELETE FROM metrics")
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone() == (0,)
    finally:
        conn.close()
    assert await count_metrics(ctx) == "n\n5\n\n1 row"
    assert hashlib.sha256(database.image).hexdigest() == image
    assert cache.builds == 1


async def test_sql_cache_stays_within_its_bounds(
    counting: ToolContext, cache: BuildCache[Files, Database]
) -> None:
    async def query_version(v: int) -> None:  # versions of one file: as big, each a database of its own
        await counting.workspace.put(SID, "n.csv", "n,v\n" + "".join(f"{i},{v}\n" for i in range(500)))
        assert await ok(sql, counting, query="SELECT MAX(v) AS v FROM n") == f"v\n{v}\n\n1 row"

    await query_version(1)
    one = cache.bytes
    assert one > 0
    cache.max_bytes = 2 * one  # room for two
    for v in range(2, 7):
        await query_version(v)
        assert cache.bytes <= cache.max_bytes
        assert len(cache) <= 2
    assert (cache.bytes, len(cache), cache.builds) == (2 * one, 2, 6)
    await query_version(6)  # the newest is kept
    assert cache.builds == 6
    await query_version(1)  # the oldest was dropped: loaded again
    assert (cache.builds, len(cache), cache.bytes) == (7, 2, 2 * one)
    cache.max_entries = 1
    await query_version(2)
    assert (cache.builds, len(cache), cache.bytes) == (8, 1, one)
    cache.max_bytes = one - 1  # too big to keep at all: used, not kept (and the others dropped)
    await query_version(3)
    await query_version(3)
    assert (cache.builds, len(cache), cache.bytes) == (10, 0, 0)


def test_grep_scanning_whole_blocks_finds_exactly_the_lines_searching_each_line_finds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """grep runs RE2 over a whole block and searches only the lines where a match starts; matches
    that span lines, anchors, CRLF, invalid UTF-8 and mostly-matching blocks must change nothing."""
    import random

    from actors.agent.tools import workspace as ws_tools

    monkeypatch.setattr(ws_tools, "_DENSE", 3)  # reach the line-at-a-time switch in small blocks
    rng = random.Random(7)
    words = ["ERROR", "error", "a", "b", "ab", "\r", "é", "  ", "1234", "", "\ufffd", "x y"]
    patterns = [
        r"ERROR",
        r"^ERROR",
        r"ERROR$",
        r"a[^z]*b",
        r"a\s+b",
        r"x*",
        r"^$",
        r".",
        r"a.b",
        r"\pL+$",
        r"(?i)error",
        r"\bab\b",
        r"\Aab",
        r"ab\z",
        "\ufffd",
    ]
    for _ in range(600):
        lines = [
            "".join(rng.choice(words) for _ in range(rng.randint(0, 5))) for _ in range(rng.randint(1, 20))
        ]
        block = rng.choice(["\n", "\r\n"]).join(lines).encode()
        if rng.random() < 0.2:
            block = block.replace(b"a", b"a\xff", 1)
        for pattern in patterns:
            for ignore_case in (False, True):
                regex = ws_tools._compile(pattern, ignore_case)
                scan = ws_tools._scanner(pattern, ignore_case)
                assert ws_tools._search(regex, block, scan) == ws_tools._search(regex, block), (
                    pattern,
                    block,
                )
