"""The workspace tools: list, read, write, search (grep) and query (SQL) the session's shared files.

Every tool works inside the calling session's workspace (``ctx.session_id``). Paths go through
:func:`bus.workspace.normalize_path`, so ``../x`` or ``/etc/passwd`` come back as ``is_error`` results
that name the path. ``read_file`` and ``grep`` stream files chunk by chunk and keep only what they
print; ``grep`` matches with RE2 (time linear in the text, whatever the pattern) in a worker thread, so
the event loop never runs a pattern. ``sql`` loads the data files into an in-memory SQLite database,
built afresh for every call.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Annotated, Protocol

import msgspec
import re2

from actors.agent.tools.base import Tool, ToolContext, ToolError, tool
from actors.agent.tools.memory import list_memory, mounted, read_memory, write_memory
from actors.agent.tools.sql import cut, sql
from actors.agent.tools.sql_load import plural
from bus.connection import Bus
from bus.errors import FileNotFound
from bus.objects import normalize_path
from bus.workspace import Workspace
from schemas.files import FileInfo, Provenance
from schemas.trace import FileWritten

GREP_LINE_CHARS = 300
SQL_CELL_CHARS = 500
SQL_SECONDS = 30.0
SPILL_DIR = "tool-outputs"

Offset = Annotated[
    int, msgspec.Meta(ge=0, description="Lines to skip before the first line returned (0: from the start).")
]
Limit = Annotated[int, msgspec.Meta(ge=1, le=10_000, description="Most lines to return (1 to 10000).")]
MaxMatches = Annotated[
    int, msgspec.Meta(ge=1, le=10_000, description="Most matching lines to print (counts stay exact).")
]
MaxRows = Annotated[int, msgspec.Meta(ge=1, le=10_000, description="Most result rows to print.")]


def _decode(raw: bytes | bytearray) -> str:
    return raw.decode("utf-8", errors="replace").removesuffix("\r")


def _whole_workspace(prefix: str) -> bool:
    return prefix.strip("/") in ("", ".")


# --- list, write ---


@tool
async def list_files(ctx: ToolContext, *, prefix: str = "") -> str:
    """List the files of the session's workspace: size in bytes and path, sorted by path.

    `prefix` keeps only the paths that start with it (a directory such as `data/`, or any leading text).
    `/memory/` lists the agent's memory stores, `/memory/<store>/` a store's files.
    """
    if mounted(prefix):
        return await list_memory(ctx, prefix)
    files = await ctx.workspace.list(ctx.session_id, prefix)
    if not files:
        return "the workspace is empty" if _whole_workspace(prefix) else f"no files under {prefix!r}"
    width = max(len(str(f.size)) for f in files)
    lines = [f"{f.size:>{width}}  {f.path}" for f in files]
    lines.append(f"{plural(len(files), 'file', 'files')}, {sum(f.size for f in files)} bytes")
    return "\n".join(lines)


@tool
async def write_file(ctx: ToolContext, *, path: str, content: str) -> str:
    """Write a text file (UTF-8) in the session's workspace, replacing any file at that path.

    Directories need no creating: `notes/a.md` is just a path. The file records who wrote it. A path
    under `/memory/<store>/` writes a new version of that file in a memory store (read-write stores only).
    """
    if mounted(path):
        return await write_memory(ctx, path, content)
    info = await write_and_record(ctx.bus, ctx.workspace, ctx.provenance, path, content)
    return f"wrote {info.size} bytes to {info.path}"


async def write_and_record(
    bus: Bus, workspace: Workspace, writer: Provenance, path: str, content: str
) -> FileInfo:
    """Write a file on an agent's behalf: stored with its provenance, and ``workspace.file_written``
    in the trace (the tool, the lead's report and a subagent's oversized answer all go through here)."""
    info = await workspace.put(writer.session_id, path, content, provenance=writer)
    await bus.emit(
        FileWritten(
            session_id=writer.session_id,
            thread_id=writer.thread_id,
            agent=writer.agent,
            path=info.path,
            size=info.size,
            digest=info.digest,
            provenance=info.provenance,
        )
    )
    return info


# --- read ---


async def _read_window(chunks: AsyncIterator[bytes], start: int, stop: int) -> tuple[list[str], int]:
    """Lines ``start`` to ``stop`` (0-based, ``stop`` excluded) of a streamed file, and its line count.

    Only the window's lines are decoded and kept; the rest is counted by its newline bytes.
    """
    lines: list[str] = []
    current = bytearray()  # the window line being assembled across chunks
    index = 0  # the 0-based line the stream is in
    last = b""
    async for block in chunks:
        if not block:
            continue
        last = block[-1:]
        newlines = block.count(b"\n")
        if index + newlines < start or index >= stop:
            index += newlines
            continue
        pieces = block.split(b"\n")
        for n, piece in enumerate(pieces):
            inside = start <= index < stop
            if inside:
                current += piece
            if n < len(pieces) - 1:
                if inside:
                    lines.append(_decode(current))
                    current.clear()
                index += 1
    unterminated = last not in (b"", b"\n")
    if unterminated and start <= index < stop:
        lines.append(_decode(current))
    return lines, index + unterminated


@tool
async def read_file(ctx: ToolContext, *, path: str, offset: Offset = 0, limit: Limit = 2000) -> str:
    """Read a text file of the session's workspace as numbered lines, like `cat -n` (number, tab, text).

    Returns `limit` lines after skipping `offset` lines. When the file goes on, the output ends with
    "(lines A-B of N; continue with offset=B)". Bytes that are not UTF-8 read as U+FFFD. A path under
    `/memory/<store>/` reads from a memory store attached to the agent.
    """
    if mounted(path):
        normalized, chunks = path, await read_memory(ctx, path)
    else:
        normalized = normalize_path(path)
        chunks = await ctx.workspace.open(ctx.session_id, normalized)
    lines, total = await _read_window(chunks, offset, offset + limit)
    if total == 0:
        return f"{normalized} is empty"
    if offset >= total:
        raise ToolError(f"offset {offset} is past the end of {normalized!r}, which has {total} lines")
    text = "\n".join(f"{offset + i + 1:6}\t{line}" for i, line in enumerate(lines))
    end = offset + len(lines)
    if end < total:
        text += f"\n\n(lines {offset + 1}-{end} of {total}; continue with offset={end})"
    return text


# --- grep ---


_RE2_LACKS = "backreferences, lookarounds, atomic groups, possessive repeats, conditionals or \\Z"


class _Regex(Protocol):
    def search(self, text: str) -> object | None: ...


def _compile(pattern: str, ignore_case: bool) -> _Regex:
    """RE2's compiled ``pattern``. A pattern RE2 refuses is compiled (never run) by Python's parser
    too, to tell a pattern that is no regular expression at all from one that RE2 cannot run."""
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    try:
        regex: _Regex = re2.compile(pattern, options)
    except re2.error as exc:
        try:
            re.compile(pattern)
        except re.error as invalid:
            raise ToolError(f"invalid regular expression {pattern!r}: {invalid}") from exc
        reason = exc.args[0].decode() if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ToolError(
            f"grep cannot run {pattern!r} ({reason}): its patterns are RE2 syntax, which has no {_RE2_LACKS}"
        ) from exc
    return regex


async def _line_blocks(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A streamed file as runs of whole lines, one per chunk that ends a line (line ends between
    the lines of a run, none after the last)."""
    parts: list[bytes] = []  # the unterminated line so far
    async for block in chunks:
        end = block.rfind(b"\n")
        if end < 0:
            parts.append(block)
            continue
        yield b"".join([*parts, block[:end]])
        parts = [block[end + 1 :]]
    tail = b"".join(parts)
    if tail:
        yield tail


_DENSE = 1000  # matching lines after which a scan that finds most lines matching goes line by line


def _search(regex: _Regex, block: bytes, scan: _Regex | None = None) -> tuple[int, list[tuple[int, str]]]:
    """The number of lines of ``block`` and the (0-based index, text) of those ``regex`` matches.

    With ``scan`` (the pattern in multi-line mode, see :func:`_scanner`) RE2 runs over the whole
    block and only the lines where a match starts are searched on their own (a match may span lines;
    the line alone decides), the search going on from the next line: a line that matches alone holds
    the start of the leftmost match from its own start, so none is missed, and the result is what
    searching every line gives, without a Python step per line."""
    if scan is None:
        lines = [_decode(piece) for piece in block.split(b"\n")]
        return len(lines), [(i, line) for i, line in enumerate(lines) if regex.search(line)]
    # Scanned as bytes (the wrapper would encode a str again on every call), of valid UTF-8: what
    # the lines decode to, so the scan sees the text the lines are searched in.
    text = block.decode("utf-8", errors="replace").replace("\r\n", "\n").removesuffix("\r").encode()
    hits: list[tuple[int, str]] = []
    index = 0  # the line at ``start``
    start = 0  # where that line starts
    while (found := scan.search(text, start)) is not None:  # type: ignore[call-arg, arg-type]
        at = found.start()  # type: ignore[attr-defined]
        index += text.count(b"\n", start, at)
        start = text.rfind(b"\n", 0, at) + 1
        end = text.find(b"\n", at)
        line = text[start : len(text) if end < 0 else end].decode()
        if regex.search(line):
            hits.append((index, line))
        if end < 0:
            break
        index, start = index + 1, end + 1
        if len(hits) >= _DENSE and len(hits) * 4 > index:  # most lines match: a line at a time is faster
            rest = [piece.decode() for piece in text[start:].split(b"\n")]
            hits += [(index + i, line) for i, line in enumerate(rest) if regex.search(line)]
            break
    return text.count(b"\n") + 1, hits


def _scanner(pattern: str, ignore_case: bool) -> _Regex | None:
    """``pattern`` in multi-line mode (``^``/``$`` at line ends) for scanning whole blocks; None
    when it names the text's start or end (``\\A``, ``\\z``), which only a line at a time gives."""
    if re.search(r"\\[Az]", pattern):
        return None
    options = re2.Options()
    options.log_errors = False
    options.case_sensitive = not ignore_case
    try:
        scan: _Regex = re2.compile(f"(?m){pattern}".encode(), options)
    except re2.error:
        return None
    return scan


@tool
async def grep(
    ctx: ToolContext,
    *,
    pattern: str,
    prefix: str = "",
    ignore_case: bool = False,
    max_matches: MaxMatches = 200,
) -> str:
    r"""Search the session's workspace for a regular expression, line by line.

    Searches every file whose path starts with `prefix` (all files by default; earlier spilled outputs
    under tool-outputs/ only when the prefix names that directory). Prints the first `max_matches`
    matching lines as `path:line_number: text` (text cut at 300 characters), then how many lines
    matched in each file and in all: these counts are exact, also beyond `max_matches`.
    Patterns are RE2 syntax: Python's without backreferences, lookarounds (`(?=`, `(?!`, `(?<=`,
    `(?<!`), atomic groups, possessive repeats or `\Z` (use `\z`); `\w`, `\d`, `\s` and `\b` are ASCII
    (`\pL`, `\pN` match Unicode letters and digits).
    """
    regex = await asyncio.to_thread(_compile, pattern, ignore_case)
    scan = await asyncio.to_thread(_scanner, pattern, ignore_case)
    files = await ctx.workspace.list(ctx.session_id, prefix)
    if _whole_workspace(prefix) or not normalize_path(prefix.strip("/")).startswith(SPILL_DIR):
        files = [f for f in files if not f.path.startswith(f"{SPILL_DIR}/")]
    if not files:
        return "the workspace is empty" if _whole_workspace(prefix) else f"no files under {prefix!r}"
    shown: list[str] = []
    counts: dict[str, int] = {}
    for info in files:
        try:
            chunks = await ctx.workspace.open(ctx.session_id, info.path)
        except FileNotFound:
            continue  # deleted since the listing
        count = 0
        lineno = 0  # lines before the block
        try:
            async for block in _line_blocks(chunks):
                lines, hits = await asyncio.to_thread(_search, regex, block, scan)
                count += len(hits)
                for index, line in hits[: max_matches - len(shown)]:
                    shown.append(f"{info.path}:{lineno + index + 1}: {cut(line, GREP_LINE_CHARS)}")
                lineno += lines
        finally:  # a grep cancelled mid-file (its worker stopping) ends the file's stream now
            if isinstance(chunks, AsyncGenerator):
                await chunks.aclose()
        if count:
            counts[info.path] = count
    if not counts:
        return f"no matches for {pattern!r} in {plural(len(files), 'file', 'files')}"
    total = sum(counts.values())
    out = [*shown, "", "matches per file:", *(f"  {path}: {n}" for path, n in counts.items())]
    summary = f"{plural(total, 'match', 'matches')} in {plural(len(counts), 'file', 'files')}"
    if total > max_matches:
        summary += f" (showing the first {max_matches})"
    out.append(summary)
    return "\n".join(out)


# --- sql ---

WORKSPACE_TOOLS: dict[str, Tool] = {t.name: t for t in (list_files, read_file, write_file, grep, sql)}
