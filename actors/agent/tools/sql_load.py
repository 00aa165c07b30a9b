"""Turning the workspace's data files into SQLite tables, for the ``sql`` tool (``sql.py``).

Every .csv, .json (an array of objects, or an object holding one), .jsonl/.ndjson, .log and .txt
file becomes a table named after its file (by path when two files share a name); a SQLite database
(.sqlite, .sqlite3, .db) brings its tables, under their own names. Column names are kept when they
are identifiers, else made into ones; CSV columns are INTEGER, REAL or TEXT as their values allow,
empty values NULL; nested JSON values are JSON text; a .log or .txt file is its lines (``line``,
from 1, and ``text``; not the tools' spilled outputs under ``tool-outputs/``). A folder holding
several files of the same columns is also one table, named after the folder, with a first column
``path`` (``builds/jenkins/*.log`` is ``jenkins``): a day's exports or a batch of logs are queried
at once. A file that cannot become a table is skipped, with the reason in the catalog.
"""

from __future__ import annotations

import contextlib
import csv
import io
import re
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import repeat, zip_longest
from pathlib import PurePosixPath
from typing import Any

import msgspec


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


#: workspace folders whose files are never tables: the tools' own spilled outputs
NOT_DATA = ("tool-outputs/",)


def is_data(path: str) -> bool:
    """Whether ``path`` is a data file the sql tool loads."""
    return PurePosixPath(path).suffix.lower() in DATA_KINDS and not path.startswith(NOT_DATA)


DATA_KINDS = {
    ".csv": "csv",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".log": "lines",
    ".txt": "lines",
    ".sqlite": "sqlite",
    ".sqlite3": "sqlite",
    ".db": "sqlite",
}
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT64 = range(-(2**63), 2**63)
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
    files: list[_Table] | None = None  # a folder's table: the tables of its files
    in_folder: bool = False  # a file's table that a folder's table holds too

    def describe(self) -> str:
        columns = ", ".join(f"{name} {kind}".rstrip() for name, kind in self.columns)
        rows = plural(self.rows, "row", "rows")
        if self.files is None:
            return f"  {self.name} ({self.path}, {rows}): {columns}"
        examples = ", ".join(t.name for t in self.files[:2])
        where = f"the {len(self.files)} files in {self.path}/, each also a table of its own: {examples}, ..."
        return f"  {self.name} ({where}; {rows}): {columns}"


def _identifier(text: str, fallback: str) -> str:
    """``text`` with each run of other characters than ASCII letters, digits and ``_`` made one ``_``."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_") or fallback
    if name[0].isdigit() or name.lower().startswith("sqlite_"):
        name = f"{fallback}_{name}"
    return name


def _claim(name: str, taken: set[str]) -> str:
    """``name``, or with ``_2``, ``_3``... the first not in ``taken`` (case-insensitive); now taken."""
    base, n = name, 2
    while name.lower() in taken:
        name, n = f"{base}_{n}", n + 1
    taken.add(name.lower())
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
        name = _claim(name, taken)
        names[path] = name
    return names


def _column_names(raw: Sequence[str]) -> list[str]:
    """Valid identifiers stay as they are; others are sanitised; duplicates get ``_2``, ``_3``..."""
    names: list[str] = []
    taken: set[str] = set()
    for i, original in enumerate(raw, 1):
        name = original if _IDENT.fullmatch(original) else _identifier(original, f"c{i}")
        name = _claim(name, taken)
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


def load(conn: sqlite3.Connection, sources: list[tuple[str, bytes]]) -> tuple[list[_Table], list[str]]:
    tables: list[_Table] = []
    skipped: list[str] = []
    names = _table_names([path for path, _ in sources])
    conn.execute("BEGIN")
    for path, data in sources:
        kind = DATA_KINDS[PurePosixPath(path).suffix.lower()]
        if kind == "sqlite":
            try:
                tables += _copy_database(
                    conn, path, data, {t.name.lower() for t in tables} | {*names.values()}
                )
            except _Skip as exc:
                skipped.append(f"  {path}: skipped, {exc}")
            continue
        try:
            if kind == "csv":
                header, typed = _parse_csv(data)
            elif kind == "lines":
                header, typed = _parse_lines(data)
            else:
                header, typed = _parse_json(data, kind)
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
    tables += _folder_tables(conn, tables)
    conn.execute("COMMIT")
    return tables, skipped


def _folder_tables(conn: sqlite3.Connection, tables: list[_Table]) -> list[_Table]:
    """One more table for each folder holding two or more files' tables of the same columns: their
    rows, each with its file's ``path``; named after the folder (by its path if that name is taken)."""
    groups: dict[tuple[str, tuple[str, ...]], list[_Table]] = {}
    for table in tables:
        folder = str(PurePosixPath(table.path).parent)
        if folder != "." and "path" not in (c for c, _ in table.columns):
            groups.setdefault((folder, tuple(c for c, _ in table.columns)), []).append(table)
    taken = {t.name.lower() for t in tables}
    made: list[_Table] = []
    for (folder, columns), members in sorted(groups.items()):
        if len(members) < 2:
            continue
        name = next(
            (
                n
                for n in (_identifier(PurePosixPath(folder).name, "t"), _identifier(folder, "t"))
                if n.lower() not in taken
            ),
            None,
        )
        if name is None:
            continue
        taken.add(name.lower())
        types = [{t.columns[i][1] for t in members} for i in range(len(columns))]
        declared = [
            ("path", "TEXT"),
            *((c, kinds.pop() if len(kinds) == 1 else "") for c, kinds in zip(columns, types, strict=True)),
        ]
        conn.execute(
            f"CREATE TABLE {_quote(name)} ({', '.join(f'{_quote(c)} {t}'.rstrip() for c, t in declared)})"
        )
        for member in members:
            member.in_folder = True
            conn.execute(f"INSERT INTO {_quote(name)} SELECT ?, * FROM {_quote(member.name)}", (member.path,))
        made.append(_Table(name, folder, declared, sum(t.rows for t in members), files=members))
    return made


def _copy_database(conn: sqlite3.Connection, path: str, data: bytes, taken: set[str]) -> list[_Table]:
    """The tables of a SQLite database file, copied in under their own names (``<file>_<table>`` when
    a name is taken); its views and indexes are not."""
    source = sqlite3.connect(":memory:")
    try:
        try:
            source.deserialize(data)
            found = source.execute(
                "SELECT name FROM sqlite_master "
                "WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            ).fetchall()
        except sqlite3.Error as exc:
            raise _Skip(f"not a SQLite database: {exc}") from None
        if not found:
            raise _Skip("a SQLite database with no tables")
        copied: list[_Table] = []
        stem = _identifier(PurePosixPath(path).stem, "t")
        for (table,) in found:
            info = source.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
            columns = _column_names([str(row[1]) for row in info])
            types = [_affinity(str(row[2])) for row in info]
            name = _identifier(table, "t")
            if name.lower() in taken:
                name = f"{stem}_{name}"
            name = _claim(name, taken)
            spec = ", ".join(f"{_quote(c)} {t}".rstrip() for c, t in zip(columns, types, strict=True))
            conn.execute(f"CREATE TABLE {_quote(name)} ({spec})")
            rows = source.execute(f"SELECT * FROM {_quote(table)}").fetchall()
            conn.executemany(f"INSERT INTO {_quote(name)} VALUES ({', '.join('?' * len(columns))})", rows)
            copied.append(_Table(name, f"{path}: {table}", list(zip(columns, types, strict=True)), len(rows)))
        return copied
    finally:
        source.close()


def _affinity(declared: str) -> str:
    """A column's declared type as SQLite reads its affinity (a file's own type text is not kept)."""
    kind = declared.upper()
    if "INT" in kind:
        return "INTEGER"
    if any(word in kind for word in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if any(word in kind for word in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "BLOB" if "BLOB" in kind else ""


def _parse_lines(data: bytes) -> tuple[list[str], list[tuple[list[Any], str]]]:
    """A text file as its lines: their numbers (from 1) and their text, without the line ends."""
    lines = data.decode("utf-8", errors="replace").splitlines()
    if not lines:
        raise _Skip("no lines")
    return ["line", "text"], [(list(range(1, len(lines) + 1)), "INTEGER"), (lines, "TEXT")]


def catalog(tables: list[_Table], skipped: list[str]) -> str:
    """The tables, for the model: a folder's table stands for its files' own (listed by name only)."""
    if not tables and not skipped:
        kinds = ", ".join(DATA_KINDS)
        return f"no tables: the workspace has no data files ({kinds})"
    shown = [t.describe() for t in tables if not t.in_folder]
    return "\n".join(["tables:", *shown, *skipped])
