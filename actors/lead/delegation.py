"""The lead's delegation: ``delegate`` starts a roster agent's thread, ``message_agent`` continues one.

:class:`Delegations` sends a session's :class:`Delegation` and :class:`FollowUp` requests and waits
for their :class:`ThreadReply`, holding one of ``max_concurrent_threads`` slots each (more wait, none
is dropped). A request whose reply is already in the stream (a replay, or a reply published while
the connection was down) is not sent again: the stored reply is used. A reply counts only if it
answers the request (its ``in_reply_to``, thread, agent and session match); anything else on the
reply subject is rejected with a ``bus.message_rejected`` event and ignored. A request no worker
has taken within ``claim_timeout`` (its trigger is not in the thread's history) while no worker
serves its agent fails, and so does one JetStream stopped delivering (:func:`given_up_reply`, from
the max-deliveries advisory). A thread the user interrupted is no failure: its tool result says so
and names the thread to continue with ``message_agent``. The lead's tools reach it through
:class:`~actors.agent.tools.base.Delegating` on their :class:`ToolContext`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from actors.agent.tools.base import Delegating, Tool, ToolContext, ToolError, tool
from actors.lead.strays import Strays
from bus.codec import Decoder
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import MessageRejected
from bus.history import ThreadHistory, ThreadLog
from bus.state import Listener
from schemas.base import ErrorInfo, Usage
from schemas.team import TeamSpec
from schemas.thread import LEAD_THREAD, Delegation, FollowUp, ThreadReply, thread_id_for
from schemas.trace import ThreadMessageReceived, ThreadMessageSent

REPLY_RECHECK = 10.0  # seconds between looks in the stream for a reply the subscription missed
_REPLY_BYTES = 4 * 1024 * 1024
_replies: Decoder[ThreadReply] = Decoder(ThreadReply, max_bytes=_REPLY_BYTES)
_requests: Decoder[Delegation | FollowUp] = Decoder(Delegation | FollowUp)

Request = Delegation | FollowUp


def failed_reply(request: Request, kind: str, message: str) -> ThreadReply:
    """The failed reply the lead gives itself (and stores) for a request no worker answered."""
    return ThreadReply(
        session_id=request.session_id,
        msg_id=f"{request.msg_id}.reply",  # the worker's reply would have this id: only one is stored
        thread_id=request.thread_id,
        agent=request.agent,
        status="failed",
        text=message,
        error=ErrorInfo(kind=kind, message=message),
        in_reply_to=request.msg_id,
    )


async def given_up_reply(bus: Bus, stream_seq: int, deliveries: int) -> ThreadReply | None:
    """The failed reply to the delegation or follow-up at ``stream_seq`` of the log stream, which
    JetStream will not deliver again (``max_deliver`` reached: each worker that took it stopped
    without settling it). None if that message is gone or is not a request."""
    stored = await bus.stored_message(bus.subjects.log_stream, stream_seq)
    if stored is None:
        return None
    try:
        request = _requests.decode(stored[1], subject=stored[0])
    except MessageRejected:
        return None
    message = (
        f"JetStream gave up delivering {request.msg_id} to agent {request.agent!r} after "
        f"{deliveries} deliveries (each worker that took it stopped without answering, e.g. it was "
        "killed)"
    )
    return failed_reply(request, "undelivered", message)


class Delegations:
    """One session's threads: requests sent, replies awaited, and which agent runs which thread."""

    def __init__(
        self,
        bus: Bus,
        session_id: str,
        team: TeamSpec,
        *,
        on_usage: Callable[[Usage], None],
        claim_timeout: float = 120.0,
    ) -> None:
        self.bus = bus
        self.sid = session_id
        self.team = team
        self.threads: dict[str, str] = {}  # thread id -> agent
        self.claim_timeout = claim_timeout
        self._on_usage = on_usage
        self._slots = asyncio.Semaphore(team.max_concurrent_threads)
        self._pending: dict[str, tuple[Request, asyncio.Future[ThreadReply]]] = {}
        self._sent: set[str] = set()  # request ids this lead sent or looked up (late replies are fine)
        self._strays = Strays(bus, session_id, team.lead.name, what="not a reply to this lead's request")
        self._listener: Listener[ThreadReply] | None = None
        self._log = ThreadLog(bus)

    async def start(self) -> None:
        """Listen for the session's replies (before any request is sent)."""
        self._listener = await self.bus.listen(
            self.bus.subjects.replies(self.sid),
            ThreadReply,
            self._on_reply,
            max_bytes=_REPLY_BYTES,
            on_rejected=self._strays.reject,
        )

    async def close(self) -> None:
        if self._listener is not None:
            await self._listener.close()

    def replay(self, history: ThreadHistory) -> None:
        """Know the threads the lead's history started before a replay."""
        for entry in history.entries:
            for use in entry.turn.tool_uses:
                if use.name == "delegate" and isinstance(use.input.get("agent"), str):
                    self.threads[thread_id_for(use.id)] = use.input["agent"]

    async def delegate(self, agent: str, task: str, tool_use_id: str, *, replayed: bool = True) -> str:
        try:
            self.team.agent(agent)
        except KeyError as exc:
            raise ToolError(str(exc.args[0])) from None
        thread_id = thread_id_for(tool_use_id)
        self.threads[thread_id] = agent
        request = Delegation(
            session_id=self.sid,
            msg_id=f"dlg-{self.sid}-{thread_id}",  # unique across sessions: JetStream dedups on it
            thread_id=thread_id,
            agent=agent,
            task=task,
            parent_thread_id=LEAD_THREAD,
            tool_use_id=tool_use_id,
        )
        return _describe(await self._exchange(request, agent, task, replayed=replayed))

    async def message_agent(
        self, thread_id: str, message: str, tool_use_id: str, *, replayed: bool = True
    ) -> str:
        agent = self.threads.get(thread_id)
        if agent is None:
            known = ", ".join(f"{t} ({a})" for t, a in self.threads.items()) or "none yet"
            raise ToolError(f"no thread {thread_id!r} in this session (threads: {known})")
        request = FollowUp(
            session_id=self.sid,
            msg_id=f"fup-{self.sid}-{thread_id_for(tool_use_id)}",
            thread_id=thread_id,
            agent=agent,
            message=message,
            parent_thread_id=LEAD_THREAD,
            tool_use_id=tool_use_id,
        )
        return _describe(await self._exchange(request, agent, message, replayed=replayed))

    async def _exchange(
        self, request: Delegation | FollowUp, agent: str, content: str, *, replayed: bool
    ) -> ThreadReply:
        """Send a request to a thread and wait for its reply, holding one of the session's thread
        slots meanwhile. A replayed request (its turn was recorded before this run) may have been
        answered already: the stream is read first. A new one is sent at once (its tool use id was
        just minted), unless JetStream says it was sent before (the same id again): then too the
        stored reply is used."""
        lead = self.team.lead.name
        async with self._slots:
            future: asyncio.Future[ThreadReply] = asyncio.get_running_loop().create_future()
            self._pending[request.msg_id] = (request, future)
            self._sent.add(request.msg_id)
            try:
                reply = await self._stored_reply(request) if replayed else None
                if reply is None:
                    fields: dict[str, Any] = {"session_id": self.sid, "thread_id": LEAD_THREAD, "agent": lead}
                    await self.bus.emit(
                        ThreadMessageSent(
                            to_thread_id=request.thread_id, to_agent=agent, content=content, **fields
                        )
                    )
                    subject = self.bus.subjects.task(self.sid, agent)
                    if not await self.bus.publish_once(subject, request, msg_id=request.msg_id):
                        reply = None if replayed else await self._stored_reply(request)
                    reply = reply or await self._await_reply(request, future)
            finally:
                self._pending.pop(request.msg_id, None)
        self._on_usage(reply.usage)
        await self.bus.emit(
            ThreadMessageReceived(
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=lead,
                from_thread_id=reply.thread_id,
                from_agent=reply.agent,
                content=reply.text[:20_000],
            )
        )
        if reply.status == "failed":
            message = reply.error.message if reply.error else reply.text
            raise ToolError(f"thread {reply.thread_id} ({reply.agent}) failed: {message}")
        return reply

    async def _stored_reply(self, request: Request) -> ThreadReply | None:
        """The reply to ``request`` if it is already in the stream (a replay, or a missed message);
        stray messages on the reply subject are rejected (reported once) and skipped."""
        subject = self.bus.subjects.reply(self.sid, request.thread_id)
        async for stored in read_subject(self.bus, self.bus.subjects.log_stream, subject):
            try:
                reply = _replies.decode(stored.data, subject=subject)
            except MessageRejected as exc:
                await self._strays.reject(subject, stored.data, exc.reason)
                continue
            if reply.in_reply_to == request.msg_id:
                problem = _mismatch(request, reply)
                if not problem:
                    return reply
                await self._strays.reject(subject, stored.data, problem)
            elif reply.in_reply_to not in self._sent and not _ours(self.sid, reply.in_reply_to):
                await self._strays.reject(subject, stored.data, f"answers no request: {reply.in_reply_to!r}")
        return None

    async def _await_reply(self, request: Request, future: asyncio.Future[ThreadReply]) -> ThreadReply:
        """Wait for the reply; every ``REPLY_RECHECK`` seconds also look in the stream, so a reply
        published while this connection was down (the live subscription missed it) is still found.
        A request no worker has taken within ``claim_timeout`` fails, unless the agent's workers are
        busy (it waits its turn, another ``claim_timeout`` at a time). The wait itself is bounded by
        the session's deadline, and a request JetStream gives up on is answered by the lead."""
        claim_by = time.monotonic() + self.claim_timeout
        claimed = False
        while True:
            wait = REPLY_RECHECK if claimed else max(0.0, min(REPLY_RECHECK, claim_by - time.monotonic()))
            try:
                return await asyncio.wait_for(asyncio.shield(future), wait)
            except TimeoutError:
                stored = await self._stored_reply(request)
                if stored is not None:
                    return stored
            if not claimed:
                try:
                    history = await self._log.load(self.sid, request.thread_id)
                except MessageRejected:  # a stray entry in the thread's log: look again next time
                    history = ThreadHistory(session_id=self.sid, thread_id=request.thread_id)
                claimed = history.has_trigger(request.msg_id)
                if not claimed and time.monotonic() >= claim_by:
                    consumer = self.bus.subjects.agent_consumer(request.agent)
                    if not await self.bus.consumer_served(consumer):
                        return await self._unclaimed(request)
                    claim_by += self.claim_timeout  # its workers are busy: it is queued, not lost

    async def _unclaimed(self, request: Request) -> ThreadReply:
        """Fail a request no worker took, storing the failure (a replaying lead finds it)."""
        message = (
            f"no worker took the request {request.msg_id} within {self.claim_timeout:g}s: is a worker "
            f"serving agent {request.agent!r} running? (staffwork actor subagent --agents "
            f"{request.agent}, or staffwork up)"
        )
        reply = failed_reply(request, "unclaimed", message)
        await self.bus.publish(self.bus.subjects.reply(self.sid, request.thread_id), reply)
        return reply

    async def _on_reply(self, reply: ThreadReply) -> None:
        pending = self._pending.get(reply.in_reply_to)
        subject = self.bus.subjects.replies(self.sid)
        if pending is None:
            if reply.in_reply_to not in self._sent and not _ours(self.sid, reply.in_reply_to):
                await self._strays.reject(
                    subject, msgspec.json.encode(reply), "answers no request of this lead"
                )
            return
        request, future = pending
        if problem := _mismatch(request, reply):
            await self._strays.reject(subject, msgspec.json.encode(reply), problem)
            return
        if not future.done():
            future.set_result(reply)


def _ours(session_id: str, request_id: str) -> bool:
    """Whether ``request_id`` has the form of this session's requests (a late or replayed reply)."""
    return request_id.startswith((f"dlg-{session_id}-", f"fup-{session_id}-"))


def _mismatch(request: Request, reply: ThreadReply) -> str:
    """Why ``reply`` is not the answer to ``request`` ("" if it is)."""
    for field, want, got in (
        ("session", request.session_id, reply.session_id),
        ("thread", request.thread_id, reply.thread_id),
        ("agent", request.agent, reply.agent),
    ):
        if want != got:
            return f"{field} {got!r} where the request {request.msg_id} has {want!r}"
    return ""


def _describe(reply: ThreadReply) -> str:
    parts = [f"[thread {reply.thread_id} · agent {reply.agent} · {reply.status}]\n{reply.text}"]
    if reply.files:
        parts.append(f"files written: {', '.join(reply.files)}")
    if reply.status == "interrupted":  # not a failure: the thread goes on where it stopped if asked to
        parts.append(
            f"To continue it, call message_agent with thread_id {reply.thread_id!r}; "
            "otherwise go on without its answer."
        )
    return "\n\n".join(parts)


def _delegating(ctx: ToolContext, name: str) -> Delegating:
    if ctx.delegating is None:
        raise ToolError(f"{name} is the lead's tool: agent {ctx.agent!r} cannot delegate")
    return ctx.delegating


@tool
async def delegate(
    ctx: ToolContext,
    *,
    agent: Annotated[str, msgspec.Meta(description="The roster agent's name.")],
    task: Annotated[str, msgspec.Meta(description="A self-contained task for that agent.", min_length=1)],
) -> str:
    """Delegate a task to a specialist on your team. It works in its own thread, with its own tools,
    and its final answer comes back as this tool's result (with the thread id for follow-ups)."""
    return await _delegating(ctx, "delegate").delegate(agent, task, ctx.tool_use_id, replayed=ctx.replayed)


@tool
async def message_agent(
    ctx: ToolContext,
    *,
    thread_id: Annotated[str, msgspec.Meta(description="The thread id a delegate result gave you.")],
    message: Annotated[str, msgspec.Meta(description="Your follow-up.", min_length=1)],
) -> str:
    """Send a follow-up to a specialist's existing thread. It continues with its full history (its
    earlier task, tool calls and answers) and its new answer comes back as this tool's result."""
    return await _delegating(ctx, "message_agent").message_agent(
        thread_id, message, ctx.tool_use_id, replayed=ctx.replayed
    )


LEAD_TOOLS: dict[str, Tool] = {"delegate": delegate, "message_agent": message_agent}
