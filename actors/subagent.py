"""The subagent worker: runs delegations and follow-ups on threads whose history lives in JetStream.

One :class:`SubagentActor` serves one agent (consumer ``agent_<name>``). A delegation creates its
thread; a follow-up continues the thread's history, whichever worker picks it up. The same message
delivered twice never creates a second thread and never repeats finished work: the trigger's id is in
the log, and a finished answer is sent again as is. Across processes the history log decides who
owns a thread: the worker whose append conflicts steps aside.

A request's work races the session's cancel and the interrupts that name its thread: an interrupted
request closes its pending tool calls, records a stop note (which ends the request, for a redelivery
too) and replies ``interrupted``; the thread idles and a follow-up continues it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

from actors.agent.loop import INTERRUPTED, AgentLoop, LoopResult, answer_for, record_interrupt
from actors.agent.models.base import Model
from actors.agent.tools.base import ToolContext
from actors.agent.tools.memory import memory_note
from actors.agent.tools.sources import ToolSources
from actors.agent.tools.workspace import write_and_record
from actors.sessions.cancel import CancelWatch, race_cancel
from actors.sessions.directory import STOPPED, SessionDirectory
from bus.actor import BaseActor, Context
from bus.connection import Bus
from bus.errors import HistoryConflict, InvalidPath, Retryable
from bus.history import ThreadHistory, ThreadLog
from bus.objects import normalize_path
from bus.provision import ConsumerSpec, agent_consumer
from bus.subjects import Subjects
from bus.workspace import Workspace
from schemas.base import ErrorInfo, Message, Usage
from schemas.conversation import TextBlock, ThreadTurn, ToolResultBlock, Turn
from schemas.files import Provenance
from schemas.team import AgentSpec, TeamSpec
from schemas.thread import Delegation, FollowUp, ThreadOutcome, ThreadReply
from schemas.trace import ThreadCreated, ThreadStatusIdle, ThreadStatusRunning

SubagentInbox = Delegation | FollowUp
MAX_REPLY_CHARS = 100_000
#: how a request that ended with this stop reason is reported when its answer is sent again
_ENDED_AS: dict[str, ThreadOutcome] = {
    "max_turns": "max_turns_reached",
    "error": "failed",
    "refusal": "failed",
    INTERRUPTED: "interrupted",
}


def subagent_system_prompt(team: TeamSpec, spec: AgentSpec) -> str:
    base = spec.system or f"You are {spec.name}, a specialist on the team {team.name!r}."
    prompt = (
        f"{base}\n\nYou work on one task delegated by the team's lead. Files you write go to the session's "
        "shared workspace, which the lead and the other agents can read. Answer with your findings: "
        "the lead reads only your final message."
    )
    note = memory_note(spec)
    return f"{prompt}\n\n{note}" if note else prompt


class SubagentActor(BaseActor[SubagentInbox]):
    role = "subagent"
    inbox = SubagentInbox

    def __init__(
        self,
        agent: str,
        *,
        model: Model,
        directory: SessionDirectory,
        cancels: CancelWatch,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        sources: ToolSources | None = None,
        warm: AgentSpec | None = None,
    ) -> None:
        self.agent = agent
        #: the agent as a known team defines it: its MCP servers start with the worker, not on its
        #: first request (``staffwork run`` knows the team before the session starts)
        self.warm = warm
        self._warming: asyncio.Task[None] | None = None
        #: the agent's MCP servers run here, and only here
        self.sources = sources or ToolSources()
        self.role = f"subagent:{agent}"
        self.model = model
        self.directory = directory
        self.cancels = cancels
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self._threads: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, requests using it

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        spec = agent_consumer(subjects, self.agent, ack_wait=self.ack_wait)
        return dataclasses.replace(spec, max_deliver=self.max_deliver)

    async def on_start(self, bus: Bus) -> None:
        await self.cancels.start()
        if self.warm is not None:
            self._warming = asyncio.create_task(self.sources.warm(self.warm), name=f"warm-{self.agent}")

    async def on_stop(self) -> None:
        await self.cancels.stop()
        if self._warming is not None:
            self._warming.cancel()
            await asyncio.wait({self._warming})
        await self.sources.close()

    def reply_subject(self, msg: SubagentInbox, reply: Message, ctx: Context) -> str | None:
        return ctx.bus.subjects.reply(msg.session_id, msg.thread_id)

    def failure(self, msg: SubagentInbox, error: ErrorInfo) -> Message | None:
        return ThreadReply(
            session_id=msg.session_id,
            thread_id=msg.thread_id,
            agent=msg.agent,
            status="failed",
            text=error.message,
            error=error,
            in_reply_to=msg.msg_id,
        )

    def _reply(self, msg: SubagentInbox, **fields: Any) -> ThreadReply:
        return ThreadReply(
            session_id=msg.session_id,
            thread_id=msg.thread_id,
            agent=msg.agent,
            in_reply_to=msg.msg_id,
            **fields,
        )

    async def handle(self, msg: SubagentInbox, ctx: Context) -> Message | None:
        """One request at a time per thread in this process; a duplicate waits, then finds the answer.

        Across processes the history log decides: whoever appends second gets a conflict and retries
        later (by then the thread's answer is in the log).
        """
        key = f"{msg.session_id}/{msg.thread_id}"
        lock, users = self._threads.get(key, (asyncio.Lock(), 0))
        self._threads[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._handle(msg, ctx)
        except HistoryConflict:
            # Another process extended this thread first: it owns the work and will reply. Step
            # aside (ack without a reply); if that process dies, its own delivery comes back.
            ctx.log.info("thread_taken_by_another_worker", thread_id=msg.thread_id)
            return None
        finally:
            lock, users = self._threads[key]
            if users <= 1:
                del self._threads[key]
            else:
                self._threads[key] = (lock, users - 1)

    async def _handle(self, msg: SubagentInbox, ctx: Context) -> Message | None:
        bus = ctx.bus
        log = ThreadLog(bus, reader=self.role)
        # One read of the session's record gives its team and whether it was stopped. A delegation's
        # first delivery starts a new thread: its claim is appended on an empty log without reading
        # it first (one round trip less); if the log turns out not to be empty, it is read and handled
        # as any other delivery. Other requests read the log alongside the record.
        optimistic = isinstance(msg, Delegation) and ctx.delivery == 1
        if optimistic:
            found = await self.directory.lookup(msg.session_id)
            history = ThreadHistory(session_id=msg.session_id, thread_id=msg.thread_id)
        else:
            found, history = await asyncio.gather(
                self.directory.lookup(msg.session_id), log.load(msg.session_id, msg.thread_id)
            )
        if found is None:
            error = ErrorInfo(kind="unknown_session", message=f"session {msg.session_id!r} is not recorded")
            return self._reply(msg, status="failed", text=error.message, error=error)
        team, status = found
        try:
            spec = team.agent(msg.agent)
        except KeyError as exc:
            error = ErrorInfo(kind="unknown_agent", message=str(exc.args[0]))
            return self._reply(msg, status="failed", text=error.message, error=error)
        if status in STOPPED:
            return self._reply(msg, status="canceled", text="the session was canceled")
        if optimistic:
            try:
                await self._start_turn(bus, log, history, msg, spec)
            except HistoryConflict:  # not new after all: the log was read into ``history``
                optimistic = False
        if not optimistic and not await self._start_turn(bus, log, history, msg, spec):
            error = ErrorInfo(
                kind="unknown_thread", message=f"no thread {msg.thread_id!r} in session {msg.session_id!r}"
            )
            return self._reply(msg, status="failed", text=error.message, error=error)

        answered = answer_for(history, msg.msg_id)
        if answered is not None:
            # This request was answered before (a redelivery, or a duplicate): answer it again.
            return self._answer_again(msg, history, answered)

        workspace = Workspace(bus)
        fields: dict[str, Any] = {
            "session_id": msg.session_id,
            "thread_id": msg.thread_id,
            "agent": msg.agent,
        }
        await bus.emit(ThreadStatusRunning(**fields))
        loop = AgentLoop(
            bus=bus,
            model=self.model,
            log=log,
            history=history,
            spec=spec,
            model_name=team.model_of(spec),
            system=subagent_system_prompt(team, spec),
            toolbox=await self.sources.toolbox(
                bus, team, spec, session_id=msg.session_id, thread_id=msg.thread_id
            ),
            tool_context=lambda tool_use_id: ToolContext(
                bus=bus,
                workspace=workspace,
                session_id=msg.session_id,
                thread_id=msg.thread_id,
                agent=msg.agent,
                tool_use_id=tool_use_id,
                memory={attached.store: attached for attached in spec.memory},
            ),
            prices=team.prices,
        )
        work: asyncio.Task[LoopResult] = asyncio.ensure_future(loop.run())
        with self.cancels.interrupts(msg.session_id, msg.thread_id) as interrupted:
            outcome = await race_cancel(
                work, (self.cancels.event(msg.session_id), "canceled"), (interrupted, INTERRUPTED)
            )
            stopped_by = self.cancels.interrupt_of(interrupted)
        reason, by = (stopped_by.reason, stopped_by.by) if stopped_by is not None else ("", "")
        if outcome == "canceled":
            await bus.emit(ThreadStatusIdle(stop_reason="canceled", **fields))
            return self._reply(msg, status="canceled", text="the session was canceled", usage=loop.usage)
        if outcome == INTERRUPTED:
            ctx.log.info("thread_interrupted", thread_id=msg.thread_id, reason=reason)
            history = await record_interrupt(bus, log, history, reason, by=by)
            answered = answer_for(history, msg.msg_id)
            assert answered is not None  # the note, or the answer that came just before the interrupt
            await bus.emit(ThreadStatusIdle(stop_reason=answered.stop_reason or "end_turn", **fields))
            return self._answer_again(msg, history, answered, usage=loop.usage, turns=loop.model_turns)
        result = work.result()
        await bus.emit(ThreadStatusIdle(stop_reason=result.stop_reason, **fields))
        text = result.text
        if len(text) > MAX_REPLY_CHARS:  # keep the message small: the whole answer goes to the workspace
            path = f"replies/{msg.thread_id}-{msg.msg_id}.md"
            writer = Provenance(session_id=msg.session_id, thread_id=msg.thread_id, agent=msg.agent)
            await write_and_record(bus, workspace, writer, path, text)
            note = f"[answer cut: all {len(text)} characters are in the workspace at {path}]"
            text = f"{text[: MAX_REPLY_CHARS // 10]}\n\n{note}"
        return self._reply(
            msg,
            status=result.status,
            text=text,
            files=written_files(history),
            turns=result.model_turns,
            usage=result.usage,
            error=result.error,
        )

    def _answer_again(
        self,
        msg: SubagentInbox,
        history: ThreadHistory,
        answered: ThreadTurn,
        *,
        usage: Usage | None = None,
        turns: int = 0,
    ) -> ThreadReply:
        """The reply to a request whose end is in the log (``answered``: its answer or stop note)."""
        status = _ENDED_AS.get(answered.stop_reason, "completed")
        text = answered.turn.text
        if status == "interrupted":  # the note says by whom and why
            text = f"{text}\n{_interrupted_note(msg.thread_id)}"
        files = written_files(history)
        return self._reply(msg, status=status, text=text, files=files, turns=turns, usage=usage or Usage())

    async def _start_turn(
        self, bus: Any, log: ThreadLog, history: ThreadHistory, msg: SubagentInbox, spec: AgentSpec
    ) -> bool:
        """Make sure the request is in the thread's history (once). False if a follow-up has no thread."""
        if history.has_trigger(msg.msg_id):
            return True  # redelivered: already recorded
        if isinstance(msg, Delegation):
            if history.entries:
                raise Retryable(f"thread {msg.thread_id!r} already exists for another request")
            text = msg.task
        else:
            if not history.entries:
                return False
            last = history.last
            assert last is not None
            if last.turn.role == "user" or last.turn.tool_uses:
                # Its earlier request is still running (or will resume when its delivery comes back).
                raise Retryable(
                    f"thread {msg.thread_id!r} is still working on an earlier request", delay=self.ack_wait
                )
            text = msg.message
        entry = ThreadTurn(
            session_id=msg.session_id,
            thread_id=msg.thread_id,
            agent=spec.name,
            index=len(history.entries),
            turn=Turn(role="user", content=[TextBlock(text=text)]),
            trigger=msg.msg_id,
        )
        await log.append(history, entry)
        if isinstance(msg, Delegation):
            await bus.emit(
                ThreadCreated(
                    session_id=msg.session_id,
                    thread_id=msg.thread_id,
                    agent=msg.agent,
                    parent_thread_id=msg.parent_thread_id,
                    task=msg.task,
                )
            )
        return True


def _interrupted_note(thread_id: str) -> str:
    """What an interrupted thread's reply adds to its stop note."""
    return (
        f"Thread {thread_id} stopped before it answered; what it did so far is kept in its history. "
        "It is idle: a follow-up to this thread continues it."
    )


def written_files(history: ThreadHistory) -> list[str]:
    """The files this thread wrote, from its log: its successful ``write_file`` calls, in order."""
    failed = {
        block.tool_use_id
        for entry in history.entries
        for block in entry.turn.content
        if isinstance(block, ToolResultBlock) and block.is_error
    }
    paths: list[str] = []
    for entry in history.entries:
        for use in entry.turn.tool_uses:
            path = use.input.get("path")
            if use.name == "write_file" and use.id not in failed and isinstance(path, str):
                with contextlib.suppress(InvalidPath):
                    normalized = normalize_path(path)
                    if normalized not in paths:
                        paths.append(normalized)
    return paths
