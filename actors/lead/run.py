"""One session of the lead, from submit (or a replayed log) to :class:`SessionResult`.

:class:`LeadRun` takes the session's team from its record (stored by the gateway, or resolved here
for a submit published straight to ``<root>.submit``), publishes ``accepted`` and the status events,
runs the lead's attempts (:mod:`actors.lead.revision`) with its delegations
(:mod:`actors.lead.delegation`) and enforces the limits: a token and/or cost budget for the whole
session (``budget_reached``), a wall-clock deadline from the recorded start (``deadline_reached``)
and cancellation. Every session has a deadline: its submit's ``deadline_s``, else its team's, else
``session_deadline`` (an hour by default), so no wait of the lead outlives it. A limit that wins
cancels the session's running threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import cast

import msgspec
import structlog

from actors.agent.loop import AgentLoop, LoopResult, record_interrupt
from actors.agent.models.base import Model
from actors.agent.tools.base import ToolContext
from actors.agent.tools.memory import memory_note
from actors.agent.tools.sources import ToolSources
from actors.lead.delegation import LEAD_TOOLS, Delegations
from actors.lead.revision import Revision
from actors.sessions.cancel import CancelWatch, cancel_session, race_cancel
from actors.sessions.directory import STOPPED, TERMINAL, SessionDirectory
from actors.sessions.teams import resolve_team
from bus.connection import Bus
from bus.errors import HistoryConflict, Retryable
from bus.history import ThreadLog
from bus.workspace import Workspace
from schemas.base import ErrorInfo, Usage
from schemas.conversation import TextBlock, ThreadTurn, Turn
from schemas.errors import SpecError
from schemas.session import SessionAccepted, SessionMessage, SessionResult, SessionState, SessionSubmit
from schemas.team import TeamSpec
from schemas.thread import LEAD_THREAD
from schemas.trace import SessionErrorEvent, SessionStatusIdle, SessionStatusRunning, SessionStatusTerminated

log = structlog.get_logger("staffwork.lead")


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


def result_id(session_id: str, turn: int) -> str:
    """The message id of a turn's result (JetStream dedups on it): one result per turn."""
    return f"{session_id}.result" if not turn else f"{session_id}.result.{turn}"


class LeadRun:
    """One turn of a session, from submit (or a follow-up message) to result, or from a replayed log
    to result."""

    def __init__(
        self,
        submit: SessionSubmit | SessionMessage,
        *,
        bus: Bus,
        model: Model,
        directory: SessionDirectory,
        cancels: CancelWatch,
        sources: ToolSources,
        agent_consumer: Callable[[str], Awaitable[None]],
        grade_timeout: float,
        claim_timeout: float = 120.0,
        session_deadline: float = 3600.0,
    ) -> None:
        self.submit = submit
        self.bus = bus
        self.model = model
        self.directory = directory
        self.cancels = cancels
        self.sources = sources
        self.agent_consumer = agent_consumer  # makes sure an agent's task consumer exists
        self.grade_timeout = grade_timeout
        self.claim_timeout = claim_timeout
        self.session_deadline = session_deadline
        self.sid = submit.session_id
        #: the session's turn: 0 for the submit's, n for the n-th follow-up
        self.turn = submit.turn if isinstance(submit, SessionMessage) else 0
        self.usage = Usage()
        self.started = time.time()
        self.team: TeamSpec | None = None
        self.workspace = Workspace(bus)
        self.log = ThreadLog(bus, reader="lead")
        self._budget_hit = asyncio.Event()
        self._delegations: Delegations | None = None
        self._revision: Revision | None = None

    async def run(self) -> SessionResult | None:
        """The turn's result (None when there is nothing to publish: a turn that ended before)."""
        if isinstance(self.submit, SessionMessage):
            return await self._follow_up(self.submit)
        existing = await self.directory.get(self.sid)
        try:  # a submit that bypassed the gateway has no record yet: resolve its team here
            team = existing.team if existing is not None else await resolve_team(self.bus, self.submit)
        except SpecError as exc:
            return self._result("failed", str(exc), error=ErrorInfo(kind="team", message=str(exc)))
        record = await self.directory.start(self.sid, team, self.submit.task)
        team = self.team = record.team  # the record's team, overrides applied, is the session's
        self.started = record.started
        if record.turn:  # the submit again, after follow-ups: its turn's result was published then
            return None
        if record.status in TERMINAL:  # a finished session submitted again: its result stands
            stored = await self.bus.last(self.bus.subjects.out(self.sid, "result"))
            if stored:
                return msgspec.json.decode(stored, type=SessionResult)
        if record.status == "canceled":
            return self._result("canceled", "the session was canceled")
        return await self._run_turn(team, accepted=True)

    async def _follow_up(self, message: SessionMessage) -> SessionResult | None:
        """A follow-up turn: claimed by the gateway (or here, for one published straight to
        ``<root>.submit``), then run like the first with the lead's whole history."""
        record, why = await self.directory.begin_turn(self.sid, message.turn, message.text)
        if record is None:
            return self._result(
                "failed",
                f"no session {self.sid!r} to follow up",
                error=ErrorInfo(kind="unknown_session", message=f"no session {self.sid!r}"),
            )
        if why and why != "taken":  # not through the gateway, and not possible now: say so in the trace
            text = f"follow-up turn {message.turn} of session {self.sid!r} not taken ({why}): {record.status}"
            log.warning("follow_up_refused", session_id=self.sid, turn=message.turn, reason=why)
            error = ErrorInfo(kind=why, message=text)
            await self.bus.emit(
                SessionErrorEvent(session_id=self.sid, agent=record.team.lead.name, error=error)
            )
            return None
        if record.turn == message.turn and record.status in STOPPED:  # ended before the lead took it
            stored = await self.bus.last(self.bus.subjects.out(self.sid, "result"))
            if stored is None or msgspec.json.decode(stored, type=SessionResult).turn < message.turn:
                return self._result(record.status, f"the session {record.status.replace('_', ' ')}")
        if record.turn != message.turn or record.status not in ("pending", "running"):
            return None  # that turn ended (or a later one began): its result was published then
        await self.directory.set_status(self.sid, "running")
        self.team = record.team
        self.started = record.turn_started or time.time()
        self.usage = record.usage  # the turns before this one count against the session's budget
        return await self._run_turn(record.team, accepted=False)

    async def _run_turn(self, team: TeamSpec, *, accepted: bool) -> SessionResult:
        delegations = self._delegations = Delegations(
            self.bus, self.sid, team, on_usage=self._count, claim_timeout=self.claim_timeout
        )
        await asyncio.gather(*(self.agent_consumer(a.name) for a in team.agents))
        if accepted:
            await self.bus.publish(
                self.bus.subjects.out(self.sid, "accepted"),
                SessionAccepted(session_id=self.sid, team=team.name, lead=team.lead.name),
                msg_id=f"{self.sid}.accepted",
            )
        await self.bus.emit(
            SessionStatusRunning(session_id=self.sid, thread_id=LEAD_THREAD, agent=team.lead.name)
        )
        await delegations.start()
        try:
            return await self._drive(team, delegations)
        except (Retryable, HistoryConflict):
            raise  # another try (or another lead) will continue the session
        except Exception as exc:
            with contextlib.suppress(Exception):  # stop its threads; the runtime reports the failure
                await cancel_session(self.bus, self.sid, f"the lead failed: {exc}", status="failed")
            raise
        finally:
            await delegations.close()
            self.cancels.forget(self.sid)

    async def _drive(self, team: TeamSpec, delegations: Delegations) -> SessionResult:
        history = await self.log.load(self.sid, LEAD_THREAD)
        trigger = self.submit.msg_id
        if not history.has_trigger(trigger):
            first = ThreadTurn(
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=team.lead.name,
                index=len(history.entries),
                turn=Turn(role="user", content=[TextBlock(text=self._task_text())]),
                trigger=trigger,
            )
            await self.log.append(history, first)
        start = next(i for i, entry in enumerate(history.entries) if entry.trigger == trigger)
        for entry in history.entries[start:]:  # a replay: the lead's model usage in this turn counts
            self._count(entry.usage)
        delegations.replay(history)
        revision = self._revision = Revision(
            self.bus,
            self.sid,
            team
            if not isinstance(self.submit, SessionMessage)
            else msgspec.structs.replace(team, outcome=self.submit.outcome),
            log=self.log,
            workspace=self.workspace,
            task=self._task_text(),
            grade_timeout=self.grade_timeout,
            on_usage=self._count,
            turn=self.turn,
            start=start,
        )
        loop = AgentLoop(
            bus=self.bus,
            model=self.model,
            log=self.log,
            history=history,
            spec=team.lead,
            model_name=team.model_of(team.lead),
            system=lead_system_prompt(team),
            toolbox=await self.sources.toolbox(
                self.bus,
                team,
                team.lead,
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                extra=LEAD_TOOLS.values(),
            ),
            tool_context=lambda tool_use_id: ToolContext(
                bus=self.bus,
                workspace=self.workspace,
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=team.lead.name,
                tool_use_id=tool_use_id,
                delegating=delegations,
                memory={attached.store: attached for attached in team.lead.memory},
            ),
            on_usage=self._count,
            roster=[a.name for a in team.agents],
            prices=team.prices,
        )
        work: asyncio.Task[LoopResult] = asyncio.ensure_future(revision.attempts(loop, history))
        deadline = self.submit.deadline_s or team.deadline_s or self.session_deadline
        deadline_hit = asyncio.Event()
        # measured from the turn's recorded start, so a replaying lead does not reset it
        left = max(0.0, deadline - (time.time() - self.started))
        timer = asyncio.get_running_loop().call_later(left, deadline_hit.set)
        with self.cancels.interrupts(self.sid, LEAD_THREAD) as interrupted:
            try:
                outcome = await race_cancel(
                    work,
                    (self.cancels.event(self.sid), "canceled"),
                    (self._budget_hit, "budget_reached"),
                    (deadline_hit, "deadline_reached"),
                    (interrupted, "interrupted"),
                )
            finally:
                timer.cancel()
            stopped_by = self.cancels.interrupt_of(interrupted)
        reason, by = (stopped_by.reason, stopped_by.by) if stopped_by is not None else ("", "")
        if outcome == "interrupted":  # the turn stops; the session goes on and takes a follow-up
            await record_interrupt(self.bus, self.log, history, reason, by=by)
            text = f"[interrupted by the user{f': {reason}' if reason else ''}]"
            return await self._finish("idle", text, stop="interrupted")
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

    def _task_text(self) -> str:
        text = self.submit.text if isinstance(self.submit, SessionMessage) else self.submit.task
        if self.submit.inputs:
            text += "\n\nInput files in the workspace: " + ", ".join(self.submit.inputs)
        return text

    async def _finish(
        self,
        status: SessionState,
        text: str,
        *,
        report: str = "",
        stop: str = "",
        error: ErrorInfo | None = None,
    ) -> SessionResult:
        threads = len(self._delegations.threads) if self._delegations is not None else 0
        await self.directory.set_status(
            self.sid, status, stop or status, ended=time.time(), threads=1 + threads, usage=self.usage
        )
        assert self.team is not None
        lead = self.team.lead.name
        await self.bus.emit(
            SessionStatusIdle(
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=lead,
                stop_reason=stop or status,
                usage=self.usage,
            )
        )
        if status != "idle":  # canceled, failed, out of budget or time: the session ended for good
            await self.bus.emit(
                SessionStatusTerminated(
                    session_id=self.sid, thread_id=LEAD_THREAD, agent=lead, reason=stop or status
                )
            )
        files = [f.path for f in await self.workspace.list(self.sid)]
        return self._result(status, text, report=report, error=error, files=files)

    def _result(
        self,
        status: SessionState,
        text: str,
        *,
        report: str = "",
        error: ErrorInfo | None = None,
        files: list[str] | None = None,
    ) -> SessionResult:
        return SessionResult(
            session_id=self.sid,
            msg_id=result_id(self.sid, self.turn),
            turn=self.turn,
            status=status,
            final_text=text,
            report_path=report,
            files=files or [],
            usage=self.usage,
            error=error,
            outcome=self._revision.report() if self._revision is not None else None,
        )

    def _count(self, usage: Usage) -> None:
        """Add a model call's usage (the lead's, a thread's or the grader's) and check the budget."""
        self.usage = self.usage + usage
        team = self.team
        if team is None:
            return
        tokens = self.usage.input_tokens + self.usage.output_tokens
        if (team.budget_tokens is not None and tokens >= team.budget_tokens) or (
            team.budget_usd is not None and self.usage.cost_usd >= team.budget_usd
        ):
            self._budget_hit.set()
