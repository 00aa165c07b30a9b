"""The ``sql`` tool: one read-only SQLite query over the session's CSV, JSON and log files.

The data files are loaded into a database, in a worker thread so the event loop is not blocked. The
built database is kept, as an image (``serialize()``) with its table catalog, under the paths and
digests of the files it was built from (``SQL_CACHE_BYTES``, ``SQL_CACHE_ENTRIES``; a changed file has
a new digest, so a new key): a later call over the same files reads none of them. Every query runs on
a private in-memory copy of the image (``deserialize()``), so no query can affect another.
Read-only is enforced three ways (the first keyword, an authorizer that allows only reads, and
``PRAGMA query_only``). A query is bounded in time (``SQL_SECONDS``, or until its call is cancelled),
in the size of one value (``SQL_VALUE_BYTES``), in the memory SQLite may hold (``SQL_HEAP_BYTES``)
and in the text it keeps (``SQL_RESULT_CHARS``); passing a bound is an ``is_error`` result that
names it.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import re
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec

from actors.agent.tools.base import ToolContext, ToolError, tool
from actors.agent.tools.memory import MOUNT
from actors.agent.tools.sql_cache import BuildCache, Database, Files
from actors.agent.tools.sql_load import catalog, is_data, load, plural
from bus.errors import FileNotFound, MemoryFileNotFound, MemoryStoreNotFound
from bus.memory import Memory
from bus.objects import digest_of
from bus.workspace import Workspace

SQL_CELL_CHARS = 500
SQL_SECONDS = 30.0
SQL_VALUE_BYTES = 16 * 2**20  # one string or blob (SQLITE_LIMIT_LENGTH; SQLite's default is 1 GB)
# What SQLite may allocate in the whole process (PRAGMA hard_heap_limit, set by every query): shared
# by the queries running at once, their loaded tables included (the collector's SQLite is elsewhere).
SQL_HEAP_BYTES = 512 * 2**20
SQL_RESULT_CHARS = 1_000_000  # printed rows kept, beyond which they are counted only
# The built databases kept for later calls, in this process (their images, outside SQLite's heap).
SQL_CACHE_BYTES = 256 * 2**20
SQL_CACHE_ENTRIES = 32


def _table_line(row: Sequence[Any]) -> str:
    return " | ".join(_cell(v) for v in row)


MaxRows = Annotated[int, msgspec.Meta(ge=1, le=10_000, description="Most result rows to print.")]


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


_LEADING = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)
_READ_ONLY = "only a single SELECT (or WITH ... SELECT) query is allowed"
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bytes):
        value = "x'" + value[: SQL_CELL_CHARS // 2 + 1].hex() + "'"
    elif isinstance(value, str):
        value = value[: SQL_CELL_CHARS + 1]
    return cut(str(value).replace("\n", "\\n"), SQL_CELL_CHARS)


def _mib(n: int) -> str:
    return f"{n / 2**20:g} MiB"


_CACHE: BuildCache[Files, Database] = BuildCache(
    max_bytes=SQL_CACHE_BYTES, max_entries=SQL_CACHE_ENTRIES, weigh=lambda db: len(db.image)
)


def _too_big() -> ToolError:
    return ToolError(
        f"the data files do not fit in the {_mib(SQL_HEAP_BYTES)} that sql may use in this worker "
        "(shared by the queries running at once)"
    )


def _build(sources: list[tuple[str, bytes]]) -> Database:
    """Load the data files into a new database and take its image (in a thread)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute(f"PRAGMA hard_heap_limit = {SQL_HEAP_BYTES}")
        tables, skipped = load(conn, sources)
        return Database(image=conn.serialize() if tables else b"", catalog=catalog(tables, skipped))
    except MemoryError as exc:
        raise _too_big() from exc
    finally:
        conn.close()


def _build_and_keep(sources: list[tuple[str, bytes]]) -> Database:
    """:func:`_build`, the database kept under the digests of the bytes read (a file replaced between
    the listing and the read is keyed by what was read)."""
    database = _build(sources)
    _CACHE.put(tuple((path, digest_of(data)) for path, data in sources), database)
    return database


def _check_read_only(query: str) -> None:
    found = _LEADING.match(query)
    verb = re.match(r"[A-Za-z]*", query[found.end() if found else 0 :])
    first = verb.group().upper() if verb else ""
    if first not in ("SELECT", "WITH"):
        what = f"a {first} statement" if first else "an empty query"
        raise ToolError(f"{_READ_ONLY}, not {what}: the workspace's data is read-only")


def _open(database: Database) -> sqlite3.Connection:
    """A new in-memory database holding a copy of ``database``'s (this connection's own)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        conn.execute(f"PRAGMA hard_heap_limit = {SQL_HEAP_BYTES}")
        if database.image:
            conn.deserialize(database.image)  # copied into SQLite's heap
    except MemoryError as exc:
        conn.close()
        raise _too_big() from exc
    return conn


Output = Literal["table", "csv", "markdown", "text"]


def _markdown_line(row: Sequence[Any]) -> str:
    """One Markdown table row: NULL is empty, a pipe is escaped, a line end is a space."""
    cells = ["" if v is None else str(v).replace("|", "\\|").replace("\n", " ") for v in row]
    return "| " + " | ".join(cells) + " |"


def _text_line(row: Sequence[Any]) -> str:
    """A row as text: its values, NULL left out, one space between."""
    return " ".join(str(v) for v in row if v is not None)


def _csv_line(row: Sequence[Any]) -> str:
    """One CSV record, with its line end; NULL is an empty field."""
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(["" if v is None else v for v in row])
    return out.getvalue()


def _query(
    database: Database,
    query: str,
    max_rows: int,
    stop: threading.Event | None = None,
    *,
    output: Output = "table",
) -> str:
    """Run one read-only query on a private copy of ``database`` (in a thread; setting ``stop`` ends
    the query at SQLite's next progress check). The result is a table to read, or in another
    ``output`` every row as CSV, a Markdown table, or text lines (more rows than fit is an error
    there: a file or a report cut short would pass for whole)."""
    conn = _open(database)
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQL_VALUE_BYTES)
        conn.execute("PRAGMA query_only = ON")
        denied: list[int] = []

        def authorize(action: int, *args: Any) -> int:
            if action in _ALLOWED:
                return sqlite3.SQLITE_OK
            if action == sqlite3.SQLITE_UPDATE and args[:1] == ("sqlite_master",):
                # SQLite's own bookkeeping when a query first uses a table-valued function such as
                # json_each (no statement of ours gets here: the first keyword and query_only refuse)
                return sqlite3.SQLITE_OK
            denied.append(action)
            return sqlite3.SQLITE_DENY

        conn.set_authorizer(authorize)
        deadline = time.monotonic() + SQL_SECONDS
        stopped = stop or threading.Event()
        conn.set_progress_handler(lambda: stopped.is_set() or time.monotonic() > deadline, 10_000)
        try:
            cursor = conn.execute(query)
            header = [d[0] for d in cursor.description or ()]
            lines: list[str] = []  # the printed rows, cut as they come: a big result is only counted
            size = 0
            count = 0
            for row in cursor:
                count += 1
                if count <= max_rows and size < SQL_RESULT_CHARS:  # both only grow: a prefix is kept
                    lines.append(_FORMATS[output](row))
                    size += len(lines[-1]) + 1
        except (sqlite3.Error, MemoryError) as exc:
            if denied:
                message = f"the query was refused: {_READ_ONLY}, the workspace's data is read-only"
            elif "one statement" in str(exc):
                message = "only one statement at a time is allowed"
            elif stopped.is_set():
                message = "the query was cancelled"
            elif time.monotonic() > deadline:
                message = f"the query was stopped after {SQL_SECONDS:g} s"
            elif isinstance(exc, MemoryError):
                message = (
                    f"the query was stopped: it needed more than the {_mib(SQL_HEAP_BYTES)} that sql may use "
                    "in this worker (shared by the queries running at once); aggregate, filter or LIMIT it"
                )
            elif "too big" in str(exc):
                message = (
                    f"the query was stopped: a value passed {_mib(SQL_VALUE_BYTES)}, "
                    f"the limit on one string or blob ({exc})"
                )
            else:
                message = f"SQL error: {exc}"
            raise ToolError(f"{message}\n{database.catalog}") from exc
    finally:
        conn.close()
    if output != "table":
        if count > len(lines):
            raise ToolError(
                f"the result has {plural(count, 'row', 'rows')}, more than the {len(lines)} a {output} "
                "result may hold here (max_rows, and 1,000,000 characters): aggregate, filter or LIMIT it"
            )
        if output == "csv":
            return _csv_line(header) + "".join(lines)
        if output == "markdown":
            return "\n".join([_markdown_line(header), "|" + " --- |" * len(header), *lines])
        return "\n".join(lines)
    out = [" | ".join(header), *lines, ""]
    summary = plural(count, "row", "rows")
    out.append(summary + (f" (showing the first {len(lines)})" if count > len(lines) else ""))
    return "\n".join(out)


def _run_query(
    sources: list[tuple[str, bytes]], query: str, max_rows: int, stop: threading.Event | None = None
) -> str:
    """Load the data files into a new database, not cached, and run one read-only query on it."""
    _check_read_only(query)
    return _query(_build(sources), query, max_rows, stop)


_FORMATS = {"table": _table_line, "csv": _csv_line, "markdown": _markdown_line, "text": _text_line}


@tool
async def sql(ctx: ToolContext, *, query: str, max_rows: MaxRows = 200, format: Output = "table") -> str:
    """Run one read-only SQL query (SQLite) over the data files of the session's workspace.

    Every .csv, .json (an array of objects, or an object holding one) and .jsonl/.ndjson file is a table
    named after its file: data/metrics.csv is `metrics` (when two files share a name, both are named by
    path: `data_metrics`). Column names are kept when they are identifiers, else made into ones. CSV
    columns are INTEGER, REAL or TEXT as their values allow, empty values are NULL; nested JSON values
    are JSON text (use json_extract). A .log or .txt file is a table of its lines (line, text); a SQLite
    database (.sqlite, .db) brings its own tables; the data files of the memory stores attached to
    the agent (/memory/<store>/...) are tables too. A folder of
    files with the same columns is also one table named after the folder, with their path first:
    builds/jenkins/*.log is `jenkins` (path, line, text). Only a single SELECT or WITH ... SELECT is
    allowed. The result is a table (columns separated by " | ") and its row count; with format "csv"
    the rows as CSV with a header, "markdown" a Markdown table, "text" each row's values as one line
    (to write to a file or a report as they are); an error lists the tables and their columns.
    """
    _check_read_only(query)
    database = await _database(ctx.workspace, ctx.session_id, [a.store for a in ctx.memory.values()])
    stop = threading.Event()
    try:
        return await asyncio.to_thread(_query, database, query, max_rows, stop, output=format)
    except asyncio.CancelledError:
        stop.set()  # the thread would otherwise run on until the deadline
        raise


async def _database(workspace: Workspace, session_id: str, stores: Sequence[str] = ()) -> Database:
    """The session's data files, and those of the memory ``stores`` (as ``/memory/<store>/<path>``),
    as a database: the one kept for these files, or built now."""
    listed = [(info.path, info.digest) for info in await workspace.list(session_id) if is_data(info.path)]
    memory = Memory(workspace.bus)
    for store in stores:
        try:
            entries = await memory.list(store)
        except MemoryStoreNotFound:
            continue  # attached but gone: its tables are missing, the rest still answer
        listed += [(f"{MOUNT}{store}/{e.path}", f"sha256={e.sha256}") for e in entries if is_data(e.path)]
    files = tuple(sorted(listed))

    async def read_and_build() -> Database:
        sources: list[tuple[str, bytes]] = []
        for path, _ in files:
            with contextlib.suppress(FileNotFound, MemoryFileNotFound):  # deleted since the listing
                if path.startswith(MOUNT):
                    store, _, inner = path[len(MOUNT) :].partition("/")
                    sources.append((path, (await memory.read(store, inner)).content.encode()))
                else:
                    sources.append((path, await workspace.get(session_id, path)))
        return await asyncio.to_thread(_build_and_keep, sources)

    return await _CACHE.get_or_build(files, read_and_build)


async def query_number(workspace: Workspace, session_id: str, query: str) -> float:
    """The number in the first column of the first row of one read-only query over the session's data
    files, under the ``sql`` tool's rules and bounds (an outcome's ``sql_number`` check).
    :class:`ToolError` if the query fails, returns no row, or its value is not a number."""
    _check_read_only(query)
    database = await _database(workspace, session_id)
    text = await asyncio.to_thread(_query, database, query, 1, None, output="csv")
    found = list(csv.reader(io.StringIO(text)))
    if len(found) < 2 or not found[1]:
        raise ToolError("the query returned no row")
    try:
        return float(found[1][0])
    except ValueError:
        raise ToolError(f"the query's value {found[1][0]!r} is not a number") from None
