"""MCP servers' tools: the client side of MCP in a worker, over stdio or streamable HTTP.

- **One connection per (agent, server name)** in a :class:`McpHub`, started by the first
  :meth:`~McpHub.tools`, kept for later threads, stopped by :meth:`~McpHub.close`. Agents do not
  share a server process, so one agent's credentials never serve another's calls.
- **stdio**: ``command`` runs in its own process group; ``python``/``python3`` as its first word is
  the worker's own interpreter (``sys.executable``), so a team file works in any virtualenv. The
  child's environment is the SDK's minimal default (``PATH``, ``HOME``, ``USER``, ``SHELL``,
  ``TERM``, ``LOGNAME``) plus the server's ``env``, ``${VAR}`` filled from the worker's environment,
  and nothing else: a secret reaches only the server that declares it. Its stderr is read all along;
  errors quote its last line (``exited with code 1: ModuleNotFoundError: ...``).
- **HTTP**: the SDK's streamable HTTP client, with ``headers`` filled from ``${VAR}``.
- **Bounds**: starting, initializing and listing take ``timeout_s`` at most (then
  :class:`ToolSourceError`, saying which step); :meth:`RemoteTool.run` bounds each call, and a call
  whose server dies fails at once. A stop closes stdin, then signals the group SIGTERM, then SIGKILL.
- **Restarts**: a connection that died is started again by the next :meth:`~McpHub.tools` or call,
  one attempt each (a server that keeps crashing gives errors, not a loop). Calls in flight when it
  died fail with why: ``the server exited with code 3: <its stderr's last line>``.
- **Listing**: every tool offered (the caller applies the allowlist), once per connection. A tool
  whose ``<server>__<tool>`` is not 1-64 of ``[A-Za-z0-9_-]`` is skipped (``mcp_tool_skipped``).
- **Results**: text blocks joined by newlines; the structured content as JSON if there is no text;
  images, audio and binary resources as one line (``[image image/png, 1234 bytes]``); ``isError``
  as an ``is_error`` result. A protocol error or a malformed answer is an error naming the tool.
- **Message size**: one message is ``MAX_MESSAGE_BYTES`` at most; a bigger answer fails its call,
  naming its size. (The SDK's stdio reader has no limit and copies a long line once per 64 KiB
  read, 70 s for 50 MB: this module reads stdio itself.) Lines on stdout that are not JSON-RPC are
  logged and skipped (servers print banners), and named if the server then fails to start.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp_types as types
import structlog
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp import ClientSession, MCPError
from mcp.client.session import IncomingMessage
from mcp.client.stdio import get_default_environment
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.message import SessionMessage
from pydantic import ValidationError

from actors.agent.tools.base import MAX_RESULT_CHARS, RemoteTool, ToolContext, ToolError, ToolSourceError
from schemas.team import ENV_REFERENCE, McpServer

log = structlog.get_logger("staffwork.tools.mcp")

#: the most one message from a server may hold: a result of ``MAX_RESULT_CHARS`` characters in
#: UTF-8 with JSON escapes, twice (servers often repeat the text as structured content)
MAX_MESSAGE_BYTES = 8 * MAX_RESULT_CHARS
#: after stdin is closed, how long a server has to exit; then as long after SIGTERM, after SIGKILL
EXIT_GRACE = 2.0
#: how long a stop waits for a ready connection to end politely before cancelling it
STOP_GRACE = 2.0
#: the longest a stop may take in all (past it the connection is abandoned, and logged)
STOP_TIMEOUT = 12.0
#: the most pages a tool listing may have
MAX_LIST_PAGES = 100
#: HTTP timeouts (seconds) for connecting, writing, and reading (as the SDK's own client has them;
#: the read timeout is at least the server's ``timeout_s``, a call's answer may come that late)
HTTP_TIMEOUT = 30.0
HTTP_READ_TIMEOUT = 300.0
STDERR_LINES = 20
PREVIEW_CHARS = 200
CLIENT_INFO = types.Implementation(name="staffwork", version="0.1.0")

_DOING = {"start": "start", "initialize": "initialize", "tools/list": "list its tools", "ready": "serve"}
_RESTARTED = "; it is started again on the next call"
_TOO_BIG = "staffwork: message over the limit"  # marks the error this module makes of such an answer
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
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


class _StartFailed(Exception):
    """A connection could not be made; ``reason`` completes "the server ..." (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _NotJsonRpc(Exception):
    """A line on a server's stdout that is not a JSON-RPC message."""


class McpHub:
    """The MCP servers of the agents this process serves: one connection per (agent, server name),
    started on first use, kept, restarted after it dies."""

    def __init__(self, *, environ: Mapping[str, str] | None = None) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else environ  # for ${VAR}s
        self._connections: dict[tuple[str, str], _Connection] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._closed = False

    async def tools(self, agent: str, server: McpServer) -> list[RemoteTool]:
        """Every tool ``server`` offers ``agent`` (not filtered by its allowlist).
        :class:`ToolSourceError` if it cannot be started, initialized and listed within its
        ``timeout_s``, a ``${VAR}`` it needs is not set, or it answers garbage."""
        try:
            connection = await self._connection(agent, server)
        except _StartFailed as exc:
            raise ToolSourceError(f"MCP server {server.name!r} {exc.reason}") from None
        return connection.tools(self)

    async def close(self) -> None:
        """Stop every server (each stop bounded; stdio children are reaped or killed)."""
        self._closed = True
        connections = list(self._connections.values())
        self._connections.clear()
        await asyncio.gather(*(connection.stop() for connection in connections))

    async def _call(
        self, agent: str, server: McpServer, tool: str, arguments: dict[str, Any]
    ) -> tuple[str, bool]:
        """Call ``tool`` on the agent's connection to ``server`` (started again if it died)."""
        try:
            connection = await self._connection(agent, server)
        except _StartFailed as exc:
            raise ToolSourceError(f"the server {exc.reason}") from None
        return await connection.call(tool, arguments)

    async def _connection(self, agent: str, server: McpServer) -> _Connection:
        """The live connection, else one new attempt to make it (bounded by ``server.timeout_s``).
        Callers waiting on the lock while an attempt failed get that failure, not an attempt each."""
        key = (agent, server.name)
        seen = self._connections.get(key)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self._closed:
                raise _StartFailed("is not available: the worker is shutting down")
            connection = self._connections.get(key)
            if connection is not None and connection is not seen and connection.failed:
                raise _StartFailed(connection.reason)
            if connection is None or connection.ended or connection.server != server:
                if connection is not None:
                    await connection.stop()
                    if self._closed:
                        raise _StartFailed("is not available: the worker is shutting down")
                env, headers = _expand(server, self._environ)
                connection = _Connection(agent, server, env=env, headers=headers)
                self._connections[key] = connection
                connection.launch()
            await connection.wait_ready()
            return connection


@dataclass(frozen=True)
class _Call:
    """One tool of one agent's server, as :class:`RemoteTool` calls it."""

    hub: McpHub
    agent: str
    server: McpServer
    tool: str

    async def __call__(self, ctx: ToolContext, arguments: dict[str, Any]) -> tuple[str, bool]:
        return await self.hub._call(self.agent, self.server, self.tool, arguments)


class _Connection:
    """One running server and its session. A supervisor task owns the SDK's context managers
    (entered and exited in that task); callers use ``session`` from their own tasks."""

    def __init__(
        self, agent: str, server: McpServer, *, env: dict[str, str], headers: dict[str, str]
    ) -> None:
        self.agent = agent
        self.server = server
        self.env = env
        self.headers = headers
        self.session: ClientSession | None = None
        self.listed: list[types.Tool] = []
        self.reason = ""  # why it ended, once it has: completes "the server ..."
        self.pid: int | None = None
        self.returncode: int | None = None  # of a stdio server that exited by itself
        self._stdout_closed = False
        self._phase = "start"
        self._scope = anyio.CancelScope()
        self._wake = asyncio.Event()  # a ready connection should end (stop, or the server is gone)
        self._settled = asyncio.Event()  # ready, or ended
        self._ended = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._deadline = 0.0
        self._stopping = False
        self._lost = ""  # how the server went away on its own
        self._failure: BaseException | None = None
        self._garbage = ""
        self._http_error = ""
        self._stderr: collections.deque[str] = collections.deque(maxlen=STDERR_LINES)
        self._tools: list[RemoteTool] | None = None

    @property
    def ready(self) -> bool:
        return self.session is not None

    @property
    def ended(self) -> bool:
        return self._ended.is_set() or self._stopping or bool(self._lost)

    @property
    def failed(self) -> bool:
        return self._ended.is_set() and self._phase != "ready"

    def launch(self) -> None:
        self._deadline = asyncio.get_running_loop().time() + self.server.timeout_s
        self._task = asyncio.create_task(self._supervise(), name=f"mcp:{self.agent}:{self.server.name}")

    async def wait_ready(self) -> None:
        """Until the connection is ready (:class:`_StartFailed` if it ended, or at the deadline)."""
        if not self._settled.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(self._deadline):
                    await self._settled.wait()
        if self.ready and not self.ended:
            return
        if not self._settled.is_set():
            reason = f"did not {_DOING[self._phase]} within {self.server.timeout_s:g}s{self._notes()}"
            await self.stop()
            self.reason = reason
            raise _StartFailed(reason)
        await self._wait_ended()
        raise _StartFailed(self.reason)

    def tools(self, hub: McpHub) -> list[RemoteTool]:
        """The listed tools as :class:`RemoteTool` (built once per connection)."""
        if self._tools is None:
            self._tools = []
            for tool in self.listed:
                if not _TOOL_NAME.match(name := f"{self.server.name}__{tool.name}"):
                    log.warning(
                        "mcp_tool_skipped",
                        agent=self.agent,
                        server=self.server.name,
                        tool=tool.name,
                        reason=f"{name!r} is not 1-64 of A-Z a-z 0-9 _ -",
                    )
                    continue
                self._tools.append(
                    RemoteTool(
                        kind="mcp",
                        source=self.server.name,
                        remote_name=tool.name,
                        description=tool.description or tool.title or f"{tool.name} (no description)",
                        input_schema=tool.input_schema,
                        timeout_s=self.server.timeout_s,
                        call=_Call(hub, self.agent, self.server, tool.name),
                    )
                )
        return list(self._tools)

    async def call(self, tool: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """One ``tools/call``, raced against the connection's end."""
        session = self.session
        if session is None or self.ended:
            await self._wait_ended()
            raise ToolSourceError(f"the server {self.reason}{_RESTARTED}")
        request = asyncio.ensure_future(session.call_tool(tool, arguments))
        ended = asyncio.ensure_future(self._ended.wait())
        try:
            await asyncio.wait({request, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (request, ended):
                waiter.cancel()
            await asyncio.wait({request, ended})
        try:
            if request.cancelled():  # the connection ended first
                raise ToolSourceError(f"the server {self.reason}{_RESTARTED}")
            result = request.result()
        except MCPError as exc:
            error = exc.error
            if error.code == types.CONNECTION_CLOSED and self.ended:
                await self._wait_ended()
                raise ToolSourceError(f"the server {self.reason}{_RESTARTED}") from None
            if error.code == types.CONNECTION_CLOSED:  # this call's HTTP stream only
                raise ToolError(
                    f"the connection ended before the answer ({_one_line(error.message)})"
                ) from None
            if error.data == _TOO_BIG:
                raise ToolError(error.message) from None
            raise ToolError(f"refused the call: {_one_line(error.message)} (error {error.code})") from None
        except (ValidationError, ValueError, RuntimeError, TypeError) as exc:
            raise ToolError(f"answered garbage: {_one_line(str(exc))}") from None
        return _result_text(result)

    async def stop(self) -> None:
        """End the connection: politely if it is ready, within ``STOP_TIMEOUT`` in any case."""
        self._stopping = True
        self._wake.set()
        if self._task is None:
            return
        if not self.ready:
            self._scope.cancel()
        done, _ = await asyncio.wait({self._task}, timeout=STOP_GRACE)
        if not done:
            self._scope.cancel()  # the stdio process teardown is shielded and bounded on its own
            done, _ = await asyncio.wait({self._task}, timeout=STOP_TIMEOUT - STOP_GRACE)
        if not done:
            log.error("mcp_server_abandoned", agent=self.agent, server=self.server.name, pid=self.pid)
            self._task.cancel()
            return
        if not self._task.cancelled() and (error := self._task.exception()) is not None:
            log.error("mcp_supervisor_failed", agent=self.agent, server=self.server.name, error=repr(error))

    async def _wait_ended(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(STOP_TIMEOUT):
                await self._ended.wait()
        if not self.reason:
            self.reason = self._lost or "is not running"

    # --- the supervisor task --------------------------------------------------------------------

    async def _supervise(self) -> None:
        transport = self._stdio() if self.server.command else self._http()
        try:
            with self._scope:
                async with (
                    transport as (read, write),
                    ClientSession(
                        read, write, message_handler=self._on_message, client_info=CLIENT_INFO
                    ) as session,
                ):
                    self._phase = "initialize"
                    await session.initialize()
                    self._phase = "tools/list"
                    self.listed = await _list_tools(session)
                    self._phase = "ready"
                    self.session = session
                    self._settled.set()
                    log.info(
                        "mcp_server_ready",
                        agent=self.agent,
                        server=self.server.name,
                        transport=self.server.transport,
                        tools=len(self.listed),
                        **({"pid": self.pid} if self.pid else {}),
                    )
                    await self._wake.wait()
        except Exception as exc:
            self._failure = exc
        finally:
            self.session = None
            self.reason = self._why()
            if not self._stopping:
                stderr = {"stderr": "\n".join(self._stderr)} if self._stderr else {}
                log.warning(
                    "mcp_server_ended",
                    agent=self.agent,
                    server=self.server.name,
                    reason=self.reason,
                    **stderr,
                )
            self._settled.set()
            self._ended.set()

    def _lose(self, why: str) -> None:
        """The server went away (or must be dropped): end the connection, remembering why."""
        if not self._lost and not self._stopping:
            self._lost = why
        self._wake.set()

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, _NotJsonRpc) and not self._garbage:  # the first is logged, and kept
            self._garbage = str(message)
            log.warning(
                "mcp_server_stdout_garbage", agent=self.agent, server=self.server.name, line=self._garbage
            )

    def _why(self) -> str:
        """Why the connection ended, completing "the server ..."."""
        failure = _leaf(self._failure) if self._failure is not None else None
        if isinstance(failure, OSError) and self._phase == "start" and self.server.command:
            return f"could not be started ({_argv(self.server.command)[0]}): {failure}"
        if self._lost and self.returncode is not None:
            return (
                _exit(self.returncode)
                + (f": {self._stderr[-1]}" if self._stderr else "")
                + self._notes(stderr=False)
            )
        if self._lost:
            return self._lost + self._notes()
        if isinstance(failure, MCPError):
            return f"refused to {_DOING[self._phase]}: {_one_line(failure.error.message)}{self._notes()}"
        if isinstance(failure, ValueError):  # pydantic's ValidationError is one
            return f"answered garbage to {self._phase}: {_one_line(str(failure))}{self._notes()}"
        if isinstance(failure, httpx2.TransportError):
            return f"cannot be reached at {self.server.url}: {type(failure).__name__}: {failure}"
        if failure is not None:
            return (
                f"failed ({self._phase}): {type(failure).__name__}: {_one_line(str(failure))}{self._notes()}"
            )
        return "was stopped" if self._stopping else "closed the connection"

    def _notes(self, *, stderr: bool = True) -> str:
        """What else is known that may say why: an HTTP error, stdout garbage, the stderr's last line."""
        notes = [self._http_error] if self._http_error else []
        if self._garbage:
            notes.append(f"it wrote what is not JSON-RPC on stdout: {self._garbage}")
        if stderr and self._stderr:
            notes.append(f"stderr: {self._stderr[-1]}")
        return f" ({'; '.join(notes)})" if notes else ""

    # --- stdio ----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _stdio(
        self,
    ) -> AsyncIterator[tuple[MemoryObjectReceiveStream[Any], MemoryObjectSendStream[Any]]]:
        with anyio.CancelScope(shield=True):  # a spawn cancelled half-way could leak the process
            proc = await asyncio.create_subprocess_exec(
                *_argv(self.server.command),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=get_default_environment() | self.env,  # PATH, HOME...: nothing else of the worker's
                start_new_session=True,  # its own process group: a stop reaches what it started
            )
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
        lines = _Lines(MAX_MESSAGE_BYTES)
        try:
            with sink:
                while chunk := await proc.stdout.read(_READ_CHUNK):
                    for line in lines.feed(chunk):
                        if (message := self._message(line)) is not None:
                            await sink.send(message)
                self._stdout_closed = True
                self._lose("closed its stdout")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            while await proc.stdout.read(_READ_CHUNK):  # the session is gone: drain until the end
                pass

    def _message(self, line: bytes | _Oversized) -> SessionMessage | Exception | None:
        if isinstance(line, _Oversized):
            size = f"{_size(line.size)}, over the limit of {_size(MAX_MESSAGE_BYTES)} for one message"
            if (request_id := line.response_id()) is None:
                self._lose(f"wrote a message of {size}")
                return None
            error = types.ErrorData(
                code=types.INTERNAL_ERROR, message=f"the answer is {size}: ask for less", data=_TOO_BIG
            )
            return SessionMessage(types.JSONRPCError(jsonrpc="2.0", id=request_id, error=error))
        if not line.strip():
            return None
        try:
            return SessionMessage(types.jsonrpc_message_adapter.validate_json(line, by_name=False))
        except ValueError:
            return _NotJsonRpc(_preview(line))

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
            self._lose("closed its stdin")

    async def _read_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        lines = _Lines(4 * PREVIEW_CHARS)
        while chunk := await proc.stderr.read(_READ_CHUNK):
            for line in lines.feed(chunk):
                raw = line.head if isinstance(line, _Oversized) else line
                if text := _one_line(raw.decode(errors="replace")):
                    self._stderr.append(text)
                    log.debug("mcp_server_stderr", agent=self.agent, server=self.server.name, line=text)

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
        log.error("mcp_server_not_reaped", agent=self.agent, server=self.server.name, pid=proc.pid)
        transport = getattr(proc, "_transport", None)  # else it warns when collected (as the SDK does)
        if transport is not None:
            transport.close()

    # --- HTTP -----------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _http(self) -> AsyncIterator[tuple[Any, Any]]:
        timeout = httpx2.Timeout(HTTP_TIMEOUT, read=max(HTTP_READ_TIMEOUT, self.server.timeout_s))
        hooks = {"response": [self._on_response]}
        client = httpx2.AsyncClient(headers=self.headers, timeout=timeout, event_hooks=hooks)
        url = self.server.url
        async with (
            client,
            streamable_http_client(url, http_client=client, max_sse_event_size=MAX_MESSAGE_BYTES) as streams,
        ):
            yield streams

    async def _on_response(self, response: httpx2.Response) -> None:
        """Remember the last HTTP error of a message (the SDK says only "an error response"); a
        session the server no longer knows (404 once ready) ends the connection, so the next call
        reconnects. (The optional GET stream's 405 is no error.)"""
        if response.status_code >= 400 and response.request.method == "POST":
            self._http_error = f"HTTP {response.status_code} {response.reason_phrase}"
            if response.status_code == 404 and self.ready:
                self._lose(f"no longer knows the session ({self._http_error})")


# --- helpers --------------------------------------------------------------------------------------


def _argv(command: list[str]) -> list[str]:
    """``command`` with ``python``/``python3`` made the worker's own interpreter."""
    return [sys.executable, *command[1:]] if command[0] in ("python", "python3") else list(command)


def _expand(server: McpServer, environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The server's ``env`` and ``headers`` with every ``${VAR}`` filled from ``environ``
    (``${VAR:-default}``: the default when ``VAR`` is unset or empty, as in a shell)."""

    def fill(field: str, key: str, value: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = environ.get(name)
            if default is not None:
                return found or default
            if found is None:
                raise _StartFailed(
                    f"cannot start: {field}.{key} needs ${{{name}}}, not set in this worker's environment"
                )
            return found

        return ENV_REFERENCE.sub(one, value)

    env = {key: fill("env", key, value) for key, value in server.env.items()}
    headers = {key: fill("headers", key, value) for key, value in server.headers.items()}
    return env, headers


async def _list_tools(session: ClientSession) -> list[types.Tool]:
    tools: list[types.Tool] = []
    cursor: str | None = None
    for _ in range(MAX_LIST_PAGES):
        params = types.PaginatedRequestParams(cursor=cursor) if cursor else None
        page = await session.list_tools(params=params)
        tools.extend(page.tools)
        if not (cursor := page.next_cursor):
            return tools
    raise ValueError(f"the listing goes on past {MAX_LIST_PAGES} pages")


def _result_text(result: types.CallToolResult) -> tuple[str, bool]:
    """A tool result as the model reads it, and whether it is an error."""
    parts: list[str] = []
    texts = 0
    for block in result.content:
        match block:
            case types.TextContent():
                parts.append(block.text)
                texts += 1
            case types.ImageContent() | types.AudioContent():
                parts.append(f"[{block.type} {block.mime_type}, {_base64_size(block.data):,} bytes]")
            case types.ResourceLink():
                parts.append(
                    f"[resource link {block.uri}" + (f", {block.mime_type}]" if block.mime_type else "]")
                )
            case types.EmbeddedResource(resource=types.TextResourceContents() as resource):
                parts.append(f"[resource {resource.uri}]\n{resource.text}")
                texts += 1
            case types.EmbeddedResource(resource=types.BlobResourceContents() as resource):
                mime = f", {resource.mime_type}" if resource.mime_type else ""
                parts.append(f"[resource {resource.uri}{mime}, {_base64_size(resource.blob):,} bytes]")
            case _:
                parts.append(f"[{getattr(block, 'type', type(block).__name__)} content]")
    if not texts and result.structured_content is not None:
        parts.append(json.dumps(result.structured_content, ensure_ascii=False))
    return "\n".join(parts), bool(result.is_error)


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


def _exit(returncode: int) -> str:
    if returncode >= 0:
        return f"exited with code {returncode}"
    with contextlib.suppress(ValueError):
        return f"was killed by {signal.Signals(-returncode).name}"
    return f"was killed by signal {-returncode}"


def _leaf(error: BaseException) -> BaseException:
    """The first error in an exception group (the SDK's task groups wrap what failed)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _preview(data: bytes) -> str:
    text = data[:PREVIEW_CHARS].decode("utf-8", errors="replace")
    return repr(text) + ("..." if len(data) > PREVIEW_CHARS else "")


def _size(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _base64_size(data: str) -> int:
    return len(data) * 3 // 4 - data[-2:].count("=")
