"""An agent's toolbox: its built-in tools, its MCP servers' and tool services' tools, its custom tools.

A worker builds the toolbox at the start of each request of a thread (:meth:`ToolSources.toolbox`):
- MCP servers run in this process (one connection per agent and server, kept between threads, so a
  credential in a server's ``env`` lives only in the worker that serves the agent allowed to use it);
- tool services are found on NATS (``$SRV.INFO.<name>``);
- each source's tools are filtered by its allowlist in the team file and named ``<source>__<tool>``.

Nothing about a source stops the thread: a source that fails (it does not start, dies, times out,
answers garbage), an allowlist naming a tool the source does not offer, or a name that collides with
another tool is one clear line, sent to the trace (``agent.tool_source_failed``) and to the agent
(in its system prompt, and as the result of a call to one of that source's tools), naming the team
file and line when the team came from a file. The other tools work as usual.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import structlog

from actors.agent.tools.base import AnyTool, RemoteTool, Toolbox, ToolSourceError
from actors.agent.tools.catalog import tools_for
from actors.agent.tools.custom import CallerTool
from actors.agent.tools.mcp_spawn import (
    MissingVariable,
    Prestarted,
    expand,
    process_environment,
    stdio_argv,
)
from bus.connection import Bus
from schemas.team import AgentSpec, McpServer, TeamSpec, ToolService
from schemas.trace import ToolSourceFailed

if TYPE_CHECKING:
    from actors.agent.tools.mcp import McpHub

log = structlog.get_logger("staffwork.tools")


class ToolSources:
    """The tool sources of the agents this process serves; :meth:`close` stops their MCP servers."""

    def __init__(self, *, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ  # for the servers' ${VAR}s
        self._mcp: McpHub | None = None  # made on first use: the mcp SDK is imported only then
        self._prestarted = Prestarted()

    def _hub(self) -> McpHub:
        if self._mcp is None:
            from actors.agent.tools.mcp import McpHub

            self._mcp = McpHub(environ=self._environ, prestarted=self._prestarted)
        return self._mcp

    async def close(self) -> None:
        if self._mcp is not None:
            await self._mcp.close()
        await self._prestarted.close()

    async def warm(self, spec: AgentSpec) -> None:
        """Start ``spec``'s MCP servers now, so its first request does not wait for them (a server's
        start is mostly its interpreter importing the MCP SDK). A failure is left for that request
        to report, with the team file's line."""
        if not spec.mcp_servers:
            return
        # The servers' processes first (they import the SDK meanwhile), then the SDK here, ~0.45 s,
        # in a thread so the worker's event loop serves on; the connections adopt the processes.
        for server in spec.mcp_servers:
            if server.command:
                with contextlib.suppress(MissingVariable, OSError):  # the connection reports it
                    env = process_environment(expand(server, self._environ)[0])
                    await self._prestarted.start(spec.name, server.name, stdio_argv(server.command), env)
        await asyncio.to_thread(importlib.import_module, "actors.agent.tools.mcp")
        hub = self._hub()
        outcomes = await asyncio.gather(
            *(hub.tools(spec.name, server) for server in spec.mcp_servers), return_exceptions=True
        )
        for server, outcome in zip(spec.mcp_servers, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                log.debug("mcp_warm_up_failed", agent=spec.name, server=server.name, error=str(outcome))

    async def toolbox(
        self,
        bus: Bus,
        team: TeamSpec,
        spec: AgentSpec,
        *,
        session_id: str,
        thread_id: str,
        extra: Iterable[AnyTool] = (),
    ) -> Toolbox:
        """The tools ``spec`` may call in this request: ``extra`` (the lead's), its built-ins, its
        custom tools, and what its sources offer now. Problems are reported, never raised."""
        tools: dict[str, AnyTool] = {}
        for found in [*extra, *tools_for(spec), *(CallerTool(c) for c in spec.custom_tools)]:
            tools[found.name] = found
        problems: dict[str, str] = {}
        base = team.path_of(spec)
        sources: list[tuple[str, McpServer | ToolService]] = [
            *((f"{base}.mcp_servers[{i}]", s) for i, s in enumerate(spec.mcp_servers)),
            *((f"{base}.services[{i}]", s) for i, s in enumerate(spec.services)),
        ]
        offered = await asyncio.gather(*(self._offered(bus, spec, source) for _, source in sources))
        for (path, source), result in zip(sources, offered, strict=True):
            if isinstance(result, str):
                problems[source.name] = f"{team.where(path)}: {result}"
                continue
            by_name = {t.remote_name: t for t in result}
            allowed = source.tools if source.tools is not None else list(by_name)
            for index, name in enumerate(allowed):
                remote = by_name.get(name)
                if remote is None:
                    problems[f"{source.name}__{name}"] = (
                        f"{team.where(f'{path}.tools[{index}]')}: tool {name!r} is not offered by "
                        f"{_what(source)} (it offers: {', '.join(sorted(by_name)) or 'nothing'})"
                    )
                elif remote.name in tools:
                    problems[remote.name] = (
                        f"{team.where(path)}: {_what(source)}'s tool {name!r} is named {remote.name!r}, "
                        f"which agent {spec.name!r} already has"
                    )
                else:
                    tools[remote.name] = remote
        for key, message in problems.items():
            log.warning("tool_source_failed", agent=spec.name, source=key, error=message)
            source_name = key.split("__", 1)[0]
            kind = "mcp" if any(s.name == source_name for s in spec.mcp_servers) else "service"
            await bus.emit(
                ToolSourceFailed(
                    session_id=session_id,
                    thread_id=thread_id,
                    agent=spec.name,
                    kind=kind,
                    source=source_name,
                    message=message,
                )
            )
        return Toolbox(tools.values(), unavailable=problems)

    async def _offered(
        self, bus: Bus, spec: AgentSpec, source: McpServer | ToolService
    ) -> list[RemoteTool] | str:
        """What ``source`` offers now, or the one line saying why it cannot be used."""
        try:
            if isinstance(source, McpServer):
                return await self._hub().tools(spec.name, source)
            from actors.agent.tools.services import service_tools

            return await service_tools(bus, source)
        except ToolSourceError as exc:
            return str(exc)
        except Exception as exc:  # a source must never take the thread down
            log.exception("tool_source_crashed", agent=spec.name, source=source.name)
            return f"{_what(source)} failed: {type(exc).__name__}: {exc}"


def _what(source: McpServer | ToolService) -> str:
    return f"MCP server {source.name!r}" if isinstance(source, McpServer) else f"tool service {source.name!r}"
