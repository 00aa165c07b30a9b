"""The grader actor: grades a session's attempt against its outcome, in a fresh context.

For each :class:`~schemas.outcome.GradeRequest` it runs the machine checks (:mod:`actors.grader.checks`)
and grades the rubric's criteria with one traced model call (the prompt and the overall result are in
:mod:`actors.grader.verdict`), never seeing the lead's conversation, and answers with a
:class:`~schemas.outcome.GradeVerdict`. A request is graded once: a redelivery returns the stored
verdict. One still retryable on its last delivery gets a ``failed`` verdict, so the lead is never left
waiting. The rules: docs/architecture.md, "Outcomes".
"""

from __future__ import annotations

import contextlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from actors.agent.calls import call_model
from actors.agent.models.base import Model, ModelFatal, ModelRequest
from actors.grader.checks import (
    CHECK_TIMEOUT,
    FileRead,
    clip,
    read_file,
    resolve_queries,
    run_checks_apart,
)
from actors.grader.verdict import (
    GRADER,
    NEEDS_A_MODEL,
    SUBMIT_GRADES,
    explain,
    files_for_model,
    grader_system,
    grading_prompt,
    not_graded,
    overall,
    parse_grades,
)
from bus.actor import BaseActor, Context
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import BusError, Retryable
from bus.provision import ConsumerSpec, grader_consumer
from bus.subjects import Subjects
from bus.workspace import Workspace
from schemas.base import ErrorInfo, Message, Usage
from schemas.conversation import TextBlock, Turn
from schemas.outcome import (
    CriterionVerdict,
    GradeRequest,
    GradeVerdict,
)
from schemas.team import DEFAULT_MODEL
from schemas.trace import OutcomeEvaluationEnd, OutcomeEvaluationStart

# --- the actor -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rubric:
    verdicts: list[CriterionVerdict]
    contradiction: str = ""
    usage: Usage = field(default_factory=Usage)
    model_error: str = ""  # the model failed for good: the rubric could not be graded


class GraderActor(BaseActor[GradeRequest]):
    role = GRADER
    inbox = GradeRequest

    def __init__(self, *, model: Model, ack_wait: float = 30.0, check_timeout: float = CHECK_TIMEOUT) -> None:
        self.model = model
        self.ack_wait = ack_wait
        self.check_timeout = check_timeout  # seconds per machine check (each runs in a child process)

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        return grader_consumer(subjects, ack_wait=self.ack_wait)

    def reply_subject(self, msg: GradeRequest, reply: Message, ctx: Context) -> str | None:
        return ctx.bus.subjects.verdict(msg.session_id, msg.iteration, msg.turn)

    def failure(self, msg: GradeRequest, error: ErrorInfo) -> Message | None:
        return GradeVerdict(
            session_id=msg.session_id,
            outcome_id=msg.outcome_id,
            iteration=msg.iteration,
            turn=msg.turn,
            result="failed",
            explanation=f"grading failed ({error.kind}): {error.message}",
        )

    async def handle(self, msg: GradeRequest, ctx: Context) -> Message | None:
        if (stored := await _stored_verdict(msg, ctx.bus)) is not None:
            ctx.log.info("outcome_already_graded", outcome_id=msg.outcome_id, iteration=msg.iteration)
            return stored  # a redelivery: no second model call, no second span
        started = time.monotonic()
        fields: dict[str, Any] = {
            "session_id": msg.session_id,
            "thread_id": GRADER,
            "agent": GRADER,
            "outcome_id": msg.outcome_id,
            "iteration": msg.iteration,
        }
        # Ids derived from the request's: a redelivered request does not start a second span.
        await ctx.bus.emit(OutcomeEvaluationStart(msg_id=f"{msg.msg_id}.start", **fields))
        try:
            verdict = await self._grade(msg, ctx.bus)
        except Retryable as exc:
            max_deliver = self.consumer(ctx.bus.subjects).max_deliver
            if not 0 < max_deliver <= ctx.delivery:
                raise
            # The last delivery: the runtime would send failure() but leave the span open. Close it here.
            ctx.log.warning("grading_gave_up", delivery=ctx.delivery, error=str(exc))
            verdict = GradeVerdict(
                session_id=msg.session_id,
                outcome_id=msg.outcome_id,
                iteration=msg.iteration,
                turn=msg.turn,
                result="failed",
                explanation=f"grading failed after {ctx.delivery} attempts: {exc}",
            )
        except Exception as exc:
            with contextlib.suppress(BusError):
                await ctx.bus.emit(
                    OutcomeEvaluationEnd(
                        msg_id=f"{msg.msg_id}.end",
                        result="failed",
                        explanation=f"grading failed ({type(exc).__name__}): {exc}",
                        duration_ms=(time.monotonic() - started) * 1000,
                        **fields,
                    )
                )
            raise
        await ctx.bus.emit(
            OutcomeEvaluationEnd(
                msg_id=f"{msg.msg_id}.end",
                result=verdict.result,
                explanation=verdict.explanation,
                criteria=verdict.criteria,
                usage=verdict.usage,
                duration_ms=(time.monotonic() - started) * 1000,
                **fields,
            )
        )
        ctx.log.info(
            "outcome_graded",
            outcome_id=msg.outcome_id,
            iteration=msg.iteration,
            turn=msg.turn,
            result=verdict.result,
            failed=sum(c.status == "failed" for c in verdict.criteria),
            not_graded=sum(c.status == "not_graded" for c in verdict.criteria),
        )
        return verdict

    async def _grade(self, msg: GradeRequest, bus: Bus) -> GradeVerdict:
        workspace = Workspace(bus)
        outcome = msg.outcome
        files: dict[str, bytes | FileRead | None] = {}
        for path in dict.fromkeys(check.path for check in outcome.checks if check.path):
            files[path] = await read_file(workspace, msg.session_id, path)
        resolved, unresolved = await resolve_queries(workspace, msg.session_id, outcome.checks)
        # In a child process with a deadline: a team's regex holds the GIL, so a thread would not do.
        graded = iter(await run_checks_apart(resolved, msg.answer, files, timeout=self.check_timeout))
        checks = [unresolved[n] if n in unresolved else next(graded) for n in range(len(outcome.checks))]
        rubric = await self._grade_rubric(msg, outcome.criteria(), checks, workspace, bus)
        verdicts = [*checks, *rubric.verdicts]
        attempt: dict[str, Any] = {
            "contradiction": rubric.contradiction,
            "model_error": rubric.model_error,
            "iteration": msg.iteration,
            "max_iterations": outcome.max_iterations,
        }
        result = overall(verdicts, **attempt)
        explanation = explain(result, verdicts, **attempt)
        return GradeVerdict(
            session_id=msg.session_id,
            outcome_id=msg.outcome_id,
            iteration=msg.iteration,
            turn=msg.turn,
            result=result,
            explanation=explanation,
            criteria=verdicts,
            usage=rubric.usage,
        )

    async def _grade_rubric(
        self,
        msg: GradeRequest,
        criteria: list[str],
        checks: list[CriterionVerdict],
        workspace: Workspace,
        bus: Bus,
    ) -> _Rubric:
        if not criteria:
            return _Rubric([])
        if self.model.name == "offline":
            return _Rubric([not_graded(c, NEEDS_A_MODEL) for c in criteria])
        nonce = secrets.token_hex(16)  # per request: the material cannot guess its delimiters
        files = await files_for_model(workspace, msg, criteria, nonce)
        model = msg.model or DEFAULT_MODEL
        prompt = grading_prompt(msg, criteria, files, checks, nonce)
        request = ModelRequest(
            model=model,
            system=grader_system(nonce),
            messages=[Turn(role="user", content=[TextBlock(text=prompt)])],
            tools=[SUBMIT_GRADES],
            force_tool=SUBMIT_GRADES.name,
            max_tokens=min(16_000, 1024 + 300 * len(criteria)),
            agent=GRADER,
            thread_id=GRADER,
            session_id=msg.session_id,
            prices=msg.prices,
        )
        try:
            response = await call_model(bus, self.model, request)  # a retryable failure: Retryable
        except ModelFatal as exc:
            failure = f"{type(exc).__name__}: {exc}"
            reason = f"not graded: the grader's model failed: {failure}"
            return _Rubric([not_graded(c, reason) for c in criteria], model_error=failure)
        use = next((u for u in response.tool_uses if u.name == SUBMIT_GRADES.name), None)
        if use is None:
            said = clip(response.text.strip(), 200) or "nothing"
            reason = f"not graded: the grader's model did not call submit_grades (it said: {said})"
            return _Rubric([not_graded(c, reason) for c in criteria], usage=response.usage)
        verdicts, contradiction = parse_grades(criteria, use.input)
        return _Rubric(verdicts, contradiction, response.usage)


async def _stored_verdict(msg: GradeRequest, bus: Bus) -> GradeVerdict | None:
    """The verdict already stored for this request (the first, which is the one the lead reads), if
    any: this request was graded before (a redelivery after the reply, a request sent again)."""
    subject = bus.subjects.verdict(msg.session_id, msg.iteration, msg.turn)
    try:
        async with contextlib.aclosing(
            read_subject(bus, bus.subjects.log_stream, subject, limit=1)
        ) as stored:
            first = await anext(stored, None)
    except BusError as exc:
        raise Retryable(f"reading the stored verdict on {subject!r} failed: {exc}") from exc
    if first is None:
        return None
    try:
        verdict = msgspec.json.decode(first.data, type=GradeVerdict)
    except msgspec.DecodeError:
        return None  # unreadable: grade again (the lead reads the same message, and fails on it too)
    return verdict if verdict.outcome_id == msg.outcome_id else None
