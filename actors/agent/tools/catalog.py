"""Which built-in tools exist, and which ones an agent gets.

An agent gets exactly the tools its spec lists (the worker enforces it: a call to any other tool is
refused and recorded as ``agent.tool_denied``), plus its custom tools and what its MCP servers and
tool services offer within their allowlists (see :mod:`actors.agent.tools.sources`). The lead also
always gets ``delegate`` and ``message_agent``; no subagent may list those, and no custom tool may
take a built-in's name. The tools an agent's permission policy names must be its own: a built-in
it lists, a custom tool, the lead's two, or ``<source>__<tool>`` of one of its MCP servers or tool
services (within the source's allowlist when it has one; without one, the worker finds out).
"""

from __future__ import annotations

import difflib

from actors.agent.tools.base import Tool
from schemas.errors import SpecError
from schemas.team import AgentSpec, TeamSpec

LEAD_ONLY = frozenset({"delegate", "message_agent"})


def builtin_tools() -> dict[str, Tool]:
    from actors.agent.tools.workspace import WORKSPACE_TOOLS

    return dict(WORKSPACE_TOOLS)


def tools_for(spec: AgentSpec) -> list[Tool]:
    registry = builtin_tools()
    return [registry[name] for name in spec.tools if name in registry]


def check_team_tools(team: TeamSpec, *, source: str = "") -> None:
    """Raise :class:`SpecError` naming the agent and the tool if a spec lists an unknown tool, a
    custom tool takes the name of a built-in one, or a permission policy names a tool the agent does
    not have (with the file's line when the team has one)."""
    known = builtin_tools()
    where = source or (team.origin.file if team.origin else f"team {team.name!r}")
    lines = team.origin.lines if team.origin else {}

    def error(message: str, path: str, value: str) -> SpecError:
        return SpecError(message, source=where, path=path, value=value, line=lines.get(path))

    for path, spec, lead in [("lead", team.lead, True)] + [
        (f"agents[{i}]", a, False) for i, a in enumerate(team.agents)
    ]:
        for index, name in enumerate(spec.tools):
            if name in LEAD_ONLY:
                if lead:
                    continue
                message = f"tool {name!r} is the lead's; agent {spec.name!r} cannot use it"
                raise error(message, f"{path}.tools[{index}]", name)
            if name not in known:
                message = f"unknown tool {name!r} for agent {spec.name!r} (known: {', '.join(sorted(known))})"
                raise error(message, f"{path}.tools[{index}]", name)
        for index, custom in enumerate(spec.custom_tools):
            if custom.name in known or custom.name in LEAD_ONLY:
                message = (
                    f"custom tool {custom.name!r} of agent {spec.name!r} has the name of a built-in tool"
                )
                raise error(message, f"{path}.custom_tools[{index}]", custom.name)
        policy = spec.permissions
        for listed, names in (("always_ask", policy.always_ask), ("always_allow", policy.always_allow)):
            for index, name in enumerate(names):
                if problem := _not_its_tool(spec, name, lead=lead):
                    raise error(problem, f"{path}.permissions.{listed}[{index}]", name)


def _not_its_tool(spec: AgentSpec, name: str, *, lead: bool) -> str:
    """Why agent ``spec`` has no tool ``name`` ("" if it has it, or may have it: a source without an
    allowlist says what it offers only when the worker meets it)."""
    own = [*spec.tools, *(c.name for c in spec.custom_tools), *(sorted(LEAD_ONLY) if lead else [])]
    if name in own:
        return ""
    sources: dict[str, list[str] | None] = {s.name: s.tools for s in spec.mcp_servers}
    sources |= {s.name: s.tools for s in spec.services}
    source, _, remote = name.partition("__")
    if remote and source in sources:
        allowed = sources[source]
        if allowed is None or remote in allowed:
            return ""
        return (
            f"tool {name!r} in the permission policy of agent {spec.name!r} is not in the allowlist of "
            f"its source {source!r} ({', '.join(allowed) or 'empty'})"
        )
    served = [f"{s}__<tool>" for s in sources]
    hint = difflib.get_close_matches(name, own, n=1)
    known = ", ".join([*own, *served]) or "none"
    return f"agent {spec.name!r} has no tool {name!r} for its permission policy " + (
        f"(did you mean {hint[0]!r}?)" if hint else f"(its tools: {known})"
    )
