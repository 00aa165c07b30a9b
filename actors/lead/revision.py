"""The lead's attempts: an answer, saved as the report; with an outcome, graded and revised.

:class:`Revision` runs the lead's loop, writes each answer to the team's ``report_path`` and, with
an outcome, asks the grader for a verdict (a ``GradeRequest`` on ``Subjects.grade``, the verdict
read from ``Subjects.verdict``), feeding ``needs_revision`` back to the lead as a new user turn
until the grader is satisfied, fails it, or ``max_iterations`` is reached. Resumable: feedback turns
are in the lead's history and verdicts in the stream, so a replay continues at the attempt it was
on without asking again. A verdict counts only if it decodes and names this session, its outcome
and the attempt; anything else on a verdict subject is rejected with a ``bus.message_rejected``
event and ignored, and the wait for the real one goes on (``grade_timeout`` bounds it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import structlog

from actors.agent.loop import AgentLoop, LoopResult
from actors.agent.tools.workspace import write_and_record
from actors.lead.strays import Strays
from bus.codec import Decoder
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import MessageRejected
from bus.history import ThreadHistory, ThreadLog
from bus.workspace import Workspace
from schemas.base import Usage
from schemas.conversation import TextBlock, ThreadTurn, Turn
from schemas.files import Provenance
from schemas.outcome import GradeRequest, GradeVerdict, Outcome, OutcomeReport
from schemas.team import TeamSpec
from schemas.thread import LEAD_THREAD

log = structlog.get_logger("staffwork.lead")

_verdicts: Decoder[GradeVerdict] = Decoder(GradeVerdict, max_bytes=4 * 1024 * 1024)
FEEDBACK = "feedback-"  # the trigger of a grader's feedback turn in the lead's history
_GRADE_TEXT = (
    64 * 1024
)  # characters of the task and the answer in a grading request (the grader has the files)


class Revision:
    """One session's attempts and the grader's verdicts on them."""

    def __init__(
        self,
        bus: Bus,
        session_id: str,
        team: TeamSpec,
        *,
        log: ThreadLog,
        workspace: Workspace,
        task: str,
        grade_timeout: float,
        on_usage: Callable[[Usage], None],
        turn: int = 0,
        start: int = 0,
    ) -> None:
        self.bus = bus
        self.sid = session_id
        self.team = team
        self.log = log
        self.workspace = workspace
        self.task = task  # the task as the lead got it (with the input files)
        self.grade_timeout = grade_timeout
        self.verdicts: list[GradeVerdict] = []
        self.turn = turn  # the session's turn whose deliverable this is (0: the submit's)
        self.start = start  # where the turn starts in the lead's history
        self._on_usage = on_usage
        self._strays = Strays(bus, session_id, team.lead.name, what="not the grader's verdict")

    @property
    def outcome_id(self) -> str:
        base = f"outc_{self.sid.removeprefix('ses_')}"
        return base if not self.turn else f"{base}_{self.turn}"

    def _id(self, iteration: int) -> str:
        """``<session>-<iteration>``, with the turn for a follow-up's attempts."""
        return f"{self.sid}-{iteration}" if not self.turn else f"{self.sid}-{self.turn}-{iteration}"

    def report(self) -> OutcomeReport | None:
        """The verdicts so far, for the session's result (None without any)."""
        if not self.verdicts:
            return None
        last = self.verdicts[-1]
        return OutcomeReport(outcome_id=last.outcome_id, result=last.result, iterations=self.verdicts)

    async def attempts(self, loop: AgentLoop, history: ThreadHistory) -> LoopResult:
        """The lead's work: run ``loop`` (on ``history``) and revise until the outcome is settled."""
        team = self.team
        result = await loop.run()
        outcome = team.outcome
        this_turn = history.entries[self.start :]
        iteration = 1 + sum(1 for e in this_turn if e.trigger.startswith(FEEDBACK))
        for earlier in range(1, iteration):  # a replay: the verdicts that led to the revisions so far
            stored = await self._stored_verdict(earlier)
            if stored is not None:
                self.verdicts.append(stored)
                self._on_usage(stored.usage)
        while result.status == "completed":
            writer = Provenance(session_id=self.sid, thread_id=LEAD_THREAD, agent=team.lead.name)
            await write_and_record(self.bus, self.workspace, writer, team.report_path, result.text)
            if outcome is None:
                break
            verdict = await self._grade(outcome, iteration, result.text)
            self.verdicts.append(verdict)
            if verdict.result != "needs_revision" or iteration >= outcome.max_iterations:
                break
            feedback = ThreadTurn(
                session_id=self.sid,
                thread_id=LEAD_THREAD,
                agent=team.lead.name,
                index=len(history.entries),
                turn=Turn(role="user", content=[TextBlock(text=_feedback(verdict, outcome))]),
                trigger=f"{FEEDBACK}{self._id(iteration)}",
            )
            await self.log.append(history, feedback)
            iteration += 1
            result = await loop.run()
        return result

    async def _grade(self, outcome: Outcome, iteration: int, answer: str) -> GradeVerdict:
        """Attempt ``iteration``'s verdict: from the stream if the grader gave it already (a replay),
        else asked of the grader (the request is deduplicated on its id)."""
        team = self.team
        stored = await self._stored_verdict(iteration)
        if stored is not None:
            self._on_usage(stored.usage)
            return stored
        request = GradeRequest(
            session_id=self.sid,
            msg_id=f"grade-{self._id(iteration)}",
            outcome_id=self.outcome_id,
            iteration=iteration,
            turn=self.turn,
            outcome=outcome,
            task=_cut(self.task, _GRADE_TEXT, "the task as submitted"),
            answer=_cut(answer, _GRADE_TEXT, f"the whole answer is in {team.report_path}"),
            report_path=team.report_path,
            model=team.model_of(team.lead),
            prices=team.prices,
        )
        if not await self.bus.consumer_active(self.bus.subjects.grader_consumer):
            log.warning("no_grader_running", session_id=self.sid, hint="start one: staffwork actor grader")
        await self.bus.publish(self.bus.subjects.grade(self.sid), request)
        verdict = await self._next_verdict(iteration)
        if verdict is None:
            limit = self.grade_timeout
            log.warning("no_verdict", session_id=self.sid, iteration=iteration, waited_s=limit)
            return GradeVerdict(
                session_id=self.sid,
                outcome_id=self.outcome_id,
                iteration=iteration,
                turn=self.turn,
                result="failed",
                explanation=f"no verdict from the grader within {limit:g}s: is a grader running? "
                "(staffwork actor grader, or staffwork up)",
            )
        self._on_usage(verdict.usage)
        return verdict

    async def _next_verdict(self, iteration: int) -> GradeVerdict | None:
        """The first valid verdict on attempt ``iteration`` (stored or to come), or None after
        ``grade_timeout``; strays are rejected on the way."""
        subject = self.bus.subjects.verdict(self.sid, iteration, self.turn)
        payloads = self.bus.follow_raw(subject)
        ends = time.monotonic() + self.grade_timeout
        try:
            while True:
                try:
                    data = await asyncio.wait_for(anext(payloads), max(0.0, ends - time.monotonic()))
                except TimeoutError:
                    return None
                verdict = await self._valid(subject, data, iteration)
                if verdict is not None:
                    return verdict
        finally:
            await payloads.aclose()

    async def _stored_verdict(self, iteration: int) -> GradeVerdict | None:
        """The grader's first valid verdict on attempt ``iteration``, if it is in the stream."""
        subject = self.bus.subjects.verdict(self.sid, iteration, self.turn)
        stored = read_subject(self.bus, self.bus.subjects.log_stream, subject)
        async with contextlib.aclosing(stored):
            async for message in stored:
                verdict = await self._valid(subject, message.data, iteration)
                if verdict is not None:
                    return verdict
        return None

    async def _valid(self, subject: str, data: bytes, iteration: int) -> GradeVerdict | None:
        """``data`` as the verdict on attempt ``iteration``, or None (reported once) if it is not one."""
        try:
            verdict = _verdicts.decode(data, subject=subject)
        except MessageRejected as exc:
            reason = exc.reason
        else:
            want = (self.sid, self.outcome_id, iteration)
            got = (verdict.session_id, verdict.outcome_id, verdict.iteration)
            if got == want:
                return verdict
            reason = f"(session, outcome, iteration) {got} where attempt {iteration} is {want}"
        await self._strays.reject(subject, data, reason)
        return None


def _cut(text: str, limit: int, where: str) -> str:
    if len(text) <= limit:
        return text
    return f"{text[:limit]}\n[... {len(text) - limit:,} more characters: {where}]"


def _feedback(verdict: GradeVerdict, outcome: Outcome) -> str:
    return (
        f"An independent grader checked your deliverable against the outcome (attempt {verdict.iteration} "
        f"of {outcome.max_iterations}). It needs revision:\n\n{verdict.explanation}\n\n"
        "Revise the deliverable: fix what failed (delegate again or ask a specialist a follow-up if you "
        "need more facts), then answer with the complete revised deliverable."
    )
