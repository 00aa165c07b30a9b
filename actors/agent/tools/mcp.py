"""MCP servers' tools: the client side of MCP in a worker, over stdio or streamable HTTP.

- **One connection per (agent, server name)** in a :class:`McpHub`, started by the first
  :meth:`~McpHub.tools`, kept for later threads, stopped by :meth:`~McpHub.close`. Agents do not
  share a server process, so one agent's credentials never serve another's calls.
- **stdio**: a child process (:mod:`~actors.agent.tools.mcp_stdio`); ``python``/``python3`` as
  the first word of ``command`` is the worker's own interpreter, so a team file works in any
  virtualenv. The child's environment is the SDK's minimal default (``PATH``, ``HOME``, ``USER``,
  ``SHELL``, ``TERM``, ``LOGNAME``) plus the server's ``env``, ``${VAR}`` filled from the worker's
  environment, and nothing else: a secret reaches only the server that declares it. Its stderr is
  read all along; errors quote its last line (``exited with code 1: ModuleNotFoundError: ...``).
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
  naming its size (over stdio, :mod:`~actors.agent.tools.mcp_stdio` says why it reads stdout
  itself). Lines on stdout that are not JSON-RPC are logged and skipped (servers print banners), and
  named if the server then fails to start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import httpx2
import mcp_types as types
import structlog
from mcp import ClientSession, MCPError
from mcp.client.session import IncomingMessage
from mcp.client.streamable_http import streamable_http_client
from pydantic import ValidationError

from actors.agent.tools.base import MAX_RESULT_CHARS, RemoteTool, ToolContext, ToolError, ToolSourceError
from actors.agent.tools.mcp_spawn import MissingVariable, Prestarted, expand
from actors.agent.tools.mcp_stdio import TOO_BIG, NotJsonRpc, StdioServer
from schemas.team import McpServer

log = structlog.get_logger("staffwork.tools.mcp")

#: the most one message from a server may hold: a result of ``MAX_RESULT_CHARS`` characters in
#: UTF-8 with JSON escapes, twice (servers often repeat the text as structured content)
MAX_MESSAGE_BYTES = 8 * MAX_RESULT_CHARS
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
CLIENT_INFO = types.Implementation(name="staffwork", version="0.1.0")

_DOING = {"start": "start", "initialize": "initialize", "tools/list": "list its tools", "ready": "serve"}
_RESTARTED = "; it is started again on the next call"
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


class _StartFailed(Exception):
    """A connection could not be made; ``reason`` completes "the server ..." (one line)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class McpHub:
    """The MCP servers of the agents this process serves: one connection per (agent, server name),
    started on first use, kept, restarted after it dies."""

    def __init__(
        self, *, environ: Mapping[str, str] | None = None, prestarted: Prestarted | None = None
    ) -> None:
        self._environ: Mapping[str, str] = os.environ if environ is None else environ  # for ${VAR}s
        self._prestarted = prestarted  # processes started before the SDK was imported
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
                connection = _Connection(agent, server, env=env, headers=headers, prestarted=self._prestarted)
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
        self,
        agent: str,
        server: McpServer,
        *,
        env: dict[str, str],
        headers: dict[str, str],
        prestarted: Prestarted | None = None,
    ) -> None:
        self.agent = agent
        self.server = server
        self.headers = headers
        self.session: ClientSession | None = None
        self.listed: list[types.Tool] = []
        self.reason = ""  # why it ended, once it has: completes "the server ..."
        self._stdio = (
            StdioServer(
                server.command,
                env=env,
                max_message_bytes=MAX_MESSAGE_BYTES,
                on_lost=self._lose,
                agent=agent,
                server=server.name,
                prestarted=prestarted,
            )
            if server.command
            else None
        )
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
        self._tools: list[RemoteTool] | None = None

    @property
    def pid(self) -> int | None:
        return self._stdio.pid if self._stdio is not None else None

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
            if error.data == TOO_BIG:
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
        transport = self._stdio.connect() if self._stdio is not None else self._http()
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
        if isinstance(message, NotJsonRpc) and not self._garbage:  # the first is logged, and kept
            self._garbage = str(message)
            log.warning(
                "mcp_server_stdout_garbage", agent=self.agent, server=self.server.name, line=self._garbage
            )

    def _why(self) -> str:
        """Why the connection ended, completing "the server ..."."""
        failure = _leaf(self._failure) if self._failure is not None else None
        if isinstance(failure, OSError) and self._phase == "start" and self._stdio is not None:
            return f"could not be started ({self._stdio.argv[0]}): {failure}"
        if self._lost and self._stdio is not None and (exited := self._stdio.exited) is not None:
            return exited + (f": {self._stderr[-1]}" if self._stderr else "") + self._notes(stderr=False)
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

    @property
    def _stderr(self) -> Sequence[str]:
        """The last lines of a stdio server's stderr."""
        return self._stdio.stderr if self._stdio is not None else ()

    def _notes(self, *, stderr: bool = True) -> str:
        """What else is known that may say why: an HTTP error, stdout garbage, the stderr's last line."""
        notes = [self._http_error] if self._http_error else []
        if self._garbage:
            notes.append(f"it wrote what is not JSON-RPC on stdout: {self._garbage}")
        if stderr and self._stderr:
            notes.append(f"stderr: {self._stderr[-1]}")
        return f" ({'; '.join(notes)})" if notes else ""

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


def _expand(server: McpServer, environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    try:
        return expand(server, environ)
    except MissingVariable as exc:
        raise _StartFailed(str(exc)) from None


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


def _leaf(error: BaseException) -> BaseException:
    """The first error in an exception group (the SDK's task groups wrap what failed)."""
    while isinstance(error, BaseExceptionGroup) and error.exceptions:
        error = error.exceptions[0]
    return error


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _base64_size(data: str) -> int:
    return len(data) * 3 // 4 - data[-2:].count("=")
