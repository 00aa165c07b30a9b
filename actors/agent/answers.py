"""A tool call that waits for a person's answer kept in the log stream (a custom tool's result, a
confirmation), from the waiting thread's side.

:func:`stored_answer` is the answer already stored (sent while no worker waited: a restart);
:func:`wait_answer` announces the call, idles the thread with ``requires_action`` and follows the
answer subject from its first stored message, so an answer sent meanwhile is not missed. A message
there that is not this call's answer is reported as ``bus.message_rejected`` and the wait goes on;
if the subscription ends without an answer (the connection is closing), :class:`bus.errors.Retryable`
lets the request come back and the loop resume at the same call. The caller bounds the wait.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from actors.agent.tools.base import ToolContext
from bus.codec import Decoder
from bus.errors import MessageRejected, Retryable
from schemas.trace import ThreadStatusIdle, ThreadStatusRunning

REQUIRES_ACTION = "requires_action"


class Answer(Protocol):
    def mismatch(self, session_id: str, tool_use_id: str) -> str: ...


A = TypeVar("A", bound=Answer)


def thread_fields(ctx: ToolContext) -> dict[str, Any]:
    """The session, thread and agent of ``ctx``'s call, as trace events name them."""
    return {"session_id": ctx.session_id, "thread_id": ctx.thread_id, "agent": ctx.agent}


async def stored_answer(ctx: ToolContext, subject: str, decoder: Decoder[A]) -> A | None:
    """The call's answer if it is the last message stored on ``subject``."""
    stored = await ctx.bus.last(subject)
    return None if stored is None else valid_answer(ctx, decoder, stored)[0]


async def wait_answer(
    ctx: ToolContext,
    subject: str,
    decoder: Decoder[A],
    *,
    announce: Callable[[], Awaitable[None]],
    actor: str,
) -> A:
    """Announce the call, idle its thread with ``requires_action``, and wait for its answer on
    ``subject``; the thread runs again once it came."""
    bus = ctx.bus
    fields = thread_fields(ctx)
    await announce()
    await bus.emit(ThreadStatusIdle(stop_reason=REQUIRES_ACTION, **fields))
    # from the first stored message on: an answer sent since the caller looked is not missed
    async with contextlib.aclosing(bus.follow_raw(subject)) as messages:
        async for data in messages:
            answer, problem = valid_answer(ctx, decoder, data)
            if answer is not None:
                await running(ctx)
                return answer
            await bus.emit_rejected(
                subject,
                data,
                problem,
                actor=actor,
                msg_id=f"rej-{ctx.tool_use_id}-{hashlib.sha256(data).hexdigest()[:16]}",
                **fields,
            )
    raise Retryable(f"{actor}: stopped waiting on {subject} without an answer")


def valid_answer(ctx: ToolContext, decoder: Decoder[A], data: bytes) -> tuple[A | None, str]:
    """The answer in ``data`` if it is this call's, else why not."""
    try:
        answer = decoder.decode(data)
    except MessageRejected as exc:
        return None, exc.reason
    problem = answer.mismatch(ctx.session_id, ctx.tool_use_id)
    return (None, problem) if problem else (answer, "")


async def running(ctx: ToolContext) -> None:
    """Say that the call's thread runs again."""
    await ctx.bus.emit(ThreadStatusRunning(**thread_fields(ctx)))
