"""An MCP server as a child process: the stdio transport of :mod:`actors.agent.tools.mcp`.

:meth:`StdioServer.connect` starts the server and yields the (read, write) streams the SDK's
``ClientSession`` takes; leaving it ends the process.

- **Process**: ``command`` runs in its own process group; ``python``/``python3`` as its first word is
  the worker's own interpreter (``sys.executable``). Its environment is a minimal inherited set
  (``PATH``, ``HOME``, ...: :data:`~actors.agent.tools.mcp_spawn.INHERITED`) plus ``env``, and
  nothing else of the worker's. A process started before its connection (``Prestarted``) is adopted.
- **stdout** is read here, not by the SDK's ``stdio_client``: that one has no limit on a line and
  copies a long line once per 64 KiB read (quadratic: 70 s for 50 MB). :class:`_Lines` keeps a line
  up to ``max_message_bytes`` and only counts the rest. An answer over the limit becomes a JSON-RPC
  error for its request (``data`` is :data:`TOO_BIG`), its id read from either end of the line; any
  other message over it ends the connection. A line that is not JSON-RPC comes through as
  :class:`NotJsonRpc` (servers print banners).
- **stderr** is read all along; :attr:`StdioServer.stderr` keeps its last ``STDERR_LINES`` lines.
- **Ending**: stdin is closed, the server has ``EXIT_GRACE`` to exit, then its group gets SIGTERM,
  then SIGKILL, each waited for as long; shielded from cancellation, so bounded but never skipped.
- **Going away**: a server that closes its stdout or stdin, or writes a message over the limit that
  is no answer, is reported to ``on_lost`` (completing "the server ..."); :attr:`StdioServer.exited`
  then says how it exited, if it did by itself.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import mcp_types as types
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from actors.agent.tools.mcp_spawn import Prestarted, process_environment, spawn, stdio_argv

log = structlog.get_logger("staffwork.tools.mcp")

#: after stdin is closed, how long a server has to exit; then as long after SIGTERM, after SIGKILL
EXIT_GRACE = 2.0
STDERR_LINES = 20
PREVIEW_CHARS = 200
#: the ``data`` of the error an answer over the limit is made into (its message names the size)
TOO_BIG = "staffwork: message over the limit"

_READ_CHUNK = 64 * 1024
_EDGE = 512  # bytes kept of each end of a line over the limit (to find its request id)
_ID = rb'(-?\d+|"(?:[^"\\]|\\.)*")'
#: a response's id where it can be read without parsing the whole message: first (after "jsonrpc")...
_HEAD_ID = re.compile(
    rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*' + _ID + rb'\s*,\s*"(?:result|error)"\s*:'
)
#: ... or last, after "result" came first (as the TypeScript SDK writes it)
_HEAD_RESULT = re.compile(rb'^\s*\{\s*"(?:result|error)"\s*:')
_TAIL_ID = re.compile(rb'"id"\s*:\s*' + _ID + rb'\s*(?:,\s*"jsonrpc"\s*:\s*"2\.0"\s*)?\}\s*$')


class NotJsonRpc(Exception):
    """A line on a server's stdout that is not a JSON-RPC message (``str()`` is its preview)."""


class StdioServer:
    """One MCP server's process, for one connection (:meth:`connect` once)."""

    def __init__(
        self,
        command: list[str],
        *,
        env: Mapping[str, str],
        max_message_bytes: int,
        on_lost: Callable[[str], None],
        agent: str,
        server: str,
        prestarted: Prestarted | None = None,
    ) -> None:
        self.argv = stdio_argv(command)
        self._prestarted = prestarted
        self.env = dict(env)
        self.max_message_bytes = max_message_bytes
        self.pid: int | None = None
        self.returncode: int | None = None  # only if it exited by itself
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._on_lost = on_lost
        self._agent = agent
        self._server = server
        self._stdout_closed = False

    @property
    def exited(self) -> str | None:
        """How the server exited by itself (``exited with code 3``), else None."""
        return None if self.returncode is None else _exit(self.returncode)

    @contextlib.asynccontextmanager
    async def connect(
        self,
    ) -> AsyncIterator[tuple[MemoryObjectReceiveStream[Any], MemoryObjectSendStream[Any]]]:
        """Start the server; yield the streams a ``ClientSession`` reads and writes; end it."""
        env = process_environment(self.env)  # PATH, HOME...: nothing else of the worker's
        waiting = (
            self._prestarted.adopt(self._agent, self._server, self.argv, env) if self._prestarted else None
        )
        with anyio.CancelScope(shield=True):  # a spawn cancelled half-way could leak the process
            proc = waiting or await spawn(self.argv, env)
        self.pid = proc.pid
        incoming, read = anyio.create_memory_object_stream[SessionMessage | Exception](0)
        write, outgoing = anyio.create_memory_object_stream[SessionMessage](0)
        try:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(self._read_stdout, proc, incoming)
                tasks.start_soon(self._write_stdin, proc, outgoing)
                tasks.start_soon(self._read_stderr, proc)
                try:
                    yield read, write
                finally:
                    with anyio.CancelScope(shield=True):
                        await self._end_process(proc)
                    tasks.cancel_scope.cancel()
        finally:
            for stream in (incoming, read, write, outgoing):
                stream.close()

    async def _read_stdout(self, proc: asyncio.subprocess.Process, sink: MemoryObjectSendStream[Any]) -> None:
        assert proc.stdout is not None
        lines = _Lines(self.max_message_bytes)
        try:
            with sink:
                while chunk := await proc.stdout.read(_READ_CHUNK):
                    for line in lines.feed(chunk):
                        if (message := self._message(line)) is not None:
                            await sink.send(message)
                self._stdout_closed = True
                self._on_lost("closed its stdout")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            while await proc.stdout.read(_READ_CHUNK):  # the session is gone: drain until the end
                pass

    def _message(self, line: bytes | _Oversized) -> SessionMessage | Exception | None:
        if isinstance(line, _Oversized):
            size = f"{_size(line.size)}, over the limit of {_size(self.max_message_bytes)} for one message"
            if (request_id := line.response_id()) is None:
                self._on_lost(f"wrote a message of {size}")
                return None
            error = types.ErrorData(
                code=types.INTERNAL_ERROR, message=f"the answer is {size}: ask for less", data=TOO_BIG
            )
            return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))
        if not line.strip():
            return None
        try:
            return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
        except ValueError:
            return NotJsonRpc(_preview(line))

    async def _write_stdin(
        self, proc: asyncio.subprocess.Process, source: MemoryObjectReceiveStream[Any]
    ) -> None:
        assert proc.stdin is not None
        try:
            with source:
                async for message in source:
                    data = message.message.model_dump_json(by_alias=True, exclude_unset=True)
                    proc.stdin.write(data.encode() + b"\n")
                    await proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            self._on_lost("closed its stdin")

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        lines = _Lines(4 * PREVIEW_CHARS)
        while chunk := await proc.stderr.read(_READ_CHUNK):
            for line in lines.feed(chunk):
                raw = line.head if isinstance(line, _Oversized) else line
                if text := _one_line(raw.decode(errors="replace")):
                    self.stderr.append(text)
                    log.debug("mcp_server_stderr", agent=self._agent, server=self._server, line=text)

    async def _end_process(self, proc: asyncio.subprocess.Process) -> None:
        """Close stdin, give the server ``EXIT_GRACE`` to exit, then SIGTERM its group, then SIGKILL.
        ``returncode`` is kept only if the server exited by itself (it closed its stdout first)."""
        assert proc.stdin is not None
        by_itself = self._stdout_closed
        proc.stdin.close()
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            with anyio.move_on_after(EXIT_GRACE):
                await proc.wait()
                if by_itself and sig is None:
                    self.returncode = proc.returncode
                return
        log.error("mcp_server_not_reaped", agent=self._agent, server=self._server, pid=proc.pid)
        transport = getattr(proc, "_transport", None)  # else it warns when collected (as the SDK does)
        if transport is not None:
            transport.close()


# --- line framing ---------------------------------------------------------------------------------


@dataclass
class _Oversized:
    """A line over the limit: its size, and its first and last bytes."""

    size: int
    head: bytes
    tail: bytes

    def add(self, piece: bytes) -> None:
        self.size += len(piece)
        self.tail = (self.tail + piece[-_EDGE:])[-_EDGE:]

    def response_id(self) -> str | int | None:
        """The id of the response this line is, if its head or tail says so unambiguously."""
        match = _HEAD_ID.match(self.head)
        if match is None and _HEAD_RESULT.match(self.head):
            match = _TAIL_ID.search(self.tail)
        if match is None:
            return None
        value: str | int = json.loads(match.group(1))
        return value


class _Lines:
    """A byte stream cut into lines, each kept only up to ``limit`` bytes: a longer line comes out
    as an :class:`_Oversized` (its bytes are counted, not kept)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.buffer = bytearray()
        self.over: _Oversized | None = None

    def feed(self, chunk: bytes) -> list[bytes | _Oversized]:
        lines: list[bytes | _Oversized] = []
        start = 0
        while (end := chunk.find(b"\n", start)) != -1:
            self._add(chunk[start:end])
            lines.append(self._take())
            start = end + 1
        self._add(chunk[start:])
        return lines

    def _add(self, piece: bytes) -> None:
        if self.over is not None:
            self.over.add(piece)
            return
        self.buffer += piece
        if len(self.buffer) > self.limit:
            self.over = _Oversized(len(self.buffer), bytes(self.buffer[:_EDGE]), bytes(self.buffer[-_EDGE:]))
            self.buffer = bytearray()

    def _take(self) -> bytes | _Oversized:
        if self.over is not None:
            over, self.over = self.over, None
            return over
        line = bytes(self.buffer)
        self.buffer.clear()
        return line


# --- helpers --------------------------------------------------------------------------------------


def _exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    with contextlib.suppress(ValueError):
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"was killed by signal {-returncode}"


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _preview(data: bytes) -> str:
    text = data[:PREVIEW_CHARS].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(data) > PREVIEW_CHARS else "")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"
