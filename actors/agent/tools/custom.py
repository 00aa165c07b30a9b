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
import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

from actors.agent.tools.base import ToolContext, ToolKind, finish
from bus.codec import Decoder
from bus.errors import MessageRejected, Retryable
from schemas.conversation import ToolResultBlock, ToolSpec
from schemas.team import CustomTool
from schemas.thread import CustomToolResult
from schemas.trace import CustomToolUse, ThreadStatusIdle, ThreadStatusRunning

REQUIRES_ACTION = "requires_action"
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
            await _running(ctx)
            message = f"custom tool {self.name!r}: the caller did not answer within {timeout:g}s"
            return ToolResultBlock(tool_use_id=ctx.tool_use_id, content=message, is_error=True)
        return await finish(ctx, self.name, answer.content, is_error=answer.is_error)

    async def _answer(self, ctx: ToolContext, arguments: dict[str, Any]) -> CustomToolResult:
        """The caller's answer: one already in the stream, else announce the call and wait for it."""
        bus = ctx.bus
        subject = bus.subjects.tool_result(ctx.session_id, ctx.tool_use_id)
        stored = await bus.last(subject)
        if stored is not None and (answer := _valid(ctx, stored)[0]) is not None:
            return answer  # answered while no worker was waiting (this one was down, say)
        fields: dict[str, Any] = {
            "session_id": ctx.session_id,
            "thread_id": ctx.thread_id,
            "agent": ctx.agent,
        }
        await bus.emit(
            CustomToolUse(
                tool_use_id=ctx.tool_use_id, name=self.name, input=arguments, result_subject=subject, **fields
            )
        )
        await bus.emit(ThreadStatusIdle(stop_reason=REQUIRES_ACTION, **fields))
        # from the first stored message on: an answer sent since the look above is not missed
        async with contextlib.aclosing(bus.follow_raw(subject)) as messages:
            async for data in messages:
                answer, problem = _valid(ctx, data)
                if answer is not None:
                    await _running(ctx)
                    return answer
                await bus.emit_rejected(
                    subject,
                    data,
                    problem,
                    actor=f"custom tool {self.name}",
                    msg_id=f"rej-{ctx.tool_use_id}-{hashlib.sha256(data).hexdigest()[:16]}",
                    **fields,
                )
        # the subscription ended without an answer (the connection is closing): let the request come
        # back, and the loop resume at this call
        raise Retryable(f"custom tool {self.name!r}: stopped waiting on {subject} without an answer")


def _valid(ctx: ToolContext, data: bytes) -> tuple[CustomToolResult | None, str]:
    """The answer in ``data`` if it is this call's, else why not."""
    try:
        answer = _answers.decode(data)
    except MessageRejected as exc:
        return None, exc.reason
    problem = answer.mismatch(ctx.session_id, ctx.tool_use_id)
    return (None, problem) if problem else (answer, "")


async def _running(ctx: ToolContext) -> None:
    await ctx.bus.emit(
        ThreadStatusRunning(session_id=ctx.session_id, thread_id=ctx.thread_id, agent=ctx.agent)
    )
