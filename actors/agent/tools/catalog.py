"""Which tools exist, and which ones an agent gets.

An agent gets exactly the tools its spec lists (the worker enforces it: a call to any other tool is
refused and recorded as ``agent.tool_denied``). The lead also always gets ``delegate`` and
``message_agent``; no subagent may list those.
"""

from __future__ import annotations

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
    """Raise :class:`SpecError` naming the agent and the tool if a spec lists an unknown tool."""
    known = builtin_tools()
    where = source or f"team {team.name!r}"
    for path, spec, lead in [("lead", team.lead, True)] + [
        (f"agents[{i}]", a, False) for i, a in enumerate(team.agents)
    ]:
        for index, name in enumerate(spec.tools):
            if name in LEAD_ONLY:
                if lead:
                    continue
                raise SpecError(
                    f"tool {name!r} is the lead's; agent {spec.name!r} cannot use it",
                    source=where,
                    path=f"{path}.tools[{index}]",
                    value=name,
                )
            if name not in known:
                raise SpecError(
                    f"unknown tool {name!r} for agent {spec.name!r} (known: {', '.join(sorted(known))})",
                    source=where,
                    path=f"{path}.tools[{index}]",
                    value=name,
                )
