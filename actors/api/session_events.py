"""Events sent to a session (``POST /v1/sessions/{id}/events``): each is checked, recorded in the
session's log as a ``user.event`` (so the list and the stream show both sides in order), then acted
on: the first ``user.message`` starts the staffwork session through the gateway with the outcome
defined before it; a later one, once the session is idle, is a follow-up turn (``session.message.v1``)
graded against the outcome defined since the last turn, if any; ``user.interrupt`` stops one thread,
or every thread and the lead's turn (the session goes idle and takes a follow-up);
``user.custom_tool_result`` answers a custom tool call. What staffwork cannot do yet is refused with a
400 or 409 that says so (see ``actors/api/sessions.py``)."""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from starlette.routing import Route

from actors.api.errors import ApiError, bad_request
from actors.api.events import (
    LEAD,
    NOT_SUPPORTED,
    Confirmation,
    DefineOutcome,
    FileRubric,
    Interrupt,
    SendBody,
    ToolAnswer,
    Unsupported,
    UserMessage,
    event_id,
    outcome_id,
    texts,
)
from actors.api.http import Call, route
from actors.api.session_records import KIND, ApiSession, DefinedOutcome, load_for_update, save
from actors.api.values import rfc3339, rfc3339_now
from actors.client import Client, SubmitRefused
from actors.sessions import approvals
from actors.sessions.cancel import interrupt
from actors.sessions.directory import SessionDirectory
from bus.codec import Decoder
from bus.direct import read_subject
from bus.errors import BusError, MessageRejected, StaffworkError
from bus.subjects import is_token
from schemas.outcome import Outcome
from schemas.trace import AgentToolUse, CustomToolUse, ToolConfirmationRequested, UserEvent, event_kind

_tool_uses: Decoder[AgentToolUse] = Decoder(AgentToolUse, max_bytes=4 * 1024 * 1024)


async def _tool_call(call: Call, session_id: str, given: str, where: str) -> CustomToolUse:
    """The custom tool call ``given`` names: by its event id (``sevt_…``) or staffwork's call id."""
    calls = await Client(call.bus).custom_tool_calls(session_id, pending=False)
    for found in calls:
        if given in (event_id(found.msg_id), found.tool_use_id):
            return found
    raise bad_request(
        f"{where}.custom_tool_use_id={given!r} names no custom tool call of session {session_id!r}"
    )


async def _waiting_call(call: Call, session_id: str, given: str, where: str) -> ToolConfirmationRequested:
    """The tool call waiting for a confirmation that ``given`` names: by its ``agent.tool_use`` event
    id (``sevt_…``, what ``session.status_idle`` lists) or staffwork's call id. A call that does not
    wait (answered already, or it never asked) is a 409; no such call, a 400."""
    waiting = {request.tool_use_id: request for request in await approvals.pending(call.bus, session_id)}
    if given in waiting:
        return waiting[given]
    subject = call.bus.subjects.event(session_id, event_kind(AgentToolUse))
    async for stored in read_subject(call.bus, call.bus.subjects.log_stream, subject):
        with contextlib.suppress(MessageRejected):
            use = _tool_uses.decode(stored.data, subject=subject)
            if given in (event_id(use.msg_id), use.tool_use_id):
                if use.tool_use_id in waiting:
                    return waiting[use.tool_use_id]
                raise ApiError(
                    409,
                    f"{where}.tool_use_id={given!r}: that call does not wait for a confirmation "
                    "(it was answered already, or it never asked)",
                )
    raise bad_request(f"{where}.tool_use_id={given!r} names no tool call of session {session_id!r}")


async def send_events(call: Call, id: str, events: list[Any]) -> list[dict[str, Any]]:
    """Check every event, record them in the session's log, then act on them (start the session,
    cancel it, answer a tool call). The echo as the SDK reads it."""
    session, revision = await load_for_update(call, id)
    if session.archived_at is not None:
        raise bad_request(f"session {id!r} is archived: it takes no more events")
    record = await SessionDirectory(call.bus).get(id) if session.started else None
    next_turn = record.turn + 1 if record is not None else 0
    task: list[str] = []
    outcome: DefinedOutcome | None = None
    answers: dict[int, CustomToolUse] = {}
    confirmed: dict[int, ToolConfirmationRequested] = {}
    for n, event in enumerate(events):
        where = f"events[{n}]"
        match event:
            case UserMessage():
                if record is not None and record.status != "idle":
                    raise ApiError(409, _not_idle(id, record.status, record.stop_reason))
                task.append(texts(event.content, where))
            case DefineOutcome():
                if outcome is not None or (not session.started and session.outcome is not None):
                    raise ApiError(409, f"{where}: session {id!r} takes one outcome per turn")
                if isinstance(event.rubric, FileRubric):
                    raise bad_request(f"{where}.rubric: file rubrics are not supported; give type=text")
                try:
                    rubric = Outcome(
                        rubric=event.rubric.content,
                        max_iterations=event.max_iterations or 3,
                        description=event.description,
                    )
                except ValueError as exc:
                    raise bad_request(f"{where}: {exc}") from None
                outcome = DefinedOutcome(
                    outcome_id=outcome_id(id, next_turn),
                    description=event.description,
                    outcome=rubric,
                    turn=next_turn,
                )
            case Interrupt(session_thread_id=thread) if thread is not None and not is_token(thread):
                raise bad_request(f"{where}.session_thread_id={thread!r} is not a thread id")
            case Confirmation():
                if not session.started:
                    raise bad_request(f"{where}: session {id!r} has not started: no tool call waits")
                if event.deny_message is not None and event.result != "deny":
                    raise bad_request(f"{where}.deny_message: only allowed when result is 'deny'")
                confirmed[n] = await _waiting_call(call, id, event.tool_use_id, where)
            case ToolAnswer():
                if not session.started:
                    raise bad_request(f"{where}: session {id!r} has not started: no tool call waits")
                answers[n] = await _tool_call(call, id, event.custom_tool_use_id, where)
                texts(event.content or [], where)
            case Unsupported():
                kind = type(event).__struct_config__.tag
                raise bad_request(f"{where}.type={kind!r} is not supported: {NOT_SUPPORTED[str(kind)]}")
    first = bool(task) and not session.started
    if task or outcome is not None:
        session.outcome = outcome or session.outcome
        session.started = session.started or bool(task)
        session.updated_at = rfc3339_now()
        await save(call, session, revision)
    echoed = [
        await _record(call, session, event, answers.get(n), confirmed.get(n))
        for n, event in enumerate(events)
    ]
    if first:
        await _start(call, session, "\n\n".join(task))
    elif task:
        await _follow_up(call, session, "\n\n".join(task), next_turn)
    for n, event in enumerate(events):
        if isinstance(event, Interrupt) and session.started:
            thread = "" if event.session_thread_id in (None, LEAD) else event.session_thread_id
            await interrupt(call.bus, id, thread or "", "user.interrupt", by=f"api:{call.workspace}")
        elif isinstance(event, Confirmation):
            request = confirmed[n]
            try:
                await approvals.answer(
                    call.bus,
                    id,
                    request.tool_use_id,
                    event.result,
                    event.deny_message or "",
                    by=f"api:{call.workspace}",
                )
            except StaffworkError as exc:
                raise ApiError(409, str(exc)) from None
        elif isinstance(event, ToolAnswer):
            found = answers[n]
            text = texts(event.content or [], f"events[{n}]")
            try:
                await Client(call.bus).answer_tool(id, found.tool_use_id, text, is_error=bool(event.is_error))
            except StaffworkError as exc:
                raise ApiError(409, str(exc)) from None
    return echoed


async def _record(
    call: Call,
    session: ApiSession,
    event: Any,
    answered: CustomToolUse | None,
    confirmed: ToolConfirmationRequested | None,
) -> dict[str, Any]:
    """Store the event in the session's log as a ``user.event``; its echo."""
    payload: dict[str, Any] = msgspec.to_builtins(event)
    kind = str(payload.pop("type"))
    thread = LEAD
    if isinstance(event, DefineOutcome):
        payload["outcome_id"] = outcome_id(session.id)
        payload.setdefault("max_iterations", 3)
        payload["max_iterations"] = payload["max_iterations"] or 3
    elif isinstance(event, Interrupt):
        payload = {k: v for k, v in payload.items() if v is not None}
    elif confirmed is not None:
        payload = {k: v for k, v in payload.items() if v is not None}
        if confirmed.thread_id != LEAD:
            thread = payload["session_thread_id"] = confirmed.thread_id
    elif answered is not None:
        payload = {k: v for k, v in payload.items() if v is not None}
        payload["custom_tool_use_id"] = event_id(answered.msg_id)
        if answered.thread_id != LEAD:
            thread = payload["session_thread_id"] = answered.thread_id
    recorded = UserEvent(
        session_id=session.id, thread_id=thread, agent="user", event_type=kind, payload=payload
    )
    await call.bus.publish(call.bus.subjects.event(session.id, event_kind(UserEvent)), recorded)
    return {**payload, "id": event_id(recorded.msg_id), "type": kind, "processed_at": rfc3339(recorded.time)}


async def _start(call: Call, session: ApiSession, task: str) -> None:
    """Start the staffwork session; if the gateway refuses or does not answer, the API session is
    not started (a later user.message may try again)."""
    outcome = session.outcome.outcome if session.outcome else None
    try:
        webhooks = list(call.state.keys.webhooks.get(call.workspace, ())) or None
        await Client(call.bus).submit(
            task, team=session.team, session_id=session.id, outcome=outcome, webhooks=webhooks
        )
    except (SubmitRefused, BusError) as exc:
        current, revision = await load_for_update(call, session.id)
        current.started = False
        await call.records.update(call.workspace, KIND, current.id, current, revision)
        if isinstance(exc, SubmitRefused):
            raise ApiError(
                409 if exc.kind == "conflict" else 400, f"the session could not start: {exc}"
            ) from None
        raise


async def _follow_up(call: Call, session: ApiSession, text: str, turn: int) -> None:
    """A follow-up turn of the staffwork session, graded against the outcome defined for it."""
    defined = session.outcome
    outcome = defined.outcome if defined is not None and defined.turn == turn else None
    try:
        await Client(call.bus).send(session.id, text, turn=turn, outcome=outcome)
    except SubmitRefused as exc:
        status = 409 if exc.kind in ("busy", "ended", "conflict") else 400
        raise ApiError(status, f"the follow-up was not taken: {exc}") from None


def _not_idle(id: str, status: str, stop_reason: str) -> str:
    if status in ("pending", "running"):
        return (
            f"session {id!r} is {status}: send a user.message once it is idle (session.status_idle), "
            "or interrupt it first (user.interrupt)"
        )
    return f"session {id!r} ended ({status}: {stop_reason or status}): it takes no more user.message events"


async def send(call: Call) -> object:
    body = await call.body(SendBody)
    return {"data": await send_events(call, call.path("session_id"), list(body.events))}


routes: list[Route] = [route("/v1/sessions/{session_id}/events", send, "POST")]
