"""Custom tools: tools the session's caller answers (the hosted service's ``custom`` tool type).

A call announces itself with an ``agent.custom_tool_use`` event (its id, name, input and the subject
to answer on) and idles its thread with ``requires_action``; the caller publishes a
``user.custom_tool_result`` on ``<root>.s.<session>.in.tool_result.<tool_use_id>``, and the thread
continues with it as the call's result. The answer is kept by the log stream, so nothing is lost
across restarts: a worker that picks the thread up again (after a crash, say) reads the answer sent
meanwhile from the stream, or announces the call again and waits. The wait is bounded by the tool's
``timeout_s`` and, always, by the session's deadline (the lead cancels the thread). A message on the
subject that is not the answer (garbage, another session's, another call's) is reported as
``bus.message_rejected`` and the wait goes on.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from actors.agent.answers import running, stored_answer, thread_fields, wait_answer
from actors.agent.tools.base import ToolContext, ToolKind, finish
from bus.codec import Decoder
from schemas.conversation import ToolResultBlock, ToolSpec
from schemas.team import CustomTool
from schemas.thread import CustomToolResult
from schemas.trace import CustomToolUse

_answers: Decoder[CustomToolResult] = Decoder(CustomToolResult, max_bytes=8 * 1024 * 1024)


@dataclass(frozen=True)
class CallerTool:
    """One custom tool of an agent: its calls wait for the caller's answer."""

    declared: CustomTool
    kind: ToolKind = "custom"
    source: str = ""

    @property
    def name(self) -> str:
        return self.declared.name

    @property
    def spec(self) -> ToolSpec:
        return ToolSpec(
            name=self.declared.name,
            description=self.declared.description,
            input_schema=self.declared.input_schema,
        )

    async def run(self, ctx: ToolContext, arguments: dict[str, Any]) -> ToolResultBlock:
        timeout = self.declared.timeout_s
        try:
            async with asyncio.timeout(timeout):
                answer = await self._answer(ctx, arguments)
        except TimeoutError:
            await running(ctx)
            message = f"custom tool {self.name!r}: the caller did not answer within {timeout:g}s"
            return ToolResultBlock(tool_use_id=ctx.tool_use_id, content=message, is_error=True)
        return await finish(ctx, self.name, answer.content, is_error=answer.is_error)

    async def _answer(self, ctx: ToolContext, arguments: dict[str, Any]) -> CustomToolResult:
        """The caller's answer: one already in the stream, else announce the call and wait for it."""
        subject = ctx.bus.subjects.tool_result(ctx.session_id, ctx.tool_use_id)
        answer = await stored_answer(ctx, subject, _answers)
        if answer is not None:
            return answer  # answered while no worker was waiting (this one was down, say)

        async def announce() -> None:
            use = CustomToolUse(
                tool_use_id=ctx.tool_use_id,
                name=self.name,
                input=arguments,
                result_subject=subject,
                **thread_fields(ctx),
            )
            await ctx.bus.emit(use)

        return await wait_answer(ctx, subject, _answers, announce=announce, actor=f"custom tool {self.name}")
