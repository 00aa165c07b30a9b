"""Tool calls waiting for a person's confirmation, from outside their threads: which ones wait
(:func:`pending`) and answering one (:func:`answer`). The CLI, the Python client, ``run``'s prompt and
the HTTP API all answer through here.

An answer is a ``user.tool_confirmation.v1`` on ``<root>.s.<session>.in.confirm.<tool_use_id>``,
stored with the message id ``<session>.<tool_use_id>.confirm``: the first one counts, and another
(or one for a call that never asked) is refused with one line. A plain NATS client may publish the
same JSON; the waiting thread checks what it gets (the session, the call) and reports the rest.
"""

from __future__ import annotations

import asyncio

from actors.sessions.answers import announced, first_answer
from bus.codec import Decoder
from bus.connection import Bus
from bus.errors import StaffworkError
from schemas.thread import ConfirmationResult, ToolConfirmation
from schemas.trace import AgentToolResult, ToolConfirmationAnswered, ToolConfirmationRequested

_requests: Decoder[ToolConfirmationRequested] = Decoder(ToolConfirmationRequested, max_bytes=4 * 1024 * 1024)
_outcomes: Decoder[ToolConfirmationAnswered] = Decoder(ToolConfirmationAnswered, max_bytes=1024 * 1024)
_results: Decoder[AgentToolResult] = Decoder(AgentToolResult, max_bytes=4 * 1024 * 1024)
_answers: Decoder[ToolConfirmation] = Decoder(ToolConfirmation, max_bytes=1024 * 1024)
_RESULTS: dict[str, ConfirmationResult] = {"allow": "allow", "deny": "deny"}


async def requests(bus: Bus, session_id: str) -> list[ToolConfirmationRequested]:
    """Every call of the session that asked for a confirmation, oldest first (once each, however
    often a resumed thread announced it)."""
    return await announced(bus, session_id, ToolConfirmationRequested, _requests)


async def pending(bus: Bus, session_id: str) -> list[ToolConfirmationRequested]:
    """The calls of the session waiting for a confirmation now, oldest first: asked, and neither
    answered, nor timed out, nor closed by an interrupt."""
    return await _waiting(bus, session_id, await requests(bus, session_id))


async def answer(
    bus: Bus,
    session_id: str,
    tool_use_id: str,
    result: str,
    deny_message: str = "",
    by: str = "",
) -> ToolConfirmation:
    """Answer a waiting call: ``allow`` runs it, ``deny`` gives its model an error result with
    ``deny_message``; ``by`` says who, in the trace. :class:`StaffworkError` (one line) for a call
    that never asked (naming those that wait) or one already answered."""
    choice = _RESULTS.get(result)
    if choice is None:
        raise StaffworkError(f"a confirmation is 'allow' or 'deny', not {result!r}")
    asked = await requests(bus, session_id)
    if tool_use_id not in {request.tool_use_id for request in asked}:
        waiting = ", ".join(r.tool_use_id for r in await _waiting(bus, session_id, asked)) or "none"
        raise StaffworkError(
            f"session {session_id!r} has no tool call {tool_use_id!r} asking for a confirmation "
            f"(waiting: {waiting})"
        )
    subject = bus.subjects.confirmation(session_id, tool_use_id)
    given = await first_answer(bus, subject, _answers, session_id, tool_use_id)
    if given is not None:
        ended: str | None = f"{given.result} by {given.by or 'someone'}"
    else:
        ended = (await _ended(bus, session_id)).get(tool_use_id)
    confirmation = ToolConfirmation(
        session_id=session_id, tool_use_id=tool_use_id, result=choice, deny_message=deny_message, by=by
    )
    if ended is None and await bus.publish_once(
        subject, confirmation, msg_id=f"{session_id}.{tool_use_id}.confirm"
    ):
        return confirmation
    how = f" ({ended})" if ended else ""
    raise StaffworkError(f"tool call {tool_use_id!r} of session {session_id!r} is already answered{how}")


async def _waiting(
    bus: Bus, session_id: str, asked: list[ToolConfirmationRequested]
) -> list[ToolConfirmationRequested]:
    if not asked:
        return []
    ended = await _ended(bus, session_id)
    open_calls = [request for request in asked if request.tool_use_id not in ended]
    answers = await asyncio.gather(
        *(
            first_answer(
                bus, bus.subjects.confirmation(session_id, r.tool_use_id), _answers, session_id, r.tool_use_id
            )
            for r in open_calls
        )
    )
    return [request for request, given in zip(open_calls, answers, strict=True) if given is None]


async def _ended(bus: Bus, session_id: str) -> dict[str, str]:
    """The calls that stopped waiting, and how: answered (as their thread saw it), timed out, or
    closed with a result (an interrupt cut the thread)."""
    outcomes = await announced(bus, session_id, ToolConfirmationAnswered, _outcomes)
    results = await announced(bus, session_id, AgentToolResult, _results)
    ended = {r.tool_use_id: f"closed without an answer: {r.content[:200]}" for r in results}
    for outcome in outcomes:
        timed_out = outcome.result == "timeout"
        how = f"denied: {outcome.deny_message}" if timed_out else f"{outcome.result} by {outcome.by}"
        ended[outcome.tool_use_id] = how
    return ended


__all__ = ["answer", "pending", "requests"]
