"""Agent specs and team specs, and reading them from TOML with errors a person can act on.

:func:`parse_team` reads a team file (``[lead]``, ``[[agents]]``, team defaults such as ``model``,
and optionally ``[outcome]`` and ``[[webhooks]]``) into a :class:`TeamSpec`. Any mistake is one
:class:`SpecError` line with the file, the line, the path in the document and the value:
``team.toml:12: agents[1].max_turns: expected int, got str 'ten'``.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Sequence
from typing import Annotated, Any, Literal

import msgspec

from schemas.errors import SpecError
from schemas.outcome import Outcome
from schemas.prices import ModelPrice
from schemas.webhooks import WebhookSpec

#: Agent and team names are subject tokens and file-name safe.
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_-]{0,47}$")]

#: A tool's name as the model sees it (the Messages API's rule).
ToolName = Annotated[str, msgspec.Meta(pattern=r"^[a-zA-Z0-9_-]{1,64}$")]
#: An MCP server's or a tool service's name in a team file: the first part of its tools' names
#: (``<source>__<tool>``), so it never holds ``__`` itself.
SourceName = Annotated[
    str, msgspec.Meta(pattern=r"^[A-Za-z][A-Za-z0-9]*(?:[_-][A-Za-z0-9]+)*$", max_length=32)
]

DEFAULT_MODEL = "claude-sonnet-4-6"
MAX_AGENTS = 20
MAX_MEMORY_STORES = 8
MAX_TOOL_SOURCES = 16
#: ``${VAR}`` in an MCP server's ``env`` and ``headers``: the value comes from the worker's environment
#: (``${VAR:-default}``: the default when it is unset or empty, as in a shell).
ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class MemoryAttachment(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A memory store an agent may read (``read_only``) or also write (``read_write``)."""

    #: the memory store's name
    store: Name
    #: whether the agent may only read it or also write it
    access: Literal["read_only", "read_write"] = "read_only"
    #: what the agent is told about the store (at most 4096 characters)
    instructions: Annotated[str, msgspec.Meta(max_length=4096)] = ""


def _check_references(field: str, values: dict[str, str]) -> None:
    for key, value in values.items():
        if not ENV_REFERENCE.search(value):
            raise ValueError(
                f"{field}.{key} = {value!r} does not name an environment variable: write ${{VAR}} "
                f"(with any text around it, as in 'Bearer ${{TOKEN}}'), so no secret is in the team file"
            )
        if "${" in ENV_REFERENCE.sub("", value):
            raise ValueError(f"{field}.{key} = {value!r} has a malformed ${{...}} reference")


class McpServer(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """An MCP server whose tools an agent may call, run by the worker that serves the agent: a
    ``command`` it starts (stdio) or a ``url`` (streamable HTTP). ``env`` (stdio) and ``headers``
    (HTTP) take their values from the worker's environment (``${VAR}``), so a credential lives only
    where the agent allowed to use it runs. ``tools`` is the allowlist, as the server names them
    (absent: every tool it offers); the model sees them as ``<name>__<tool>``."""

    #: the server's name: the model sees its tools as ``<name>__<tool>``
    name: SourceName
    #: the program and arguments to start (stdio); give this or ``url``
    command: list[str] = msgspec.field(default_factory=list)
    #: the server's streamable HTTP endpoint; give this or ``command``
    url: str = ""
    #: environment of the started process; values name the worker's variables (``${VAR}``)
    env: dict[str, str] = msgspec.field(default_factory=dict)
    #: HTTP headers of each request; values name the worker's variables (``${VAR}``)
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    #: the allowlist, as the server names its tools (absent: every tool it offers)
    tools: list[ToolName] | None = None
    #: the longest a start, a listing or one call may take
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise ValueError(f"MCP server {self.name!r} needs exactly one of command (stdio) or url (HTTP)")
        if self.url and not re.match(r"^https?://[^\s/]+", self.url):
            raise ValueError(f"MCP server {self.name!r}: url {self.url!r} is not an http(s) URL")
        if self.env and not self.command:
            raise ValueError(
                f"MCP server {self.name!r}: env is for a command's process; use headers with a url"
            )
        if self.headers and not self.url:
            raise ValueError(f"MCP server {self.name!r}: headers are for a url; use env with a command")
        _check_references("env", self.env)
        _check_references("headers", self.headers)
        _no_repeats(f"MCP server {self.name!r}", self.tools)

    @property
    def transport(self) -> str:
        return "stdio" if self.command else "http"


class ToolService(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A NATS micro service whose endpoints are tools (found with ``$SRV.INFO.<name>``); any process
    in any language can serve it. ``tools`` is the allowlist of endpoint names (absent: all); the
    model sees them as ``<name>__<endpoint>``."""

    #: the micro service's name: the model sees its endpoints as ``<name>__<endpoint>``
    name: SourceName
    #: the allowlist of endpoint names (absent: all)
    tools: list[ToolName] | None = None
    #: the longest discovery or one call may take
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 60.0

    def __post_init__(self) -> None:
        _no_repeats(f"tool service {self.name!r}", self.tools)


class CustomTool(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A tool the caller answers (the hosted service's ``custom`` tools): a call idles the thread
    with ``requires_action`` until a ``user.custom_tool_result`` for it arrives."""

    #: the tool's name as the model sees it
    name: ToolName
    #: what the model reads about the tool
    description: Annotated[str, msgspec.Meta(min_length=1)]
    #: the JSON Schema of the tool's input (an object schema)
    input_schema: dict[str, Any] = msgspec.field(default_factory=lambda: {"type": "object", "properties": {}})
    #: how long the thread waits for the answer (absent: until the session's deadline)
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] | None = None

    def __post_init__(self) -> None:
        if self.input_schema.get("type") != "object":
            raise ValueError(f"custom tool {self.name!r}: input_schema must have type 'object'")


def _no_repeats(owner: str, tools: list[str] | None) -> None:
    for tool in tools or []:
        if (tools or []).count(tool) > 1:
            raise ValueError(f"{owner}: tool {tool!r} is listed twice")


class PlaybookCall(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One tool call of an offline playbook. String inputs are templates: ``{task}``, the fields
    ``task_pattern`` read from the task (``{batch}``), the results of the earlier turns
    (``{result[0]}``), and with ``for_each`` the row's cells (``{row[build_id]}``)."""

    #: the tool's name
    tool: str
    #: the tool's input; string values are templates
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    #: one call per row of this earlier result (its index among the results so far), a ``sql``
    #: table; their results, joined by blank lines, are one result
    for_each: Annotated[int, msgspec.Meta(ge=0)] | None = None


class PlaybookStep(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One later turn of a playbook: its calls, made once the previous turn's results are in."""

    #: the tool calls of this turn, made concurrently
    calls: list[PlaybookCall]


class Playbook(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What an agent does under the offline model: these tool calls (in one turn, concurrently), the
    calls of each ``then`` step in a turn of its own, then an answer from a template over their real
    results: ``{task}``, ``{results}`` (all, in order), ``{result[0]}``, ``{result[1]}``... and the
    fields ``task_pattern`` read from the task."""

    #: the tool calls, made in one turn
    calls: list[PlaybookCall] = msgspec.field(default_factory=list)
    #: the later turns, each with calls that may use the results of the turns before it
    then: list[PlaybookStep] = msgspec.field(default_factory=list)
    #: a regular expression whose named groups, searched in the task, are template fields
    task_pattern: str = ""
    #: the answer's template: ``{task}``, ``{results}``, ``{result[0]}``...
    answer: str = "{results}"

    @property
    def turns(self) -> list[list[PlaybookCall]]:
        """The calls of each turn, in order: ``calls``, then each step's."""
        return [self.calls, *(step.calls for step in self.then)]

    def __post_init__(self) -> None:
        try:
            re.compile(self.task_pattern)
        except re.error as exc:
            raise ValueError(
                f"task_pattern {self.task_pattern!r} is not a regular expression: {exc}"
            ) from None
        seen = len(self.calls)  # results there are before each step
        for n, step in enumerate(self.then):
            for call in step.calls:
                if call.for_each is not None and call.for_each >= seen:
                    raise ValueError(
                        f"then[{n}]: call {call.tool!r} has for_each = {call.for_each}, but only "
                        f"{seen} results come before it"
                    )
            seen += len(step.calls)  # a for_each call's results are one result, joined
        for call in self.calls:
            if call.for_each is not None:
                raise ValueError(f"call {call.tool!r}: for_each needs an earlier result (use it in then)")


Permission = Literal["always_allow", "always_ask"]


class PermissionPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Which of an agent's tool calls wait for a person's confirmation before they run (any kind of
    tool: built-in, MCP, service, custom, and the lead's ``delegate``). A tool named in neither list
    follows ``default``."""

    #: the policy of every tool not named below
    default: Permission = "always_allow"
    #: tools whose every call waits for a person's confirmation
    always_ask: list[str] = msgspec.field(default_factory=list)
    #: tools that never wait
    always_allow: list[str] = msgspec.field(default_factory=list)
    #: how long a call waits for an answer before it is denied, in seconds
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 3600.0

    def __post_init__(self) -> None:
        both = sorted(set(self.always_ask) & set(self.always_allow))
        if both:
            raise ValueError(f"tool {both[0]!r} is in both always_ask and always_allow")

    def asks(self, tool: str) -> bool:
        """Whether a call of ``tool`` waits for confirmation."""
        if tool in self.always_ask:
            return True
        if tool in self.always_allow:
            return False
        return self.default == "always_ask"


class AgentSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One agent: who it is (``description`` is what the lead reads to choose it), its model, its
    system prompt, the tools it may call, its limits and its memory stores."""

    #: the agent's name (a lower-case token, unique in the team)
    name: Name
    #: what the lead reads to choose this agent
    description: str = ""
    #: the model it uses (empty: the team's)
    model: str = ""
    #: its system prompt
    system: str = ""
    #: the built-in tools it may call, by name
    tools: list[str] = msgspec.field(default_factory=list)
    #: the most model calls one of its threads makes per task
    max_turns: Annotated[int, msgspec.Meta(ge=1, le=500)] = 20
    #: the most output tokens per model call
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=128_000)] = 4096
    #: the memory stores it may read or write
    memory: Annotated[list[MemoryAttachment], msgspec.Meta(max_length=MAX_MEMORY_STORES)] = msgspec.field(
        default_factory=list
    )
    #: MCP servers the agent's worker runs for it
    mcp_servers: Annotated[list[McpServer], msgspec.Meta(max_length=MAX_TOOL_SOURCES)] = msgspec.field(
        default_factory=list
    )
    #: NATS micro services whose endpoints are the agent's tools
    services: Annotated[list[ToolService], msgspec.Meta(max_length=MAX_TOOL_SOURCES)] = msgspec.field(
        default_factory=list
    )
    #: tools the session's caller answers
    custom_tools: Annotated[list[CustomTool], msgspec.Meta(max_length=64)] = msgspec.field(
        default_factory=list
    )
    #: which tool calls wait for a person's confirmation
    permissions: PermissionPolicy = msgspec.field(default_factory=PermissionPolicy)
    #: what it does under the offline model (tests and demos)
    playbook: Playbook | None = None

    def __post_init__(self) -> None:
        seen: set[str] = set()
        for tool in [*self.tools, *(c.name for c in self.custom_tools)]:
            if tool in seen:
                raise ValueError(f"tool {tool!r} is listed twice")
            seen.add(tool)
        sources = [s.name for s in self.mcp_servers] + [s.name for s in self.services]
        for source in sources:
            if sources.count(source) > 1:
                raise ValueError(
                    f"tool source {source!r} is declared twice (MCP servers and services share names)"
                )
        stores = [m.store for m in self.memory]
        for store in stores:
            if stores.count(store) > 1:
                raise ValueError(f"memory store {store!r} is attached twice")


class TeamOrigin(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The file a team was read from, with the lines of its tool sources and allowlists: a worker finds
    some mistakes only when it meets the server (a tool the server does not offer) and names the
    file and line all the same."""

    #: the team file's path, as given
    file: str
    #: the line of each tool source, allowlist entry and custom tool, by its path in the document
    lines: dict[str, int] = msgspec.field(default_factory=dict)

    def where(self, path: str) -> str:
        """``team.toml:42: agents[0].mcp_servers[0].tools[1]`` (the line when it is known)."""
        line = self.lines.get(path)
        return f"{self.file}:{line}: {path}" if line else f"{self.file}: {path}"


class TeamSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """A lead, a roster of at most 20 subagents, and the defaults of the team's sessions."""

    #: the team's name (a lower-case token)
    name: Name
    #: what the team is for
    description: str = ""
    #: the model of every agent that names none
    model: str = DEFAULT_MODEL
    #: the lead agent: it plans, delegates and writes the deliverable
    lead: AgentSpec
    #: the subagents the lead may delegate to
    agents: Annotated[list[AgentSpec], msgspec.Meta(max_length=MAX_AGENTS)] = msgspec.field(
        default_factory=list
    )
    #: how many subagent threads may run at once
    max_concurrent_threads: Annotated[int, msgspec.Meta(ge=1, le=MAX_AGENTS)] = MAX_AGENTS
    #: where the lead's report is written, relative to the session's workspace
    report_path: str = "report.md"
    #: the session stops once its model calls cost more than this, in US dollars
    budget_usd: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: the session stops once its model calls used more than this many tokens
    budget_tokens: Annotated[int, msgspec.Meta(gt=0)] | None = None
    #: how long a session may run, in seconds from its start
    deadline_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: the deliverable is graded against it and revised until it is met (or the iterations run out)
    outcome: Outcome | None = None
    #: endpoints told when the team's sessions change state
    webhooks: Annotated[list[WebhookSpec], msgspec.Meta(max_length=16)] = msgspec.field(default_factory=list)
    #: model prices that win over the known ones (``[[prices]]``, USD per million tokens)
    prices: Annotated[list[ModelPrice], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    #: set when the team is read from a file (see :class:`TeamOrigin`)
    origin: TeamOrigin | None = None

    def __post_init__(self) -> None:
        report = self.report_path
        if not report or report.startswith("/") or "\\" in report or ".." in report.split("/"):
            raise ValueError(f"report_path {report!r} must be a relative path inside the session's workspace")
        names = [self.lead.name]
        for agent in self.agents:
            if agent.name in names:
                raise ValueError(f"agent name {agent.name!r} is used twice")
            names.append(agent.name)

    def agent(self, name: str) -> AgentSpec:
        """The roster agent called ``name``; ``KeyError`` with the known names otherwise."""
        for agent in self.agents:
            if agent.name == name:
                return agent
        known = ", ".join(a.name for a in self.agents) or "none"
        raise KeyError(f"agent {name!r} is not in team {self.name!r} (known: {known})")

    def model_of(self, agent: AgentSpec) -> str:
        return agent.model or self.model

    def path_of(self, agent: AgentSpec) -> str:
        """Where ``agent`` is in the document: ``lead`` or ``agents[2]``."""
        if agent is self.lead or agent.name == self.lead.name:
            return "lead"
        return next(f"agents[{i}]" for i, a in enumerate(self.agents) if a.name == agent.name)

    def where(self, path: str) -> str:
        """``path`` with the file and line it came from, when the team was read from a file."""
        return self.origin.where(path) if self.origin is not None else f"team {self.name!r}: {path}"


# --- reading TOML ----------------------------------------------------------------------------------

_AT = re.compile(r"^(?P<reason>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_TOKEN = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\d+)\]")
_TOML_POS = re.compile(r"\(at line (\d+), column \d+\)")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`$")
_MISSING = re.compile(r"^Object missing required field `([^`]*)`$")


def parse_team(text: str | bytes, *, source: str = "<string>") -> TeamSpec:
    """Validate a team file's text. Raises :class:`SpecError` naming file, line, path and value."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise SpecError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", source=source) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        match = _TOML_POS.search(str(exc))
        line = int(match.group(1)) if match else None
        reason = _TOML_POS.sub("", str(exc)).strip()
        raise SpecError(f"not valid TOML: {reason}", source=source, line=line) from None
    team = team_from_dict(raw, source=source, text=text)
    return msgspec.structs.replace(team, origin=_origin(team, source, text))


def _origin(team: TeamSpec, source: str, text: str) -> TeamOrigin:
    """The lines of every tool source, allowlist entry, custom tool and permission policy entry of
    ``team`` in ``text``."""
    paths: list[list[str | int]] = []
    for base, spec in [(["lead"], team.lead)] + [(["agents", i], a) for i, a in enumerate(team.agents)]:
        sources: list[tuple[str, Sequence[McpServer | ToolService]]] = [
            ("mcp_servers", spec.mcp_servers),
            ("services", spec.services),
        ]
        for kind, declared in sources:
            for j, found in enumerate(declared):
                paths.append([*base, kind, j])
                paths.extend([*base, kind, j, "tools", k] for k in range(len(found.tools or [])))
        paths.extend([*base, "custom_tools", j] for j in range(len(spec.custom_tools)))
        paths.extend([*base, "tools", k] for k in range(len(spec.tools)))
        policy = spec.permissions
        for listed, names in (("always_ask", policy.always_ask), ("always_allow", policy.always_allow)):
            paths.extend([*base, "permissions", listed, k] for k in range(len(names)))
    lines = {_format_path(path): line for path in paths if (line := _find_line(text, path)) is not None}
    return TeamOrigin(file=source, lines=lines)


def team_from_dict(raw: Any, *, source: str = "<dict>", text: str | None = None) -> TeamSpec:
    """Validate an already-parsed team document (from TOML, JSON or code)."""
    try:
        return msgspec.convert(raw, TeamSpec)
    except msgspec.ValidationError as exc:
        raise _spec_error(str(exc), raw, source, text) from None


def _spec_error(message: str, raw: Any, source: str, text: str | None) -> SpecError:
    match = _AT.match(message)
    reason, path_text = (match.group("reason"), match.group("path")) if match else (message, "")
    path: list[str | int] = [
        m.group(1) if m.group(1) is not None else int(m.group(2)) for m in _TOKEN.finditer(path_text)
    ]

    if unknown := _UNKNOWN.match(reason):
        field = unknown.group(1)
        container = _walk(raw, path)
        value = container.get(field) if isinstance(container, dict) else None
        path.append(field)
        known = _field_names(path[:-1])
        hint = difflib.get_close_matches(field, known, n=1)
        reason = f"unknown field {field!r}"
        if value is not None and not isinstance(value, dict):
            reason += f" = {_show(value)}"
        if hint:
            reason += f" (did you mean {hint[0]!r}?)"
        elif known:
            reason += f" (known fields: {', '.join(known)})"
    elif missing := _MISSING.match(reason):
        path.append(missing.group(1))
        reason = f"missing required field {missing.group(1)!r}"
    else:
        value = _walk(raw, path)
        reason = reason.replace("`", "")
        reason = reason[:1].lower() + reason[1:]
        allowed = _allowed_values(path)
        if reason.startswith("invalid enum value") and allowed:
            reason = "expected one of " + ", ".join(repr(v) for v in allowed) + f", got {_show(value)}"
        elif not isinstance(value, dict | list) and value is not None:
            reason = (
                f"{reason} {_show(value)}"
                if reason.startswith("expected") and ", got" in reason
                else (f"{reason}, got {_show(value)}")
            )

    line = _find_line(text, path) if text is not None else None
    return SpecError(reason, source=source, path=_format_path(path), line=line, value=_walk(raw, path))


def _show(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def _walk(raw: Any, path: list[str | int]) -> Any:
    node = raw
    for token in path:
        try:
            node = node[token]
        except (KeyError, IndexError, TypeError):
            return None
    return node


def _format_path(path: list[str | int]) -> str:
    out = ""
    for token in path:
        out += f"[{token}]" if isinstance(token, int) else (f".{token}" if out else token)
    return out


def _field_names(path: list[str | int]) -> list[str]:
    """The field names the spec allows at ``path`` (for 'did you mean' hints)."""
    node = _type_at(path)
    if isinstance(node, msgspec.inspect.StructType):
        return [f.encode_name for f in node.fields]
    return []


def _allowed_values(path: list[str | int]) -> list[Any]:
    """The literal values allowed at ``path``, if it is an enumeration."""
    node = _type_at(path)
    return list(node.values) if isinstance(node, msgspec.inspect.LiteralType) else []


def _type_at(path: list[str | int]) -> Any:
    """The spec's type at ``path`` (unwrapped from Optional and constraints), or None."""
    node: Any = msgspec.inspect.type_info(TeamSpec)
    for token in path:
        node = _unwrap(node)
        if isinstance(token, int):
            if not isinstance(node, msgspec.inspect.ListType):
                return None
            node = node.item_type
        else:
            if not isinstance(node, msgspec.inspect.StructType):
                return None
            matches = [f.type for f in node.fields if f.encode_name == token]
            if not matches:
                return None
            node = matches[0]
    return _unwrap(node)


def _unwrap(node: Any) -> Any:
    while True:
        if isinstance(node, msgspec.inspect.UnionType):
            inner = [t for t in node.types if not isinstance(t, msgspec.inspect.NoneType)]
            if len(inner) != 1:
                return node
            node = inner[0]
        elif isinstance(node, msgspec.inspect.Metadata):
            node = node.type
        else:
            return node


_HEADER = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")


def _split_key(key: str) -> list[str]:
    return [part.strip().strip("\"'") for part in key.split(".")]


def _find_line(text: str, path: list[str | int]) -> int | None:
    """Best-effort line number of ``path`` in TOML ``text``: the key's line, or its table's header.

    Understands ``[table]``, ``[[array.of.tables]]``, dotted keys and skips multi-line strings;
    returns None for anything it cannot place (inline tables, arrays spread over lines).
    """
    if not path:
        return None
    current: list[str | int] = []
    counts: dict[tuple[str | int, ...], int] = {}
    best: int | None = None
    in_string: str | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if in_string:
            if line.count(in_string) % 2 == 1:
                in_string = None
            continue
        header = _HEADER.match(line)
        if header:
            # resolve the header to a path: an array of tables named on the way stands for its
            # latest element (``[[agents.mcp_servers]]`` after the second ``[[agents]]`` is
            # ``agents[1].mcp_servers[n]``)
            names = _split_key(header.group(2))
            resolved: list[str | int] = []
            for position, name in enumerate(names):
                resolved.append(name)
                key = tuple(resolved)
                if position == len(names) - 1 and header.group(1) == "[[":
                    counts[key] = counts.get(key, -1) + 1
                    resolved.append(counts[key])
                elif key in counts:
                    resolved.append(counts[key])
            current = resolved
            if current == path[: len(current)] and (best is None or len(current) == len(path)):
                best = number
            if current == path:
                return number
            continue
        key_match = _KEY.match(line)
        if key_match:
            full = current + list(_split_key(key_match.group(1)))
            if full == path[: len(full)] and len(full) <= len(path):
                if full == path:
                    return number
                best = number
        for quote in ('"""', "'''"):
            if line.count(quote) % 2 == 1:
                in_string = quote
                break
    return best
