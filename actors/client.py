"""The Python client: start sessions, follow them, read their files. The CLI uses it too.

::

    async with await Client.connect("nats://127.0.0.1:4222") as client:
        session_id = await client.submit("Why did checkout fail?", team="incident")
        async for event in client.events(session_id):
            print(event_kind(event), event.agent)
        result = await client.wait(session_id)
        report = await client.read_file(session_id, result.report_path)
        for call in await client.confirmations(session_id):  # tool calls waiting for a person
            await client.approve(session_id, call.tool_use_id, by="dana")
        turn = await client.send(session_id, "Now add a timeline of the deploys.")
        followed = await client.wait(session_id, turn=turn)
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType

import structlog

from actors.sessions import approvals
from actors.sessions.answers import announced, first_answer
from actors.sessions.cancel import cancel_session, interrupt
from actors.sessions.directory import SessionDirectory
from bus.codec import Decoder
from bus.connection import Bus
from bus.errors import BusTimeout, StaffworkError
from bus.logs import configure_logging
from bus.workspace import Workspace
from schemas.files import FileInfo
from schemas.outcome import Outcome
from schemas.session import SessionMessage, SessionRecord, SessionResult, SessionSubmit, SubmitReply
from schemas.team import TeamSpec
from schemas.thread import CustomToolResult, ToolConfirmation
from schemas.trace import (
    AnyTraceEvent,
    CustomToolUse,
    SessionStatusIdle,
    SessionStatusTerminated,
    ToolConfirmationRequested,
)
from schemas.webhooks import WebhookSpec

log = structlog.get_logger("staffwork.client")

_result: Decoder[SessionResult] = Decoder(SessionResult, max_bytes=4 * 1024 * 1024)
_reply: Decoder[SubmitReply] = Decoder(SubmitReply)
_custom_call: Decoder[CustomToolUse] = Decoder(CustomToolUse, max_bytes=4 * 1024 * 1024)
_custom_answer: Decoder[CustomToolResult] = Decoder(CustomToolResult, max_bytes=8 * 1024 * 1024)


class SubmitRefused(StaffworkError):
    """The gateway refused a session request; ``kind`` and the message say why."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind
        super().__init__(message)


class Client:
    def __init__(self, bus: Bus, *, owns_bus: bool = False) -> None:
        self.bus = bus
        self.workspace = Workspace(bus)
        self.directory = SessionDirectory(bus)
        self._owns_bus = owns_bus

    @classmethod
    async def connect(cls, url: str, *, root: str = "sw", name: str = "staffwork-client") -> Client:
        if not structlog.is_configured():  # a program of the caller's: its stdout is its own
            configure_logging("warning", stream=sys.stderr)
        return cls(await Bus.connect(url, root=root, name=name), owns_bus=True)

    async def close(self) -> None:
        if self._owns_bus:
            await self.bus.close()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def submit(
        self,
        task: str,
        *,
        team: str | TeamSpec,
        inputs: list[str] | None = None,
        session_id: str | None = None,
        idempotency_key: str = "",
        deadline_s: float | None = None,
        outcome: Outcome | None = None,
        webhooks: list[WebhookSpec] | None = None,
        timeout: float = 10.0,
    ) -> str:
        """Start a session (through the gateway, which validates it); return its id. ``outcome`` and
        ``webhooks`` replace the team's for this session."""
        fields: dict[str, object] = {"task": task, "inputs": inputs or [], "idempotency_key": idempotency_key}
        fields |= {"team_spec": team} if isinstance(team, TeamSpec) else {"team": team}
        if session_id:
            fields["session_id"] = session_id
        if deadline_s is not None:
            fields["deadline_s"] = deadline_s
        if outcome is not None:
            fields["outcome"] = outcome
        if webhooks is not None:
            fields["webhooks"] = webhooks
        request = SessionSubmit(**fields)  # type: ignore[arg-type]
        answer = await self.bus.request(
            self.bus.subjects.api_submit,
            request,
            timeout=timeout,
            hint="no lead is running (start one: staffwork up, or staffwork actor lead)",
        )
        return _accepted(answer).session_id

    async def send(
        self,
        session_id: str,
        text: str,
        *,
        turn: int | None = None,
        inputs: list[str] | None = None,
        outcome: Outcome | None = None,
        deadline_s: float | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Send a follow-up to an idle session: the lead takes another turn with its whole history.
        Returns the turn's number (for :meth:`wait`); ``turn`` defaults to the session's next one.
        :class:`SubmitRefused` says why the session cannot take it (``busy``, ``ended``...)."""
        if turn is None:
            record = await self.directory.get(session_id)
            turn = (record.turn if record is not None else 0) + 1
        message = SessionMessage(
            session_id=session_id,
            text=text,
            turn=turn,
            inputs=inputs or [],
            outcome=outcome,
            deadline_s=deadline_s,
        )
        answer = await self.bus.request(
            self.bus.subjects.api_message,
            message,
            timeout=timeout,
            hint="no lead is running (start one: staffwork up, or staffwork actor lead)",
        )
        _accepted(answer)
        return turn

    async def wait(self, session_id: str, timeout: float | None = None, *, turn: int = 0) -> SessionResult:
        """The result of the session's ``turn`` (0: the submit's), once there is one (it may already
        be stored)."""
        subject = self.bus.subjects.out(session_id, "result")
        stream = self.bus.follow(subject, SessionResult)
        try:
            async with asyncio.timeout(timeout):
                async for result in stream:
                    if result.turn == turn:
                        return result
        except TimeoutError:
            pass
        finally:
            await stream.aclose()
        raise BusTimeout(f"wait for the result of the session's turn {turn}", subject, timeout or 0.0)

    async def events(self, session_id: str, *, turn: int = 0) -> AsyncIterator[AnyTraceEvent]:
        """The session's trace events from the first, then live, until its ``turn`` ends (0: the
        submit's; each turn ends with one ``session.status_idle`` of the lead thread) or it stops."""
        stream = self.bus.follow(self.bus.subjects.events(session_id), AnyTraceEvent)
        ended = 0
        try:
            async for event in stream:
                yield event
                if event.thread_id != "lead":
                    continue
                if isinstance(event, SessionStatusTerminated):
                    return
                if isinstance(event, SessionStatusIdle):
                    ended += 1
                    if ended > turn:
                        return
        finally:
            await stream.aclose()

    async def read_file(self, session_id: str, path: str) -> bytes:
        return await self.workspace.get(session_id, path)

    async def files(self, session_id: str, prefix: str = "") -> list[FileInfo]:
        return await self.workspace.list(session_id, prefix)

    async def upload(self, session_id: str, directory: Path, *, under: str = "") -> list[str]:
        """Put every file below ``directory`` into the session's workspace; return their paths."""
        paths = []
        found = await asyncio.to_thread(lambda: sorted(p for p in directory.rglob("*") if p.is_file()))
        for file in found:
            relative = file.relative_to(directory).as_posix()
            path = f"{under.strip('/')}/{relative}" if under.strip("/") else relative
            with file.open("rb") as handle:
                await self.workspace.put(session_id, path, handle)
            paths.append(path)
        return paths

    async def status(self, session_id: str) -> SessionRecord | None:
        return await self.directory.get(session_id)

    async def cancel(self, session_id: str, reason: str = "canceled by the user") -> None:
        await cancel_session(self.bus, session_id, reason)

    async def interrupt(self, session_id: str, thread_id: str = "", reason: str = "", by: str = "") -> None:
        """Stop one thread's work in progress, or every thread's and the lead's turn (no ``thread_id``):
        the session goes on, idle, and takes follow-ups. ``by`` says who, in the trace."""
        await interrupt(self.bus, session_id, thread_id, reason, by)

    async def custom_tool_calls(self, session_id: str, *, pending: bool = True) -> list[CustomToolUse]:
        """The session's calls to custom tools (the ones the caller answers), oldest first; with
        ``pending`` only those not answered yet."""
        calls = await announced(self.bus, session_id, CustomToolUse, _custom_call)
        if not pending:
            return calls
        answered = await asyncio.gather(*(self._custom_answer(session_id, c.tool_use_id) for c in calls))
        return [call for call, answer in zip(calls, answered, strict=True) if answer is None]

    async def _custom_answer(self, session_id: str, tool_use_id: str) -> CustomToolResult | None:
        """The call's answer, if one is stored (what else is on its subject does not count)."""
        subject = self.bus.subjects.tool_result(session_id, tool_use_id)
        return await first_answer(self.bus, subject, _custom_answer, session_id, tool_use_id)

    async def answer_tool(
        self, session_id: str, tool_use_id: str, content: str, *, is_error: bool = False
    ) -> None:
        """Answer a custom tool call of the session (a ``user.custom_tool_result``): its thread goes
        on with ``content`` as the call's result. :class:`StaffworkError` if the session made no
        such call or it is already answered."""
        calls = {c.tool_use_id: c for c in await self.custom_tool_calls(session_id, pending=False)}
        if tool_use_id not in calls:
            known = ", ".join(calls) or "none"
            raise StaffworkError(
                f"session {session_id!r} has no custom tool call {tool_use_id!r} (its calls: {known})"
            )
        subject = self.bus.subjects.tool_result(session_id, tool_use_id)
        answer = CustomToolResult(
            session_id=session_id, custom_tool_use_id=tool_use_id, content=content, is_error=is_error
        )
        if await self._custom_answer(session_id, tool_use_id) or not await self.bus.publish_once(
            subject, answer, msg_id=f"{session_id}.{tool_use_id}.answer"
        ):
            raise StaffworkError(
                f"custom tool call {tool_use_id!r} of session {session_id!r} is already answered"
            )

    async def confirmations(
        self, session_id: str, *, pending: bool = True
    ) -> list[ToolConfirmationRequested]:
        """The session's tool calls that asked for a person's confirmation, oldest first; with
        ``pending`` only those still waiting."""
        if pending:
            return await approvals.pending(self.bus, session_id)
        return await approvals.requests(self.bus, session_id)

    async def approve(self, session_id: str, tool_use_id: str, *, by: str = "") -> ToolConfirmation:
        """Let a waiting tool call run. ``by`` says who, in the trace. :class:`StaffworkError` if the
        session has no such call or it is already answered."""
        return await approvals.answer(self.bus, session_id, tool_use_id, "allow", by=by)

    async def deny(
        self, session_id: str, tool_use_id: str, reason: str = "", *, by: str = ""
    ) -> ToolConfirmation:
        """Refuse a waiting tool call: its model gets an error result with ``reason``. ``by`` says
        who, in the trace. :class:`StaffworkError` if the session has no such call or it is
        already answered."""
        return await approvals.answer(self.bus, session_id, tool_use_id, "deny", reason, by=by)


def _accepted(answer: bytes) -> SubmitReply:
    """The gateway's reply if it accepted the request; :class:`SubmitRefused` (kind and why) if not."""
    reply = _reply.decode(answer)
    if not reply.accepted:
        error = reply.error
        raise SubmitRefused(error.kind if error else "refused", error.message if error else "refused")
    for warning in reply.warnings:  # accepted, but something may stop it finishing well
        log.warning("submit_warning", session_id=reply.session_id, warning=warning)
    return reply


__all__ = ["Client", "SubmitRefused"]
