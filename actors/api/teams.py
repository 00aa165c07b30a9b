"""An API agent as a staffwork team: what a session of the agent runs.

:func:`team_of` maps one agent version and the versions its ``coordinator`` roster pins:

- the agent is the team's **lead** (it plans, delegates with ``delegate``/``message_agent`` and
  writes the answer; its own tools let it work too), each roster agent a **subagent**;
- a ``self`` entry is a subagent that is a copy of the lead (same model, prompt and tools, without
  delegation), named ``<lead>-self``: the lead can hand itself parallel work as the hosted
  coordinator spawns threads of itself;
- names become staffwork names (lower-case tokens, unique in the team); model ids and system
  prompts are carried over;
- ``agent_toolset_20260401``: ``read`` → ``read_file``, ``write``/``edit`` → ``write_file`` (a whole
  file), ``glob`` → ``list_files``, ``grep`` → ``grep`` (see :data:`actors.api.agent_shapes.TOOLSET`);
- ``custom`` tools → staffwork custom tools (the session's caller answers them);
- ``mcp_servers`` with their ``mcp_toolset`` → MCP servers over streamable HTTP, with the enabled
  tools as the allowlist when the toolset's default is disabled; a server's name is made a
  staffwork tool-source name when it is not one already.

:func:`team_for` loads the roster's versions from the API's records and maps them.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from actors.agent.tools.catalog import check_team_tools
from actors.api.agent_shapes import Agent, AgentToolset, CustomTool, McpToolset
from actors.api.agents import load as load_agent
from actors.api.agents import version_of
from actors.api.records import Records
from schemas.errors import SpecError
from schemas.team import AgentSpec, McpServer, PermissionPolicy, TeamSpec
from schemas.team import CustomTool as StaffworkCustomTool


def team_of(agent: Agent, roster: Sequence[Agent]) -> TeamSpec:
    """The team of ``agent`` (one version) with ``roster``, the versions its multiagent entries pin
    (``self`` needs none). A :class:`SpecError` if a pinned version is missing or the team's tools
    do not check."""
    names: set[str] = set()
    lead = _spec(agent, _unique(agent.name, names, fallback="lead"))
    members: list[AgentSpec] = []
    for ref in agent.multiagent.agents if agent.multiagent else []:
        if ref.id == agent.id:
            copy = _spec(agent, _unique(f"{lead.name}-self", names, fallback="self"))
            members.append(copy)
            continue
        found = next((a for a in roster if a.id == ref.id and a.version == ref.version), None)
        if found is None:
            raise SpecError(f"roster agent {ref.id} version {ref.version} was not given", source=agent.id)
        members.append(_spec(found, _unique(found.name, names, fallback="agent")))
    team = TeamSpec(
        name=_token(agent.name, fallback="team"),
        description=agent.description or "",
        model=agent.model.id,
        lead=lead,
        agents=members,
    )
    check_team_tools(team, source=f"agent {agent.id} v{agent.version}")
    return team


async def team_for(records: Records, workspace: str, agent: Agent) -> TeamSpec:
    """:func:`team_of` ``agent`` with its roster's pinned versions read from ``records``."""
    roster: list[Agent] = []
    for ref in agent.multiagent.agents if agent.multiagent else []:
        if ref.id == agent.id:
            continue
        found = await load_agent(records, workspace, ref.id)
        if found is None:
            raise SpecError(f"roster agent {ref.id} no longer exists", source=agent.id)
        roster.append(await version_of(records, workspace, found[0], ref.version))
    return team_of(agent, roster)


def _spec(agent: Agent, name: str) -> AgentSpec:
    builtins: list[str] = []
    asked: list[str] = []
    customs: list[StaffworkCustomTool] = []
    toolsets = {t.mcp_server_name: t for t in agent.tools if isinstance(t, McpToolset)}
    for tool in agent.tools:
        if isinstance(tool, AgentToolset):
            builtins, asked = tool.builtins(), tool.asked()
        elif isinstance(tool, CustomTool):
            customs.append(
                StaffworkCustomTool(
                    name=tool.name, description=tool.description, input_schema=tool.input_schema
                )
            )
    sources: set[str] = set()
    servers = [
        McpServer(
            name=_source(server.name, sources),
            url=server.url,
            tools=toolsets[server.name].allowlist() if server.name in toolsets else [],
        )
        for server in agent.mcp_servers
    ]
    return AgentSpec(
        name=name,
        description=agent.description or "",
        model=agent.model.id,
        system=agent.system or "",
        tools=builtins,
        custom_tools=customs,
        mcp_servers=servers,
        permissions=PermissionPolicy(always_ask=asked),
    )


def _token(text: str, *, fallback: str, limit: int = 48) -> str:
    """``text`` as a staffwork name: lower-case ``[a-z0-9_-]``, starting with a letter."""
    token = re.sub(r"[^a-z0-9_-]+", "-", text.lower()).strip("-_")
    if not token or not token[0].isalpha():
        token = f"{fallback}-{token}".rstrip("-")
    return token[:limit].rstrip("-_")


def _unique(text: str, taken: set[str], *, fallback: str) -> str:
    base = _token(text, fallback=fallback, limit=44)
    name, n = base, 2
    while name in taken:
        name, n = f"{base}-{n}", n + 1
    taken.add(name)
    return name


def _source(text: str, taken: set[str]) -> str:
    """An MCP server's name as a staffwork tool-source name (letters and digits joined by single
    ``-``/``_``, at most 32), unique in the agent; a valid name is kept as it is."""
    parts = [p for p in re.split(r"[^A-Za-z0-9]+", text) if p]
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*", text) and len(text) <= 32:
        base = text
    else:
        base = "-".join(parts) or "mcp"
        if not base[0].isalpha():
            base = f"mcp-{base}"
        base = base[:28].rstrip("-")
    name, n = base, 2
    while name in taken:
        name, n = f"{base[:28]}-{n}", n + 1
    taken.add(name)
    return name
