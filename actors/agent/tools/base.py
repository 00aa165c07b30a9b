"""Tools: typed Python functions the model can call.

A tool (:func:`tool`) is an async or plain function whose first parameter is a :class:`ToolContext`
and whose other parameters are keyword-only and typed; its input schema comes from the type hints,
its description from its docstring. :meth:`Tool.run` always returns a result block: bad arguments, a
:class:`ToolError` or any other failure come back as an ``is_error`` result (a tool never kills its
thread), and output over ``MAX_OUTPUT`` characters is stored in the workspace, the model getting a
truncated view. :class:`Delegating` is what the lead's delegation tools call (``ctx.delegating``).
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

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


class ToolError(Exception):
    """A tool failed in a way the model should be told about (an ``is_error`` result)."""


class Delegating(Protocol):
    """What the lead's ``delegate`` and ``message_agent`` tools call: each returns the thread's reply."""

    async def delegate(self, agent: str, task: str, tool_use_id: str) -> str: ...

    async def message_agent(self, thread_id: str, message: str, tool_use_id: str) -> str: ...


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

    @property
    def provenance(self) -> Provenance:
        return Provenance(
            session_id=self.session_id,
            thread_id=self.thread_id,
            agent=self.agent,
            tool_call_id=self.tool_use_id,
        )


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    params: type[msgspec.Struct]
    fn: Callable[..., Any]
    input_schema: dict[str, Any]

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
        if len(text) > MAX_OUTPUT:
            try:
                text = await _spill(ctx, self.name, text)
            except StaffworkError as exc:  # the output is still useful cut short
                log.warning("tool_output_not_stored", tool=self.name, error=str(exc))
                note = f"[{self.name} output truncated at {MAX_OUTPUT} of {len(text)} characters]"
                text = f"{text[:MAX_OUTPUT]}\n\n{note}"
        return ToolResultBlock(tool_use_id=ctx.tool_use_id, content=text)

    def _error(self, ctx: ToolContext, message: str) -> ToolResultBlock:
        return ToolResultBlock(tool_use_id=ctx.tool_use_id, content=message, is_error=True)


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
    """The tools one agent may call: the allowlist is enforced here, not by the prompt."""

    def __init__(self, tools: Iterable[Tool]) -> None:
        self.tools = {t.name: t for t in tools}

    @property
    def specs(self) -> list[ToolSpec]:
        return [t.spec for t in self.tools.values()]

    def get(self, name: str) -> Tool | None:
        return self.tools.get(name)
