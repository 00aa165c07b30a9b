"""Tool calls that wait for an answer kept in the log stream (custom tool calls, confirmations), seen
from outside the thread: which calls a session announced, and whether one is answered.

A call is announced by a trace event (``agent.custom_tool_use``, ``agent.tool_confirmation_requested``)
and may be announced again by a worker that resumes it: :func:`announced` keeps the first of each.
Its answer is the first message on its answer subject that decodes and names the session and the
call (:func:`first_answer`); anything else there does not count (the waiting thread reports it).
"""

from __future__ import annotations

import contextlib
from typing import Protocol, TypeVar

from bus.codec import Decoder
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import MessageRejected
from schemas.trace import TraceEvent, event_kind


class Answer(Protocol):
    def mismatch(self, session_id: str, tool_use_id: str) -> str: ...


E = TypeVar("E", bound=TraceEvent)
A = TypeVar("A", bound=Answer)


async def announced(bus: Bus, session_id: str, kind: type[E], decoder: Decoder[E]) -> list[E]:
    """The session's events of ``kind``, the first of each call (by ``tool_use_id``), oldest first."""
    subject = bus.subjects.event(session_id, event_kind(kind))
    calls: dict[str, E] = {}
    async for stored in read_subject(bus, bus.subjects.log_stream, subject):
        with contextlib.suppress(MessageRejected):  # the thread that waits reports strays
            event = decoder.decode(stored.data, subject=subject)
            calls.setdefault(getattr(event, "tool_use_id", ""), event)
    calls.pop("", None)
    return list(calls.values())


async def first_answer(
    bus: Bus, subject: str, decoder: Decoder[A], session_id: str, tool_use_id: str
) -> A | None:
    """The call's answer stored on ``subject``, if there is one."""
    async for stored in read_subject(bus, bus.subjects.log_stream, subject):
        with contextlib.suppress(MessageRejected):
            answer = decoder.decode(stored.data, subject=subject)
            if not answer.mismatch(session_id, tool_use_id):
                return answer
    return None


async def seen(bus: Bus, session_id: str, kind: type[E], decoder: Decoder[E]) -> set[str]:
    """The calls (``tool_use_id``) named by the session's events of ``kind``."""
    return {getattr(event, "tool_use_id", "") for event in await announced(bus, session_id, kind, decoder)}
