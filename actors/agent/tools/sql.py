"""The ``sql`` tool: one read-only SQLite query over the session's CSV and JSON files.

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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat, zip_longest
from pathlib import PurePosixPath
from typing import Annotated, Any

import msgspec

from actors.agent.tools.base import ToolContext, ToolError, tool
from actors.agent.tools.sql_cache import BuildCache, Database, Files, digest
from bus.errors import FileNotFound

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

MaxRows = Annotated[int, msgspec.Meta(ge=1, le=10_000, description="Most result rows to print.")]


def cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


_DATA_KINDS = {".csv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LEADING = re.compile(r"(?:\s+|--[^\n]*|/\*.*?\*/)*", re.DOTALL)
_READ_ONLY = "only a single SELECT (or WITH ... SELECT) query is allowed"
_INT64 = range(-(2**63), 2**63)
_ALLOWED = {sqlite3.SQLITE_SELECT, sqlite3.SQLITE_READ, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_RECURSIVE}
_JSON = msgspec.json.Decoder()
_PLAIN = {str, float, int, type(None)}  # JSON values stored as they are (ints if int64)


class _Skip(Exception):
    """A data file that cannot become a table (the reason is the message)."""


@dataclass
class _Table:
    name: str
    path: str
    columns: list[tuple[str, str]]  # (name, declared type)
    rows: int

    def describe(self) -> str:
        columns = ", ".join(f"{name} {kind}".rstrip() for name, kind in self.columns)
        return f"  {self.name} ({self.path}, {plural(self.rows, 'row', 'rows')}): {columns}"


def _identifier(text: str, fallback: str) -> str:
    """``text`` with each run of other characters than ASCII letters, digits and ``_`` made one ``_``."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_") or fallback
    if name[0].isdigit() or name.lower().startswith("sqlite_"):
        name = f"{fallback}_{name}"
    return name


def _table_names(paths: Sequence[str]) -> dict[str, str]:
    """``data/metrics.csv`` → ``metrics``; files whose names clash are named by path (``data_metrics``)."""
    stems = {path: _identifier(PurePosixPath(path).stem, "t") for path in paths}
    seen = Counter(stem.lower() for stem in stems.values())
    names: dict[str, str] = {}
    taken: set[str] = set()
    for path in sorted(paths):
        name = stems[path]
        if seen[name.lower()] > 1:
            name = _identifier(path.rsplit(".", 1)[0], "t")
        if name.lower() in taken:
            name = _identifier(path, "t")
        base, n = name, 2
        while name.lower() in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name.lower())
        names[path] = name
    return names


def _column_names(raw: Sequence[str]) -> list[str]:
    """Valid identifiers stay as they are; others are sanitised; duplicates get ``_2``, ``_3``..."""
    names: list[str] = []
    taken: set[str] = set()
    for i, original in enumerate(raw, 1):
        name = original if _IDENT.fullmatch(original) else _identifier(original, f"c{i}")
        base, n = name, 2
        while name.lower() in taken:
            name, n = f"{base}_{n}", n + 1
        taken.add(name.lower())
        names.append(name)
    return names


def _numbers(texts: list[str]) -> list[int] | list[float] | None:
    """``texts`` as int64s, else as floats (decimal digits, an optional sign, point and exponent, and
    blanks around), else None. What else ``int()`` and ``float()`` take (``_``, nan, inf) is text."""
    joined = "".join(texts)
    if "_" in joined:
        return None
    with contextlib.suppress(ValueError):
        ints = list(map(int, texts))
        if min(ints) in _INT64 and max(ints) in _INT64:
            return ints
    if any(c in joined for c in "nNiI"):
        return None
    with contextlib.suppress(ValueError):
        return list(map(float, texts))
    return None


def _csv_column(values: Sequence[str]) -> tuple[list[Any], str]:
    """int if every non-empty value is one, else float likewise, else text; empty is NULL."""
    present = [v for v in values if v.strip()]
    numbers = _numbers(present) if present else None
    converted: Sequence[Any] = present if numbers is None else numbers
    kind = "TEXT" if numbers is None else "INTEGER" if isinstance(numbers[0], int) else "REAL"
    if len(present) == len(values):
        return list(converted), kind
    found = iter(converted)
    return [next(found) if v.strip() else None for v in values], kind


def _parse_csv(data: bytes) -> tuple[list[str], list[tuple[list[Any], str]]]:
    text = data.decode("utf-8-sig", errors="replace")
    try:
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error as exc:
        raise _Skip(f"not valid CSV: {exc}") from exc
    if not rows:
        raise _Skip("no header row")
    header, body = rows[0], rows[1:]
    width = len(header)
    cells = list(zip_longest(*body, fillvalue=""))[:width]  # short rows padded, long ones cut
    cells += [("",) * len(body)] * (width - len(cells))
    return header, [_csv_column(column) for column in cells]


def _json_value(value: Any) -> Any:
    if value is None or isinstance(value, str | float):
        return value
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value if value in _INT64 else str(value)
    return msgspec.json.encode(value).decode()  # nested: JSON text


def _json_column(values: list[Any]) -> tuple[list[Any], str]:
    """The values as they came when they can be (the common case), else converted one by one."""
    kinds = set(map(type, values))
    ints = values if kinds == {int} else [v for v in values if type(v) is int] if int in kinds else []
    if not kinds <= _PLAIN or (ints and not (min(ints) in _INT64 and max(ints) in _INT64)):
        values = [_json_value(v) for v in values]
        kinds = set(map(type, values))
    return values, _declared_type(kinds)


def _parse_json(data: bytes, kind: str) -> tuple[list[str], list[tuple[list[Any], str]]]:
    """The records' keys (in the order first seen) and their columns (values, declared type)."""
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        records = _JSON.decode_lines(data) if kind == "jsonl" else _JSON.decode(data)
    except msgspec.DecodeError as exc:
        raise _Skip(f"not valid JSON: {exc}") from exc
    if isinstance(records, dict):
        found = [v for v in records.values() if isinstance(v, list) and all(isinstance(x, dict) for x in v)]
        if not found:
            raise _Skip("an object holding no array of objects")
        records = found[0]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise _Skip("not an array of objects" if kind == "json" else "a line is not an object")
    shapes = dict.fromkeys(map(tuple, records))  # the records' keys, each sequence once, in order
    header = list(dict.fromkeys(key for shape in shapes for key in shape))
    return header, [_json_column(list(map(dict.get, records, repeat(key)))) for key in header]


def _declared_type(kinds: set[type]) -> str:
    kinds = kinds - {type(None)}
    if kinds == {int}:
        return "INTEGER"
    if kinds and kinds <= {int, float}:
        return "REAL"
    return "TEXT" if kinds <= {str} else ""


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _load(conn: sqlite3.Connection, sources: list[tuple[str, bytes]]) -> tuple[list[_Table], list[str]]:
    tables: list[_Table] = []
    skipped: list[str] = []
    names = _table_names([path for path, _ in sources])
    conn.execute("BEGIN")
    for path, data in sources:
        kind = _DATA_KINDS[PurePosixPath(path).suffix.lower()]
        try:
            header, typed = _parse_csv(data) if kind == "csv" else _parse_json(data, kind)
            if not header:
                raise _Skip("no columns")
        except _Skip as exc:
            skipped.append(f"  {path}: skipped, {exc}")
            continue
        columns = _column_names(header)
        values, types = [v for v, _ in typed], [t for _, t in typed]
        name = names[path]
        spec = ", ".join(f"{_quote(c)} {t}".rstrip() for c, t in zip(columns, types, strict=True))
        conn.execute(f"CREATE TABLE {_quote(name)} ({spec})")
        conn.executemany(
            f"INSERT INTO {_quote(name)} VALUES ({', '.join('?' * len(columns))})", zip(*values, strict=True)
        )
        tables.append(_Table(name, path, list(zip(columns, types, strict=True)), len(values[0])))
    conn.execute("COMMIT")
    return tables, skipped


def _catalog(tables: list[_Table], skipped: list[str]) -> str:
    if not tables and not skipped:
        return "no tables: the workspace has no .csv, .json, .jsonl or .ndjson files"
    return "\n".join(["tables:", *(t.describe() for t in tables), *skipped])


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
        tables, skipped = _load(conn, sources)
        return Database(image=conn.serialize() if tables else b"", catalog=_catalog(tables, skipped))
    except MemoryError as exc:
        raise _too_big() from exc
    finally:
        conn.close()


def _build_and_keep(sources: list[tuple[str, bytes]]) -> Database:
    """:func:`_build`, the database kept under the digests of the bytes read (a file replaced between
    the listing and the read is keyed by what was read)."""
    database = _build(sources)
    _CACHE.put(tuple((path, digest(data)) for path, data in sources), database)
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


def _query(database: Database, query: str, max_rows: int, stop: threading.Event | None = None) -> str:
    """Run one read-only query on a private copy of ``database`` (in a thread; setting ``stop`` ends
    the query at SQLite's next progress check)."""
    conn = _open(database)
    try:
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, SQL_VALUE_BYTES)
        conn.execute("PRAGMA query_only = ON")
        denied: list[int] = []

        def authorize(action: int, *_: Any) -> int:
            if action in _ALLOWED:
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
                    lines.append(" | ".join(_cell(v) for v in row))
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


@tool
async def sql(ctx: ToolContext, *, query: str, max_rows: MaxRows = 200) -> str:
    """Run one read-only SQL query (SQLite) over the data files of the session's workspace.

    Every .csv, .json (an array of objects, or an object holding one) and .jsonl/.ndjson file is a table
    named after its file: data/metrics.csv is `metrics` (when two files share a name, both are named by
    path: `data_metrics`). Column names are kept when they are identifiers, else made into ones. CSV
    columns are INTEGER, REAL or TEXT as their values allow, empty values are NULL; nested JSON values
    are JSON text (use json_extract). Only a single SELECT or WITH ... SELECT is allowed. The result is a
    table (columns separated by " | ") and its row count; an error lists the tables and their columns.
    """
    _check_read_only(query)
    files = tuple(
        sorted(
            (info.path, info.digest)
            for info in await ctx.workspace.list(ctx.session_id)
            if PurePosixPath(info.path).suffix.lower() in _DATA_KINDS
        )
    )

    async def read_and_build() -> Database:
        sources: list[tuple[str, bytes]] = []
        for path, _ in files:
            with contextlib.suppress(FileNotFound):  # deleted since the listing
                sources.append((path, await ctx.workspace.get(ctx.session_id, path)))
        return await asyncio.to_thread(_build_and_keep, sources)

    database = await _CACHE.get_or_build(files, read_and_build)
    stop = threading.Event()
    try:
        return await asyncio.to_thread(_query, database, query, max_rows, stop)
    except asyncio.CancelledError:
        stop.set()  # the thread would otherwise run on until the deadline
        raise
