"""What the examples' MCP servers share: a server whose tools refuse arguments they do not take."""

from __future__ import annotations

from typing import Any

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import CallToolResult, InputRequiredResult
from pydantic import ValidationError


class StrictServer(MCPServer[Any]):
    """An MCP server whose tools refuse arguments they do not take (a misspelt filter would otherwise be
    ignored, and the answer would silently be unfiltered), with one line for arguments of the wrong type."""

    async def call_tool(
        self, name: str, arguments: dict[str, Any], context: Context[Any, Any] | None = None
    ) -> CallToolResult | InputRequiredResult:
        tool = next((t for t in await self.list_tools() if t.name == name), None)
        known: list[str] = list(tool.input_schema.get("properties", {})) if tool is not None else []
        unknown = sorted(set(arguments) - set(known)) if tool is not None else []
        if unknown:
            named = ", ".join(repr(a) for a in unknown)
            raise ToolError(
                f"Error executing tool {name}: no argument {named} (it takes: {', '.join(known)})"
            )
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as exc:
            if not isinstance(exc.__cause__, ValidationError):
                raise
            problems = "; ".join(
                f"{'.'.join(str(p) for p in error['loc']) or 'arguments'}: {error['msg']}"
                for error in exc.__cause__.errors()
            )
            raise ToolError(f"Error executing tool {name}: {problems}") from exc.__cause__
