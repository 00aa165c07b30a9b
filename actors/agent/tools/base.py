"""Tools: what the model can call, and how a call's output comes back.

A built-in tool (:func:`tool`) is an async or plain function whose first parameter is a
:class:`ToolContext` and whose other parameters are keyword-only and typed; its input schema comes
from the type hints, its description from its docstring. A :class:`RemoteTool` is served elsewhere
(an MCP server, a NATS tool service) and called with a deadline. Every kind is an
:class:`AnyTool`: ``run`` always returns a result block. Bad arguments, a :class:`ToolError`, a
timeout or any other failure come back as an ``is_error`` result (a tool never kills its thread);
output over ``MAX_OUTPUT`` characters is stored in the workspace, the model getting a truncated view,
and output over ``MAX_RESULT_CHARS`` is refused. :class:`Delegating` is what the lead's delegation
tools call (``ctx.delegating``).
"""

from __future__ import annotations

import asyncio
import inspect
import typing
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import msgspec
import structlog

from bus.connection import Bus
from bus.workspace import Workspace
from schemas.conversation import ToolResultBlock, ToolSpec
from schemas.errors import StaffworkError
from schemas.files import Provenance
from schemas.team import MemoryAttachment

log = structlog.get_logger("staffwork.tools")

MAX_OUTPUT = 16_000
#: the most a tool may return: more is refused (an error naming the size), not stored
MAX_RESULT_CHARS = 4 * 1024 * 1024

ToolKind = Literal["builtin", "mcp", "service", "custom"]


class ToolError(Exception):
    """A tool failed in a way the model should be told about (an ``is_error`` result)."""


class ToolSourceError(StaffworkError):
    """An MCP server or tool service cannot serve its tools now (it did not start, died, answered
    garbage, or timed out): one line naming the source and what happened."""


class Delegating(Protocol):
    """What the lead's ``delegate`` and ``message_agent`` tools call: each returns the thread's reply."""

    async def delegate(self, agent: str, task: str, tool_use_id: str, *, replayed: bool = True) -> str: ...

    async def message_agent(
        self, thread_id: str, message: str, tool_use_id: str, *, replayed: bool = True
    ) -> str: ...


@dataclass
class ToolContext:
    """What a tool call knows: where it runs (session, thread, agent, the call's id) and the bus."""

    bus: Bus
    workspace: Workspace
    session_id: str
    thread_id: str
    agent: str
    tool_use_id: str = ""
    #: The lead's delegation machinery (None in a subagent's thread).
    delegating: Delegating | None = None
    #: The memory stores attached to the agent, by store name (reached under ``/memory/<store>/``).
    memory: dict[str, MemoryAttachment] = field(default_factory=dict)
    #: Whether the call comes from a turn recorded before this run (a resumed thread): it may have
    #: run before, so a tool that sends something looks for an earlier answer first. A call from a
    #: model turn made in this run is new (its tool use id was just minted).
    replayed: bool = True

    @property
    def provenance(self) -> Provenance:
        return Provenance(
            session_id=self.session_id,
            thread_id=self.thread_id,
            agent=self.agent,
            tool_call_id=self.tool_use_id,
        )


class AnyTool(Protocol):
    """What a toolbox holds: a built-in :class:`Tool`, a :class:`RemoteTool`, a custom tool."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> ToolKind: ...

    @property
    def source(self) -> str: ...  # the MCP server or tool service ("" for the others)

    @property
    def spec(self) -> ToolSpec: ...

    async def run(self, ctx: ToolContext, arguments: dict[str, Any]) -> ToolResultBlock: ...


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    params: type[msgspec.Struct]
    fn: Callable[..., Any]
    input_schema: dict[str, Any]
    kind: ToolKind = "builtin"
    source: str = ""

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, input_schema=self.input_schema)

    async def run(self, ctx: ToolContext, arguments: dict[str, Any]) -> ToolResultBlock:
        """Validate ``arguments``, call the tool, and always return a result block."""
        try:
            params = msgspec.convert(arguments, self.params)
        except msgspec.ValidationError as exc:
            return self._error(ctx, f"invalid input for {self.name}: {exc}")
        kwargs = {name: getattr(params, name) for name in self.params.__struct_fields__}
        try:
            result = self.fn(ctx, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except (ToolError, StaffworkError) as exc:
            return self._error(ctx, str(exc))
        except Exception as exc:
            log.exception("tool_failed", tool=self.name, tool_use_id=ctx.tool_use_id)
            return self._error(ctx, f"{self.name} failed: {type(exc).__name__}: {exc}")
        text = result if isinstance(result, str) else msgspec.json.encode(result).decode()
        return await finish(ctx, self.name, text)

    def _error(self, ctx: ToolContext, message: str) -> ToolResultBlock:
        return ToolResultBlock(tool_use_id=ctx.tool_use_id, content=message, is_error=True)


#: what a remote tool's transport does with one call: the output text and whether it is an error
RemoteCall = Callable[["ToolContext", dict[str, Any]], Awaitable[tuple[str, bool]]]


@dataclass(frozen=True)
class RemoteTool:
    """A tool served by another process: an MCP server's tool or a tool service's endpoint.

    ``name`` is what the model sees (``<source>__<remote_name>``); ``call`` does one call over the
    transport. :meth:`run` bounds it by ``timeout_s`` and turns every failure into an ``is_error``
    result that names the source and the tool.
    """

    kind: ToolKind
    source: str
    remote_name: str
    description: str
    input_schema: dict[str, Any]
    timeout_s: float
    call: RemoteCall

    @property
    def name(self) -> str:
        return f"{self.source}__{self.remote_name}"

    @property
    def what(self) -> str:
        """``MCP server 'deployapi': tool 'list_deploys'`` (how errors name the call)."""
        owner = "MCP server" if self.kind == "mcp" else "tool service"
        return f"{owner} {self.source!r}: tool {self.remote_name!r}"

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(name=self.name, description=self.description, input_schema=self.input_schema)

    async def run(self, ctx: ToolContext, arguments: dict[str, Any]) -> ToolResultBlock:
        try:
            async with asyncio.timeout(self.timeout_s):
                text, is_error = await self.call(ctx, arguments)
        except TimeoutError:
            text, is_error = f"{self.what} did not answer within {self.timeout_s:g}s", True
        except (ToolError, StaffworkError) as exc:
            text, is_error = f"{self.what}: {exc}", True
        except Exception as exc:
            log.warning("remote_tool_failed", tool=self.name, tool_use_id=ctx.tool_use_id, error=repr(exc))
            text, is_error = f"{self.what} failed: {type(exc).__name__}: {exc}", True
        return await finish(ctx, self.name, text, is_error=is_error)


async def finish(ctx: ToolContext, name: str, text: str, *, is_error: bool = False) -> ToolResultBlock:
    """The result block of a call that produced ``text``: refused over ``MAX_RESULT_CHARS``, stored in
    the workspace (the model getting a truncated view) over ``MAX_OUTPUT``."""
    if len(text) > MAX_RESULT_CHARS:
        message = (
            f"{name} returned {len(text):,} characters, over the limit of {MAX_RESULT_CHARS:,}: "
            "ask it for less (a filter, a page, a narrower query)"
        )
        return ToolResultBlock(tool_use_id=ctx.tool_use_id, content=message, is_error=True)
    if len(text) > MAX_OUTPUT:
        try:
            text = await _spill(ctx, name, text)
        except StaffworkError as exc:  # the output is still useful cut short
            log.warning("tool_output_not_stored", tool=name, error=str(exc))
            note = f"[{name} output truncated at {MAX_OUTPUT} of {len(text)} characters]"
            text = f"{text[:MAX_OUTPUT]}\n\n{note}"
    return ToolResultBlock(tool_use_id=ctx.tool_use_id, content=text, is_error=is_error)


async def _spill(ctx: ToolContext, name: str, text: str) -> str:
    """Store a big output in the workspace and return a truncated view that names the file."""
    path = f"tool-outputs/{ctx.tool_use_id or 'output'}.txt"
    await ctx.workspace.put(ctx.session_id, path, text, provenance=ctx.provenance)
    head = text[: MAX_OUTPUT // 2]
    return (
        f"{head}\n\n[{name} output truncated: {len(text)} characters in all; "
        f"the full output is in the workspace at {path} (read it with read_file and an offset)]"
    )


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None) -> Any:
    """Make a :class:`Tool` of ``fn`` (usable as ``@tool`` or ``@tool(name="...")``)."""

    def build(func: Callable[..., Any]) -> Tool:
        tool_name = name or func.__name__
        hints = typing.get_type_hints(func, include_extras=True)
        fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
        for index, param in enumerate(inspect.signature(func).parameters.values()):
            if index == 0:
                continue  # the ToolContext
            if param.kind is not inspect.Parameter.KEYWORD_ONLY:
                raise TypeError(f"tool {tool_name!r}: parameter {param.name!r} must be keyword-only")
            annotation = hints.get(param.name, Any)
            if param.default is inspect.Parameter.empty:
                fields.append((param.name, annotation))
            else:
                fields.append((param.name, annotation, param.default))
        params = msgspec.defstruct(
            f"{tool_name}_input", fields, kw_only=True, forbid_unknown_fields=True, frozen=True
        )
        description = inspect.cleandoc(func.__doc__ or "").strip()
        if not description:
            raise TypeError(f"tool {tool_name!r} needs a docstring: it is what the model reads")
        return Tool(
            name=tool_name,
            description=description,
            params=params,
            fn=func,
            input_schema=_input_schema(params),
        )

    return build(fn) if fn is not None else build


def _input_schema(params: type[msgspec.Struct]) -> dict[str, Any]:
    (ref,), components = msgspec.json.schema_components([params], ref_template="#/$defs/{name}")
    name = ref["$ref"].rsplit("/", 1)[-1]
    schema = dict(components.pop(name))
    schema.pop("title", None)
    schema.setdefault("properties", {})
    if components:
        schema["$defs"] = components
    return schema


class Toolbox:
    """The tools one agent may call: the allowlist is enforced here, not by the prompt.

    ``unavailable`` maps a tool the agent may call but cannot now (its MCP server failed to start,
    say) to why: a call to it gets that reason, not a refusal."""

    def __init__(self, tools: Iterable[AnyTool], *, unavailable: dict[str, str] | None = None) -> None:
        self.tools: dict[str, AnyTool] = {t.name: t for t in tools}
        self.unavailable = dict(unavailable or {})

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self.tools.values()]

    def get(self, name: str) -> AnyTool | None:
        return self.tools.get(name)

    def why_unavailable(self, name: str) -> str:
        """Why the allowed tool ``name`` cannot be called now ("" if that is not known)."""
        return self.unavailable.get(name) or self.unavailable.get(name.split("__", 1)[0], "")

    @property
    def note(self) -> str:
        """What the agent's system prompt says about the tools it cannot call now ("" if none)."""
        if not self.unavailable:
            return ""
        lines = "\n".join(f"- {problem}" for problem in self.unavailable.values())
        return f"Some of your tools cannot be used now:\n{lines}"
