"""The lead: takes a session, delegates to its team in parallel, follows up, writes the deliverable.

The lead's own conversation is a thread (``lead``) whose history lives in JetStream like every other
thread, so the harness is stateless: a lead that dies mid-session is replaced by another (the submit
message is redelivered), which replays the log and continues. Delegations that already replied are
not run again: their replies are in the stream (``<root>.s.<session>.reply.<thread>``) and are read
back instead of re-sent.

Tools: ``delegate(agent, task)`` starts a thread of a roster agent; ``message_agent(thread_id,
message)`` continues one with its history; plus the workspace tools the lead's spec lists. All tool
calls of one model turn run concurrently, so five ``delegate`` calls fan out to five subagents, with
at most ``max_concurrent_threads`` (≤ 20) running at once: more wait their turn, none is dropped.

Limits: the lead's ``max_turns``; a token and/or cost budget for the whole session (lead and
subagents; stops cleanly with status ``budget_reached`` and cancels the running threads); a
wall-clock deadline (``deadline_reached``). Cancelling the session stops the lead and every thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Annotated, Any, cast

import msgspec
import structlog

from actors.agent.loop import AgentLoop, LoopResult
from actors.agent.models.base import Model
from actors.agent.tools.base import Tool, Toolbox, ToolContext, ToolError, tool
from actors.agent.tools.catalog import check_team_tools, tools_for
from actors.agent.tools.memory import memory_note
from actors.agent.tools.workspace import write_and_record
from actors.sessions.directory import TERMINAL, CancelWatch, SessionDirectory, cancel_session, race_cancel
from bus.actor import BaseActor, Context
from bus.codec import Decoder
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import HistoryConflict, Retryable
from bus.history import ThreadHistory, ThreadLog
from bus.provision import ConsumerSpec, agent_consumer, ensure_consumer, lead_consumer
from bus.state import Listener
from bus.subjects import Subjects
from bus.workspace import Workspace
from schemas.base import ErrorInfo, Message, Usage
from schemas.conversation import TextBlock, ThreadTurn, Turn
from schemas.errors import SpecError
from schemas.files import Provenance
from schemas.outcome import GradeRequest, GradeVerdict, Outcome, OutcomeReport
from schemas.session import SessionAccepted, SessionResult, SessionState, SessionSubmit
from schemas.team import TeamSpec
from schemas.thread import Delegation, FollowUp, ThreadReply
from schemas.trace import (
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadMessageReceived,
    ThreadMessageSent,
)

log = structlog.get_logger("staffwork.lead")

LEAD_THREAD = "lead"
_FEEDBACK = "feedback-"  # the trigger of a grader's feedback turn in the lead's history
REPLY_RECHECK = 10.0
_REPLY_BYTES = 4 * 1024 * 1024
_replies: Decoder[ThreadReply] = Decoder(ThreadReply, max_bytes=_REPLY_BYTES)


def thread_id_for(tool_use_id: str) -> str:
    """The thread a ``delegate`` call creates: derived from the call's id, so a replay finds it."""
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in tool_use_id)
    return f"t-{safe}"[:128]


def lead_system_prompt(team: TeamSpec) -> str:
    roster = "\n".join(f"- {a.name}: {a.description or '(no description)'}" for a in team.agents)
    base = team.lead.system or f"You lead the team {team.name!r}."
    return (
        f"{base}\n\nYour team (delegate to them by name):\n{roster}\n\n"
        "Use delegate(agent, task) to give a specialist a self-contained task: state the objective, the "
        "output you need and where to look. Several delegate calls in one turn run in parallel. Use "
        "message_agent(thread_id, message) to ask a specialist a follow-up: it continues with everything "
        "from its earlier turns. Files in the shared workspace are visible to everyone. When you have "
        f"what you need, answer with the final deliverable; it is saved as {team.report_path}."
        + (f"\n\n{note}" if (note := memory_note(team.lead)) else "")
    )


@tool
async def delegate(
    ctx: ToolContext,
    *,
    agent: Annotated[str, msgspec.Meta(description="The roster agent's name.")],
    task: Annotated[str, msgspec.Meta(description="A self-contained task for that agent.", min_length=1)],
) -> str:
    """Delegate a task to a specialist on your team. It works in its own thread, with its own tools,
    and its final answer comes back as this tool's result (with the thread id for follow-ups)."""
    run: LeadRun = ctx.services["lead"]
    return await run.delegate(agent, task, ctx.tool_use_id)


@tool
async def message_agent(
    ctx: ToolContext,
    *,
    thread_id: Annotated[str, msgspec.Meta(description="The thread id a delegate result gave you.")],
    message: Annotated[str, msgspec.Meta(description="Your follow-up.", min_length=1)],
) -> str:
    """Send a follow-up to a specialist's existing thread. It continues with its full history (its
    earlier task, tool calls and answers) and its new answer comes back as this tool's result."""
    run: LeadRun = ctx.services["lead"]
    return await run.message_agent(thread_id, message, ctx.tool_use_id)


LEAD_TOOLS: dict[str, Tool] = {"delegate": delegate, "message_agent": message_agent}


@dataclass(frozen=True)
class LeadSettings:
    ack_wait: float = 30.0
    subagent_ack_wait: float = 30.0
    grade_timeout: float = 900.0  # waiting for the grader's verdict on an attempt


class LeadActor(BaseActor[SessionSubmit]):
    role = "lead"
    inbox = SessionSubmit

    def __init__(
        self,
        *,
        model: Model,
        directory: SessionDirectory,
        cancels: CancelWatch,
        settings: LeadSettings | None = None,
    ) -> None:
        self.model = model
        self.directory = directory
        self.cancels = cancels
        self.settings = settings or LeadSettings()
        self._consumers: set[str] = set()  # agent consumers this process already made sure of

    async def ensure_agent_consumer(self, bus: Bus, agent: str) -> None:
        if agent not in self._consumers:
            spec = agent_consumer(bus.subjects, agent, ack_wait=self.settings.subagent_ack_wait)
            await ensure_consumer(bus, spec, update=False)  # a worker's own settings win
            self._consumers.add(agent)

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        return lead_consumer(subjects, ack_wait=self.settings.ack_wait)

    def reply_subject(self, msg: SessionSubmit, reply: Message, ctx: Context) -> str | None:
        return ctx.bus.subjects.out(msg.session_id, "result")

    def failure(self, msg: SessionSubmit, error: ErrorInfo) -> Message | None:
        return SessionResult(
            session_id=msg.session_id, status="failed", final_text=error.message, error=error
        )

    async def handle(self, msg: SessionSubmit, ctx: Context) -> Message | None:
        try:
            return await LeadRun(self, msg, ctx.bus).run()
        except HistoryConflict as exc:  # another lead is driving this session: try again later
            raise Retryable(str(exc), delay=2.0) from exc


class LeadRun:
    """One session, from submit to result (or from a replayed log to result)."""

    def __init__(self, actor: LeadActor, submit: SessionSubmit, bus: Bus) -> None:
        self.actor = actor
        self.submit = submit
        self.bus = bus
        self.sid = submit.session_id
        self.usage = Usage()
        self.started = time.time()
        self.team: TeamSpec | None = None
        self.workspace = Workspace(bus)
        self.log = ThreadLog(bus)
        self._pending: dict[str, asyncio.Future[ThreadReply]] = {}
        self._slots: asyncio.Semaphore | None = None
        self._threads: dict[str, str] = {}  # thread id -> agent
        self._budget_hit = asyncio.Event()
        self._replies: Listener[ThreadReply] | None = None
        self._verdicts: list[GradeVerdict] = []

    # --- the session ---

    async def run(self) -> SessionResult:
        try:
            team = await self._team()
        except SpecError as exc:
            return self._result("failed", str(exc), error=ErrorInfo(kind="team", message=str(exc)))
        if self.submit.outcome is not None:  # a submit's own outcome and webhooks replace the team's
            team = msgspec.structs.replace(team, outcome=self.submit.outcome)
        if self.submit.webhooks is not None:
            team = msgspec.structs.replace(team, webhooks=self.submit.webhooks)
        self.team = team
        record = await self.actor.directory.start(self.sid, team, self.submit.task)
        self.started = record.started
        if record.status in TERMINAL:  # a finished session submitted again: its result stands
            stored = await self.bus.last(self.bus.subjects.out(self.sid, "result"))
            if stored:
                return msgspec.json.decode(stored, type=SessionResult)
        if record.status == "canceled":
            return self._result("canceled", "the session was canceled")
        self._slots = asyncio.Semaphore(team.max_concurrent_threads)
        await asyncio.gather(*(self.actor.ensure_agent_consumer(self.bus, a.name) for a in team.agents))
        await self.bus.publish(
            self.bus.subjects.out(self.sid, "accepted"),
            SessionAccepted(session_id=self.sid, team=team.name, lead=team.lead.name),
            msg_id=f"{self.sid}.accepted",
        )
        await self.bus.emit(
            SessionStatusRunning(session_id=self.sid, thread_id=LEAD_THREAD, agent=team.lead.name)
        )
        self._replies = await self.bus.listen(
            self.bus.subjects.replies(self.sid), ThreadReply, self._on_reply, max_bytes=_REPLY_BYTES
        )
        try:
            return await self._drive(team)
        except (Retryable, HistoryConflict):
            raise  # another try (or another lead) will continue the session
        except Exception as exc:
            with contextlib.suppress(Exception):  # stop its threads; the runtime reports the failure
                await cancel_session(self.bus, self.sid, f"the lead failed: {exc}", status="failed")
            raise
        finally:
            await self._replies.close()
            self.actor.cancels.forget(self.sid)

    async def _drive(self, team: TeamSpec) -> SessionResult:
        history = await self.log.load(self.sid, LEAD_THREAD)
        if not history.entries:
            first = ThreadTurn(
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=team.lead.name,
                index=0,
                turn=Turn(role="user", content=[TextBlock(text=self._task_text())]),
                trigger=self.submit.msg_id,
            )
            await self.log.append(history, first)
        for entry in history.entries:  # a replay: the lead's model usage so far counts
            self._count(entry.usage)
        for entry in history.entries:  # threads started before a replay
            for use in entry.turn.tool_uses:
                if use.name == "delegate" and isinstance(use.input.get("agent"), str):
                    self._threads[thread_id_for(use.id)] = use.input["agent"]
        loop = AgentLoop(
            bus=self.bus,
            model=self.actor.model,
            log=self.log,
            history=history,
            spec=team.lead,
            model_name=team.model_of(team.lead),
            system=lead_system_prompt(team),
            toolbox=Toolbox([*LEAD_TOOLS.values(), *tools_for(team.lead)]),
            tool_context=lambda tool_use_id: ToolContext(
                bus=self.bus,
                workspace=self.workspace,
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=team.lead.name,
                tool_use_id=tool_use_id,
                services={"lead": self},
                memory={attached.store: attached for attached in team.lead.memory},
            ),
            on_usage=self._count,
            roster=[a.name for a in team.agents],
        )
        work: asyncio.Task[LoopResult] = asyncio.ensure_future(self._attempts(loop, team, history))
        deadline = self.submit.deadline_s or team.deadline_s
        deadline_hit = asyncio.Event()
        timer = None
        if deadline:  # measured from the session's recorded start, so a replaying lead does not reset it
            left = max(0.0, deadline - (time.time() - self.started))
            timer = asyncio.get_running_loop().call_later(left, deadline_hit.set)
        try:
            outcome = await race_cancel(
                work,
                (self.actor.cancels.event(self.sid), "canceled"),
                (self._budget_hit, "budget_reached"),
                (deadline_hit, "deadline_reached"),
            )
        finally:
            if timer is not None:
                timer.cancel()
        if outcome != "done":
            status = cast(SessionState, outcome)
            if outcome != "canceled":  # stop the threads still running for this session
                await cancel_session(self.bus, self.sid, outcome, status=status)
            return await self._finish(
                status, f"the session stopped: {outcome.replace('_', ' ')}", stop=outcome
            )
        result = work.result()
        if result.status != "completed":
            return await self._finish("failed", result.text, error=result.error, stop=result.stop_reason)
        return await self._finish("idle", result.text, report=team.report_path, stop=result.stop_reason)

    async def _attempts(self, loop: AgentLoop, team: TeamSpec, history: ThreadHistory) -> LoopResult:
        """The lead's work: an answer, saved as the report; with an outcome, graded by the grader and
        revised with its feedback until it is satisfied, failed, or out of iterations. Resumable: the
        feedback turns are in the lead's history and the verdicts in the stream, so a replaying lead
        continues at the attempt it was on."""
        result = await loop.run()
        outcome = team.outcome
        iteration = 1 + sum(1 for e in history.entries if e.trigger.startswith(_FEEDBACK))
        for earlier in range(1, iteration):  # a replay: the verdicts that led to the revisions so far
            stored = await self._stored_verdict(earlier)
            if stored is not None:
                self._verdicts.append(stored)
                self._count(stored.usage)
        while result.status == "completed":
            writer = Provenance(session_id=self.sid, thread_id=LEAD_THREAD, agent=team.lead.name)
            await write_and_record(self.bus, self.workspace, writer, team.report_path, result.text)
            if outcome is None:
                break
            verdict = await self._grade(team, outcome, iteration, result.text)
            self._verdicts.append(verdict)
            if verdict.result != "needs_revision" or iteration >= outcome.max_iterations:
                break
            feedback = ThreadTurn(
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=team.lead.name,
                index=len(history.entries),
                turn=Turn(role="user", content=[TextBlock(text=_feedback(verdict, outcome))]),
                trigger=f"{_FEEDBACK}{self.sid}-{iteration}",
            )
            await self.log.append(history, feedback)
            iteration += 1
            result = await loop.run()
        return result

    async def _grade(self, team: TeamSpec, outcome: Outcome, iteration: int, answer: str) -> GradeVerdict:
        """Attempt ``iteration``'s verdict: from the stream if the grader gave it already (a replay),
        else asked of the grader (the request is deduplicated on its id)."""
        subject = self.bus.subjects.verdict(self.sid, iteration)
        stored = await self._stored_verdict(iteration)
        if stored is not None:
            self._count(stored.usage)
            return stored
        request = GradeRequest(
            session_id=self.sid,
            msg_id=f"grade-{self.sid}-{iteration}",
            outcome_id=self._outcome_id,
            iteration=iteration,
            outcome=outcome,
            task=_cut(self._task_text(), _GRADE_TEXT, "the task as submitted"),
            answer=_cut(answer, _GRADE_TEXT, f"the whole answer is in {team.report_path}"),
            report_path=team.report_path,
            model=team.model_of(team.lead),
        )
        if not await self.bus.consumer_active(self.bus.subjects.grader_consumer):
            log.warning("no_grader_running", session_id=self.sid, hint="start one: staffwork actor grader")
        await self.bus.publish(self.bus.subjects.grade(self.sid), request)
        verdicts = self.bus.follow(subject, GradeVerdict)
        limit = self.actor.settings.grade_timeout
        try:
            verdict: GradeVerdict = await asyncio.wait_for(anext(verdicts), limit)
        except TimeoutError:
            log.warning("no_verdict", session_id=self.sid, iteration=iteration, waited_s=limit)
            return GradeVerdict(
                session_id=self.sid,
                outcome_id=self._outcome_id,
                iteration=iteration,
                result="failed",
                explanation=f"no verdict from the grader within {limit:g}s: is a grader running? "
                "(staffwork actor grader, or staffwork up)",
            )
        finally:
            await verdicts.aclose()  # type: ignore[attr-defined]
        self._count(verdict.usage)
        return verdict

    async def _stored_verdict(self, iteration: int) -> GradeVerdict | None:
        """The grader's first verdict on attempt ``iteration``, if it is in the stream."""
        subject = self.bus.subjects.verdict(self.sid, iteration)
        stored = read_subject(self.bus, self.bus.subjects.log_stream, subject, limit=1)
        async with contextlib.aclosing(stored):
            async for first in stored:
                return msgspec.json.decode(first.data, type=GradeVerdict)
        return None

    @property
    def _outcome_id(self) -> str:
        return f"outc_{self.sid.removeprefix('ses_')}"

    def _task_text(self) -> str:
        text = self.submit.task
        if self.submit.inputs:
            text += "\n\nInput files in the workspace: " + ", ".join(self.submit.inputs)
        return text

    async def _team(self) -> TeamSpec:
        if self.submit.team_spec is not None:
            team = self.submit.team_spec
        else:
            registry = await self.bus.kv(self.bus.subjects.registry_bucket)
            raw = await registry.get(f"team.{self.submit.team}") if self.submit.team else None
            if raw is None:
                raise SpecError(
                    f"team {self.submit.team!r} is not registered; submit a team_spec or register the team",
                    source="session.submit",
                    path="team",
                    value=self.submit.team,
                )
            team = msgspec.json.decode(raw, type=TeamSpec)
        check_team_tools(team, source=f"team {team.name!r}")
        return team

    async def _finish(
        self,
        status: SessionState,
        text: str,
        *,
        report: str = "",
        stop: str = "",
        error: ErrorInfo | None = None,
    ) -> SessionResult:
        await self.actor.directory.set_status(
            self.sid,
            status,
            stop or status,
            ended=time.time(),
            threads=1 + len(self._threads),
            usage=self.usage,
        )
        assert self.team is not None
        await self.bus.emit(
            SessionStatusIdle(
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=self.team.lead.name,
                stop_reason=stop or status,
                usage=self.usage,
            )
        )
        if status != "idle":  # canceled, failed, out of budget or time: the session ended for good
            await self.bus.emit(
                SessionStatusTerminated(
                    session_id=self.sid,
                    thread_id=LEAD_THREAD,
                    agent=self.team.lead.name,
                    reason=stop or status,
                )
            )
        return self._result(status, text, report=report, error=error, files=await self._files())

    def _result(
        self,
        status: SessionState,
        text: str,
        *,
        report: str = "",
        error: ErrorInfo | None = None,
        files: list[str] | None = None,
    ) -> SessionResult:
        outcome = None
        if self._verdicts:
            last = self._verdicts[-1]
            outcome = OutcomeReport(outcome_id=last.outcome_id, result=last.result, iterations=self._verdicts)
        return SessionResult(
            session_id=self.sid,
            msg_id=f"{self.sid}.result",
            status=status,
            final_text=text,
            report_path=report,
            files=files or [],
            usage=self.usage,
            error=error,
            outcome=outcome,
        )

    async def _files(self) -> list[str]:
        return [f.path for f in await self.workspace.list(self.sid)]

    # --- usage and budget ---

    def _count(self, usage: Usage) -> None:
        self.usage = self.usage + usage
        team = self.team
        if team is None:
            return
        tokens = self.usage.input_tokens + self.usage.output_tokens
        if (team.budget_tokens is not None and tokens >= team.budget_tokens) or (
            team.budget_usd is not None and self.usage.cost_usd >= team.budget_usd
        ):
            self._budget_hit.set()

    # --- delegation ---

    async def _stored_reply(self, request: Delegation | FollowUp) -> ThreadReply | None:
        """The reply to ``request`` if it is already in the stream (a replay, or a missed message)."""
        subject = self.bus.subjects.reply(self.sid, request.thread_id)
        async for stored in read_subject(self.bus, self.bus.subjects.log_stream, subject):
            reply = _replies.decode(stored.data, subject=subject)
            if reply.in_reply_to == request.msg_id:
                return reply
        return None

    async def _await_reply(
        self, request: Delegation | FollowUp, future: asyncio.Future[ThreadReply]
    ) -> ThreadReply:
        """Wait for the reply; every ``REPLY_RECHECK`` seconds also look in the stream, so a reply
        published while this connection was down (the live subscription missed it) is still found."""
        while True:
            try:
                return await asyncio.wait_for(asyncio.shield(future), REPLY_RECHECK)
            except TimeoutError:
                stored = await self._stored_reply(request)
                if stored is not None:
                    return stored

    def _on_reply(self, reply: ThreadReply) -> None:
        future = self._pending.get(reply.in_reply_to)
        if future is not None and not future.done():
            future.set_result(reply)

    async def delegate(self, agent: str, task: str, tool_use_id: str) -> str:
        assert self.team is not None
        try:
            self.team.agent(agent)
        except KeyError as exc:
            raise ToolError(str(exc.args[0])) from None
        thread_id = thread_id_for(tool_use_id)
        self._threads[thread_id] = agent
        request = Delegation(
            session_id=self.sid,
            msg_id=f"dlg-{self.sid}-{thread_id}",  # unique across sessions: JetStream dedups on it
            thread_id=thread_id,
            agent=agent,
            task=task,
            parent_thread_id=LEAD_THREAD,
            tool_use_id=tool_use_id,
        )
        reply = await self._exchange(request, agent, task)
        return _describe(reply)

    async def message_agent(self, thread_id: str, message: str, tool_use_id: str) -> str:
        agent = self._threads.get(thread_id)
        if agent is None:
            known = ", ".join(f"{t} ({a})" for t, a in self._threads.items()) or "none yet"
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
        reply = await self._exchange(request, agent, message)
        return _describe(reply)

    async def _exchange(self, request: Delegation | FollowUp, agent: str, content: str) -> ThreadReply:
        """Send a request to a thread and wait for its reply (read back from the stream if it came
        before a replay), holding one of the session's thread slots meanwhile."""
        assert self._slots is not None
        assert self.team is not None
        async with self._slots:
            future: asyncio.Future[ThreadReply] = asyncio.get_running_loop().create_future()
            self._pending[request.msg_id] = future
            try:
                reply = await self._stored_reply(request)
                if reply is None:
                    fields: dict[str, Any] = {
                        "session_id": self.sid,
                        "thread_id": LEAD_THREAD,
                        "agent": self.team.lead.name,
                    }
                    await self.bus.emit(
                        ThreadMessageSent(
                            to_thread_id=request.thread_id, to_agent=agent, content=content, **fields
                        )
                    )
                    await self.bus.publish(self.bus.subjects.task(self.sid, agent), request)
                    reply = await self._await_reply(request, future)
            finally:
                self._pending.pop(request.msg_id, None)
        self._count(reply.usage)
        await self.bus.emit(
            ThreadMessageReceived(
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=self.team.lead.name,
                from_thread_id=reply.thread_id,
                from_agent=reply.agent,
                content=reply.text[:20_000],
            )
        )
        if reply.status == "failed":
            message = reply.error.message if reply.error else reply.text
            raise ToolError(f"thread {reply.thread_id} ({reply.agent}) failed: {message}")
        return reply


_GRADE_TEXT = (
    64 * 1024
)  # characters of the task and the answer in a grading request (the grader has the files)


def _cut(text: str, limit: int, where: str) -> str:
    return (
        text
        if len(text) <= limit
        else f"{text[:limit]}\n[... {len(text) - limit:,} more characters: {where}]"
    )


def _feedback(verdict: GradeVerdict, outcome: Outcome) -> str:
    return (
        f"An independent grader checked your deliverable against the outcome (attempt {verdict.iteration} "
        f"of {outcome.max_iterations}). It needs revision:\n\n{verdict.explanation}\n\n"
        "Revise the deliverable: fix what failed (delegate again or ask a specialist a follow-up if you "
        "need more facts), then answer with the complete revised deliverable."
    )


def _describe(reply: ThreadReply) -> str:
    head = f"[thread {reply.thread_id} · agent {reply.agent} · {reply.status}]"
    files = f"\n\nfiles written: {', '.join(reply.files)}" if reply.files else ""
    return f"{head}\n{reply.text}{files}"
