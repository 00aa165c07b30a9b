"""The agent object's shapes, as stored and as the SDK's ``BetaManagedAgentsAgent`` reads them, the
request bodies of create and update, and resolving a request's forms into the stored ones.

Resolving: the model string becomes ``{id, ...}``; ``agent_toolset_20260401`` lists every tool with
its ``enabled`` and ``permission_policy``; an ``mcp_toolset`` must name a declared URL server and
every server must have one; custom tools keep name, description and input schema. What staffwork
cannot run is refused with a 400 that says so: enabling ``bash``, ``web_fetch`` or ``web_search``
(no counterpart: they resolve to ``enabled: false``), the ``auto`` permission policy (staffwork has
no judge of its own; ``always_ask`` on a toolset tool becomes the agent's staffwork permission
policy), asking for MCP tools, disabling single MCP tools
under an enabled default (staffwork allowlists them), skills, an ``aws_role`` identity. ``effort``,
``speed`` and ``inference_geo`` are stored and returned, but staffwork's model calls do not use them.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType

from actors.agent.tools.catalog import LEAD_ONLY, builtin_tools
from actors.api.environments import NonEmpty
from actors.api.errors import ApiError, bad_request
from schemas.team import MAX_TOOL_SOURCES

#: the hosted toolset's tools, and the staffwork built-in each one is (None: no counterpart)
TOOLSET: dict[str, str | None] = {
    "bash": None,
    "edit": "write_file",
    "read": "read_file",
    "write": "write_file",
    "glob": "list_files",
    "grep": "grep",
    "web_fetch": None,
    "web_search": None,
}
ToolsetName = Literal["bash", "edit", "read", "write", "glob", "grep", "web_fetch", "web_search"]
Level = Literal["low", "medium", "high", "xhigh", "max"]
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


# --- the stored and returned shapes ---------------------------------------------------------------


class AlwaysAllow(msgspec.Struct, frozen=True, tag="always_allow", tag_field="type"):
    pass


class AlwaysAsk(msgspec.Struct, frozen=True, tag="always_ask", tag_field="type"):
    pass


Policy = AlwaysAllow | AlwaysAsk


class ToolDefaults(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool = True
    permission_policy: Policy = AlwaysAllow()


class ToolConfig(msgspec.Struct, frozen=True, kw_only=True):
    type: str
    name: str
    enabled: bool
    permission_policy: Policy = AlwaysAllow()


class AgentToolset(msgspec.Struct, frozen=True, kw_only=True, tag="agent_toolset_20260401", tag_field="type"):
    configs: list[ToolConfig]
    default_config: ToolDefaults = ToolDefaults()

    def builtins(self) -> list[str]:
        """The staffwork built-in tools this toolset enables, in the toolset's order."""
        names = [TOOLSET[c.name] for c in self.configs if c.enabled]
        return list(dict.fromkeys(n for n in names if n))

    def asked(self) -> list[str]:
        """The enabled staffwork built-ins whose calls wait for a confirmation (``always_ask``; a
        built-in two toolset tools map to, as ``write_file`` for write and edit, asks if either does)."""
        names = [
            TOOLSET[c.name] for c in self.configs if c.enabled and isinstance(c.permission_policy, AlwaysAsk)
        ]
        return list(dict.fromkeys(n for n in names if n))


class McpToolConfig(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    enabled: bool
    permission_policy: AlwaysAllow = AlwaysAllow()


class McpToolset(msgspec.Struct, frozen=True, kw_only=True, tag="mcp_toolset", tag_field="type"):
    mcp_server_name: str
    configs: list[McpToolConfig] = msgspec.field(default_factory=list)
    default_config: ToolDefaults = ToolDefaults()

    def allowlist(self) -> list[str] | None:
        """The MCP tools enabled, by name (None: every tool the server offers)."""
        return [c.name for c in self.configs if c.enabled] if not self.default_config.enabled else None


class CustomTool(msgspec.Struct, frozen=True, kw_only=True, tag="custom", tag_field="type"):
    name: str
    description: str
    input_schema: dict[str, Any]


Tool = AgentToolset | McpToolset | CustomTool


class McpServer(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["url"] = "url"
    name: str
    url: str


class Effort(msgspec.Struct, frozen=True):
    type: Level


class Model(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    effort: Effort | None = None
    speed: Literal["standard", "fast"] | None = None
    inference_geo: str | None = None


class AgentRef(msgspec.Struct, frozen=True, kw_only=True, tag="agent", tag_field="type"):
    id: str
    version: int


class Coordinator(msgspec.Struct, frozen=True, kw_only=True, tag="coordinator", tag_field="type"):
    agents: list[AgentRef]


class ServiceAccount(msgspec.Struct, frozen=True, tag="service_account", tag_field="type"):
    pass


class Agent(msgspec.Struct, frozen=True, kw_only=True):
    """One version of an agent, as stored and as the SDK reads it."""

    id: str
    type: Literal["agent"] = "agent"
    version: int = 1
    name: str
    description: str | None = None
    system: str | None = None
    model: Model
    tools: list[Tool] = msgspec.field(default_factory=list)
    mcp_servers: list[McpServer] = msgspec.field(default_factory=list)
    skills: list[Any] = msgspec.field(default_factory=list)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    execution_identity: ServiceAccount = ServiceAccount()
    multiagent: Coordinator | None = None
    created_at: str
    updated_at: str
    archived_at: str | None = None


# --- request bodies -------------------------------------------------------------------------------


class _Allow(msgspec.Struct, frozen=True, tag="always_allow", tag_field="type"):
    pass


class _Ask(msgspec.Struct, frozen=True, tag="always_ask", tag_field="type"):
    pass


class _Auto(msgspec.Struct, frozen=True, tag="auto", tag_field="type"):
    pass


_Policy = _Allow | _Ask | _Auto


class _DefaultsIn(msgspec.Struct, frozen=True, kw_only=True):
    enabled: bool | None = None
    permission_policy: _Policy | None = None


class _ToolConfigIn(msgspec.Struct, frozen=True, kw_only=True):
    name: ToolsetName
    enabled: bool | None = None
    permission_policy: _Policy | None = None


class _ToolsetIn(msgspec.Struct, frozen=True, kw_only=True, tag="agent_toolset_20260401", tag_field="type"):
    configs: list[_ToolConfigIn] = msgspec.field(default_factory=list)
    default_config: _DefaultsIn | None = None


class _McpConfigIn(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    enabled: bool | None = None
    permission_policy: _Policy | None = None


class _McpToolsetIn(msgspec.Struct, frozen=True, kw_only=True, tag="mcp_toolset", tag_field="type"):
    mcp_server_name: str
    configs: list[_McpConfigIn] = msgspec.field(default_factory=list)
    default_config: _DefaultsIn | None = None


class _ModelIn(msgspec.Struct, frozen=True, kw_only=True):
    id: NonEmpty
    effort: Level | Effort | None = None
    speed: Literal["standard", "fast"] | None = None
    inference_geo: str | None = None


class AgentRefIn(msgspec.Struct, frozen=True, kw_only=True, tag="agent", tag_field="type"):
    id: str
    version: Annotated[int, msgspec.Meta(ge=1)] | None = None


class SelfIn(msgspec.Struct, frozen=True, tag="self", tag_field="type"):
    pass


class AdvisorIn(msgspec.Struct, frozen=True, kw_only=True, tag="advisor", tag_field="type"):
    model: str


class CoordinatorIn(msgspec.Struct, frozen=True, kw_only=True, tag="coordinator", tag_field="type"):
    agents: list[str | AgentRefIn | SelfIn | AdvisorIn]


class Multiagent2In(msgspec.Struct, frozen=True, tag="multiagent_20261001", tag_field="type"):
    pass


class AwsRoleIn(msgspec.Struct, frozen=True, tag="aws_role", tag_field="type"):
    pass


ToolIn = _ToolsetIn | _McpToolsetIn | CustomTool


class CreateBody(msgspec.Struct, frozen=True, kw_only=True):
    model: NonEmpty | _ModelIn
    name: NonEmpty
    description: str | None = None
    system: str | None = None
    tools: list[ToolIn] = msgspec.field(default_factory=list)
    mcp_servers: list[McpServer] = msgspec.field(default_factory=list)
    skills: list[Any] = msgspec.field(default_factory=list)
    multiagent: CoordinatorIn | Multiagent2In | None = None
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    execution_identity: ServiceAccount | AwsRoleIn | None = None


class UpdateBody(msgspec.Struct, frozen=True, kw_only=True):
    version: Annotated[int, msgspec.Meta(ge=1)] | UnsetType = UNSET
    model: NonEmpty | _ModelIn | UnsetType = UNSET
    name: NonEmpty | UnsetType = UNSET
    description: str | UnsetType | None = UNSET
    system: str | UnsetType | None = UNSET
    tools: list[ToolIn] | UnsetType | None = UNSET
    mcp_servers: list[McpServer] | UnsetType | None = UNSET
    skills: list[Any] | UnsetType | None = UNSET
    multiagent: CoordinatorIn | Multiagent2In | UnsetType | None = UNSET
    metadata: dict[str, str | None] | UnsetType | None = UNSET
    execution_identity: ServiceAccount | AwsRoleIn | UnsetType | None = UNSET


# --- resolving a request's forms ------------------------------------------------------------------


def resolve_model(given: str | _ModelIn) -> Model:
    if isinstance(given, str):
        return Model(id=given)
    effort = Effort(given.effort) if isinstance(given.effort, str) else given.effort
    return Model(id=given.id, effort=effort, speed=given.speed, inference_geo=given.inference_geo)


def _allow(policy: _Policy | None, where: str) -> None:
    if policy is not None and not isinstance(policy, _Allow):
        kind = type(policy).__struct_config__.tag
        raise bad_request(
            f"{where}.permission_policy {kind!r} is not supported here: staffwork asks for confirmations "
            "of an agent_toolset's tools only (use 'always_allow', or leave the tool disabled)"
        )


def _policy(policy: _Policy | None, where: str, default: Policy) -> Policy:
    """A toolset tool's policy: ``always_allow`` or ``always_ask`` (``auto`` has no staffwork
    counterpart: a 400); unset, the toolset's default."""
    match policy:
        case None:
            return default
        case _Allow():
            return AlwaysAllow()
        case _Ask():
            return AlwaysAsk()
    raise bad_request(
        f"{where}.permission_policy 'auto' is not supported: staffwork has no judge of its own for "
        "tool calls (use 'always_allow' or 'always_ask')"
    )


def _toolset(given: _ToolsetIn, where: str) -> AgentToolset:
    defaults = given.default_config or _DefaultsIn()
    default_policy = _policy(defaults.permission_policy, f"{where}.default_config", AlwaysAllow())
    default_on = defaults.enabled is not False
    overrides: dict[str, bool | None] = {}
    policies: dict[str, Policy] = {}
    for i, config in enumerate(given.configs):
        if config.name in overrides:
            raise bad_request(f"{where}.configs[{i}]: tool {config.name!r} is configured twice")
        policies[config.name] = _policy(config.permission_policy, f"{where}.configs[{i}]", default_policy)
        if config.enabled and TOOLSET[config.name] is None:
            raise bad_request(
                f"{where}.configs[{i}]: tool {config.name!r} is not available in staffwork (available: "
                f"{', '.join(n for n, b in TOOLSET.items() if b)}); leave it out or set enabled: false"
            )
        overrides[config.name] = config.enabled
    configs = []
    for name, builtin in TOOLSET.items():
        wanted = overrides.get(name)
        enabled = builtin is not None and (default_on if wanted is None else wanted)
        policy = policies.get(name, default_policy)
        configs.append(ToolConfig(type=name, name=name, enabled=enabled, permission_policy=policy))
    defaults_out = ToolDefaults(enabled=default_on, permission_policy=default_policy)
    return AgentToolset(configs=configs, default_config=defaults_out)


def _mcp_toolset(given: _McpToolsetIn, where: str) -> McpToolset:
    defaults = given.default_config or _DefaultsIn()
    _allow(defaults.permission_policy, f"{where}.default_config")
    default_on = defaults.enabled is not False
    configs: list[McpToolConfig] = []
    for i, config in enumerate(given.configs):
        _allow(config.permission_policy, f"{where}.configs[{i}]")
        if not _TOOL_NAME.match(config.name):
            raise bad_request(f"{where}.configs[{i}].name {config.name!r} is not 1 to 64 of [a-zA-Z0-9_-]")
        if any(c.name == config.name for c in configs):
            raise bad_request(f"{where}.configs[{i}]: tool {config.name!r} is configured twice")
        enabled = default_on if config.enabled is None else config.enabled
        if default_on and not enabled:
            raise bad_request(
                f"{where}.configs[{i}]: disabling MCP tool {config.name!r} while the default is enabled is "
                "not supported (staffwork allowlists MCP tools): set default_config.enabled false and "
                "enable the tools you want"
            )
        configs.append(McpToolConfig(name=config.name, enabled=enabled))
    return McpToolset(
        mcp_server_name=given.mcp_server_name,
        configs=configs,
        default_config=ToolDefaults(enabled=default_on),
    )


def resolve_tools(tools: list[ToolIn], servers: list[McpServer]) -> list[Tool]:
    """The tools resolved, checked against ``servers`` and staffwork's built-in names."""
    if len(servers) > MAX_TOOL_SOURCES:
        raise bad_request(f"mcp_servers has {len(servers)} servers, over the {MAX_TOOL_SOURCES} allowed")
    declared: set[str] = set()
    for i, server in enumerate(servers):
        if not 1 <= len(server.name) <= 255:
            raise bad_request(f"mcp_servers[{i}].name must be 1 to 255 characters")
        if server.name in declared:
            raise bad_request(f"mcp_servers[{i}]: server name {server.name!r} is used twice")
        if not re.match(r"^https?://[^\s/]+", server.url):
            raise bad_request(f"mcp_servers[{i}].url {server.url!r} is not an http(s) URL")
        declared.add(server.name)
    resolved: list[Tool] = []
    names: set[str] = set()
    reserved = set(builtin_tools()) | LEAD_ONLY
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        match tool:
            case _ToolsetIn():
                if any(isinstance(t, AgentToolset) for t in resolved):
                    raise bad_request(f"{where}: agent_toolset_20260401 is listed twice")
                resolved.append(_toolset(tool, where))
            case _McpToolsetIn(mcp_server_name=named):
                if named not in declared:
                    raise bad_request(f"{where}.mcp_server_name {named!r} is not in mcp_servers")
                if any(isinstance(t, McpToolset) and t.mcp_server_name == named for t in resolved):
                    raise bad_request(f"{where}: MCP server {named!r} has two mcp_toolsets")
                resolved.append(_mcp_toolset(tool, where))
            case CustomTool(name=name):
                if not _TOOL_NAME.match(name):
                    raise bad_request(f"{where}.name {name!r} is not 1 to 64 of [a-zA-Z0-9_-]")
                if name in names:
                    raise bad_request(f"{where}: custom tool {name!r} is listed twice")
                if name in reserved:
                    raise ApiError(
                        400,
                        f"{where}: custom tool {name!r} has the name of a staffwork built-in tool "
                        f"({', '.join(sorted(reserved))})",
                        error_code="tool_name_conflict",
                    )
                if not tool.description:
                    raise bad_request(f"{where}: custom tool {name!r} needs a description")
                if tool.input_schema.get("type") != "object":
                    raise bad_request(f"{where}: custom tool {name!r}: input_schema.type must be 'object'")
                names.add(name)
                resolved.append(tool)
    used = {t.mcp_server_name for t in resolved if isinstance(t, McpToolset)}
    for i, server in enumerate(servers):
        if server.name not in used:
            raise bad_request(f"mcp_servers[{i}]: server {server.name!r} has no mcp_toolset in tools")
    return resolved


def refuse_unsupported(skills: list[Any], identity: object) -> None:
    if skills:
        raise bad_request("skills are not supported by staffwork: send an empty list or omit them")
    if isinstance(identity, AwsRoleIn):
        raise bad_request(
            "execution_identity 'aws_role' is not supported by staffwork: omit it (service_account)"
        )


def as_requests(tools: list[Tool]) -> list[ToolIn]:
    """Stored tools as the request forms that resolve to them again (to recheck them against new
    ``mcp_servers``)."""
    return msgspec.convert(msgspec.to_builtins(tools), list[ToolIn])
