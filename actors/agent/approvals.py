"""Tool calls that wait for a person's confirmation (the agent's permission policy asks for the tool).

:func:`confirm` runs before such a call: the answer already stored (a restart), else an
``agent.tool_confirmation_requested`` event and the thread idle with ``requires_action`` until a
``user.tool_confirmation`` arrives on ``<root>.s.<session>.in.confirm.<tool_use_id>`` (kept by the
log stream). ``allow`` lets the call run; ``deny``, or no answer within the policy's ``timeout_s``,
gives the model an error result saying so. Every way out is one ``agent.tool_confirmation_answered``
event, with who answered. The session's deadline bounds the wait as it bounds any call.
"""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Literal

from actors.agent.answers import running, stored_answer, thread_fields, wait_answer
from actors.agent.tools.base import ToolContext, ToolKind
from bus.codec import Decoder
from bus.direct import read_subject
from bus.errors import MessageRejected
from schemas.conversation import ToolResultBlock, ToolUseBlock
from schemas.team import PermissionPolicy
from schemas.thread import ToolConfirmation
from schemas.trace import ToolConfirmationAnswered, ToolConfirmationRequested, event_kind

_answers: Decoder[ToolConfirmation] = Decoder(ToolConfirmation, max_bytes=1024 * 1024)
_requests: Decoder[ToolConfirmationRequested] = Decoder(ToolConfirmationRequested, max_bytes=4 * 1024 * 1024)


async def confirm(
    ctx: ToolContext, use: ToolUseBlock, kind: ToolKind, policy: PermissionPolicy
) -> ToolResultBlock | None:
    """Wait for a person's answer to ``use``: None if it may run, else the error result the model
    reads (denied, with the reason given, or not answered in time)."""
    subject = ctx.bus.subjects.confirmation(ctx.session_id, use.id)
    answer = await stored_answer(ctx, subject, _answers)
    if answer is None:
        # a call resumed after a restart has waited since its first request
        waited = await _waited(ctx, use.id) if ctx.replayed else 0.0
        try:
            async with asyncio.timeout(max(policy.timeout_s - waited, 0.0)):
                answer = await wait_answer(
                    ctx,
                    subject,
                    _answers,
                    announce=lambda: _announce(ctx, use, kind, subject, policy.timeout_s),
                    actor=f"tool confirmation {use.name}",
                )
        except TimeoutError:
            await running(ctx)
            message = f"nobody confirmed this call of {use.name!r} within {policy.timeout_s:g}s"
            await _answered(ctx, use, "timeout", message, by="")
            return _denied(ctx, f"[denied: {message}; the call did not run]")
    await _answered(ctx, use, answer.result, answer.deny_message, by=answer.by)
    if answer.result == "allow":
        return None
    who = answer.by or "a person"
    why = f": {answer.deny_message}" if answer.deny_message else " (no reason given)"
    return _denied(ctx, f"[denied by {who}; the call of {use.name!r} did not run{why}]")


async def _announce(
    ctx: ToolContext, use: ToolUseBlock, kind: ToolKind, subject: str, timeout: float
) -> None:
    request = ToolConfirmationRequested(
        tool_use_id=use.id,
        name=use.name,
        input=use.input,
        kind=kind,
        answer_subject=subject,
        timeout_s=timeout,
        **thread_fields(ctx),
    )
    await ctx.bus.emit(request)


async def _answered(
    ctx: ToolContext,
    use: ToolUseBlock,
    result: Literal["allow", "deny", "timeout"],
    deny_message: str,
    *,
    by: str,
) -> None:
    """The answer in the trace, once per call (a worker that resumes the call emits the same id)."""
    event = ToolConfirmationAnswered(
        msg_id=f"confirmed-{ctx.session_id}-{use.id}",
        tool_use_id=use.id,
        name=use.name,
        result=result,
        deny_message=deny_message,
        by=by,
        **thread_fields(ctx),
    )
    await ctx.bus.emit(event)


def _denied(ctx: ToolContext, text: str) -> ToolResultBlock:
    return ToolResultBlock(tool_use_id=ctx.tool_use_id, content=text, is_error=True)


async def _waited(ctx: ToolContext, tool_use_id: str) -> float:
    """Seconds since this call's first confirmation request (0 if it made none)."""
    bus = ctx.bus
    subject = bus.subjects.event(ctx.session_id, event_kind(ToolConfirmationRequested))
    async for stored in read_subject(bus, bus.subjects.log_stream, subject):
        with contextlib.suppress(MessageRejected):
            request = _requests.decode(stored.data, subject=subject)
            if request.tool_use_id == tool_use_id:
                return max((datetime.now(UTC) - request.time).total_seconds(), 0.0)
    return 0.0


__all__ = ["confirm"]
