"""Follow-ups through the gateway: ``<root>.api.message``, request/reply, answered by every lead process.

A caller continues an idle session with ``session.message.v1`` (the session id, the text, and which
turn it is: 1 for the first follow-up) and gets a ``session.submit_reply.v1`` back. The gateway claims
the turn in the session directory (compare-and-set, so of two follow-ups sent at once one wins and
the other is refused as ``busy``) and publishes the message durably on ``<root>.submit`` for the
lead pool, which runs it as a turn of its own with the lead's whole history; the turn ends with its
own ``session.result.v1`` (``turn`` says which).

The turn number makes a follow-up idempotent: the same turn with the same text is one follow-up
(``duplicate: true``); with another text it is refused (``conflict``). A session that is working is
``busy``, one that stopped for good (canceled, failed, out of budget or time) is ``ended``, an id with
no session is ``unknown_session``; inputs must be in the workspace (``missing_input``), as for a submit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import msgspec
import structlog

from actors.sessions.directory import SessionDirectory
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.errors import MessageRejected
from bus.subjects import Subjects
from bus.workspace import Workspace
from schemas.base import ErrorInfo
from schemas.session import SessionMessage, SubmitReply
from schemas.team import TeamSpec

log = structlog.get_logger("staffwork.gateway")


def clip(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[: limit - 3] + "...")


def accept(subjects: Subjects, session_id: str, *, duplicate: bool, warnings: list[str]) -> bytes:
    """The gateway's answer to a request it accepted: where to watch the session."""
    reply = SubmitReply(
        session_id=session_id,
        accepted=True,
        duplicate=duplicate,
        events_subject=subjects.events(session_id),
        result_subject=subjects.out(session_id, "result"),
        warnings=warnings,
    )
    return encode(reply)


def refuse(kind: str, message: str, session_id: str = "", *, event: str = "submit_refused") -> bytes:
    """The gateway's answer to a request it refuses (logged as ``event``)."""
    log.info(event, kind=kind, reason=message)
    error = ErrorInfo(kind=kind, message=message)
    return encode(SubmitReply(session_id=session_id, accepted=False, error=error))


class FollowUps:
    """Answers ``<root>.api.message`` for the gateway."""

    def __init__(
        self,
        bus: Bus,
        directory: SessionDirectory,
        workspace: Workspace,
        *,
        max_payload: int,
        missing: Callable[[str, list[str]], str],
        unserved: Callable[[str, TeamSpec], Awaitable[list[str]]],
    ) -> None:
        self.bus = bus
        self.directory = directory
        self.workspace = workspace
        self.max_payload = max_payload
        self._missing = missing  # the gateway's wording of absent inputs
        self._unserved = unserved  # the gateway's check that the team's agents are served (a pool asked)
        self._decoder: Decoder[SessionMessage] = Decoder(SessionMessage, max_bytes=1024 * 1024)

    def _refuse(self, kind: str, message: str, session_id: str = "") -> bytes:
        return refuse(kind, message, session_id, event="follow_up_refused")

    async def answer(self, data: bytes) -> bytes:
        try:
            message = self._decoder.decode(data, subject=self.bus.subjects.api_message)
        except MessageRejected as exc:
            return self._refuse("invalid_request", f"not a valid session.message.v1: {exc.reason}")
        sid = message.session_id
        message = msgspec.structs.replace(message, msg_id=f"message-{sid}-{message.turn}")
        size = len(encode(message))
        if self.max_payload and size > self.max_payload // 2:
            return self._refuse(
                "too_large",
                f"the follow-up is {size:,} bytes, over the {self.max_payload // 2:,} allowed: put large "
                "inputs in the workspace and name them in 'inputs'",
                sid,
            )
        if message.inputs and (missing := await self.workspace.adopt(sid, message.inputs)):
            return self._refuse("missing_input", self._missing(sid, missing), sid)
        record, why = await self.directory.begin_turn(sid, message.turn, message.text)
        if record is None:
            return self._refuse("unknown_session", f"no session {sid!r}", sid)
        refusal = _refusal(why, message, record.turn, record.turn_text, record.status, record.stop_reason)
        if refusal is not None:
            return self._refuse(*refusal, sid)
        duplicate = why == "taken"
        warnings: list[str] = []
        if record.status == "pending":  # not yet taken by a lead: (again) hand it to the lead pool
            # the team's workers may have gone since the last turn (a pool restarted): ask again
            warnings = await self._unserved(sid, record.team) if not duplicate else []
            await self.bus.publish_once(self.bus.subjects.submit, message, msg_id=message.msg_id)
        return accept(self.bus.subjects, sid, duplicate=duplicate, warnings=warnings)


def _refusal(
    why: str, message: SessionMessage, turn: int, turn_text: str, status: str, stop_reason: str
) -> tuple[str, str] | None:
    """The error kind and message for a follow-up the session cannot take (None: it takes it)."""
    sid, wanted = message.session_id, message.turn
    if why == "taken":
        if turn == wanted and turn_text == message.text:
            return None  # the same follow-up again
        return (
            "conflict",
            f"turn {wanted} of session {sid!r} was already sent"
            + (f" with another text ({clip(turn_text)}, not {clip(message.text)})" if turn == wanted else "")
            + f"; the session is on turn {turn}: send turn {turn + 1} once it is idle",
        )
    if why == "out_of_order":
        return (
            "invalid_request",
            f"session {sid!r} is on turn {turn}: its next follow-up is turn {turn + 1}, not {wanted}",
        )
    if why == "busy":
        return (
            "busy",
            f"session {sid!r} is {status} (turn {turn}): wait for its result, or interrupt it, "
            "before sending a follow-up",
        )
    if why == "ended":
        return "ended", f"session {sid!r} ended ({status}: {stop_reason or status}): it takes no follow-ups"
    return None
