"""Outcomes end to end: the lead's attempts, the separate grader's verdicts, revisions with feedback."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from actors.agent.models.base import Model, ModelResponse
from actors.agent.models.offline import OfflineModel
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.roles import AgentSettings, RoleConfig, running, running_agents
from bus.connection import Bus
from bus.direct import read_subject
from schemas import AgentSpec, SessionResult, SessionSubmit, TeamSpec
from schemas.base import Usage
from schemas.conversation import TextBlock
from schemas.outcome import Check, Outcome
from tests.helpers import submit_and_wait

RUBRIC = "- The answer names the deploy that caused it."


def grades(passed: bool, explanation: str, *, contradiction: str = "") -> ModelResponse:
    grade = {"index": 1, "passed": passed, "explanation": explanation}
    usage = Usage(input_tokens=900, output_tokens=60, cost_usd=0.0036)
    return calls(
        ("toolu_g", "submit_grades", {"criteria": [grade], "contradiction": contradiction}), usage=usage
    )


def solo(outcome: Outcome) -> TeamSpec:
    """A lead alone (no roster): its answers are the attempts."""
    return TeamSpec(name="solo", lead=AgentSpec(name="lead"), outcome=outcome)


@asynccontextmanager
async def lead_and_grader(bus: Bus, model: Model) -> AsyncIterator[None]:
    async with running(bus, ["lead", "grader"], RoleConfig(model=model)):
        yield


async def events(bus: Bus, session_id: str, kind: str) -> list[dict[str, object]]:
    subject = bus.subjects.event(session_id, kind)
    return [json.loads(m.data) async for m in read_subject(bus, bus.subjects.log_stream, subject)]


async def test_needs_revision_then_satisfied_in_two_iterations(bus: Bus) -> None:
    model = ScriptedModel(
        {
            "lead": [text("Payments broke after a deploy."), text("Deploy dpl-48db40 broke payments.")],
            "grader": [grades(False, "No deploy id is named."), grades(True, "dpl-48db40 is named.")],
        }
    )
    submit = SessionSubmit(task="What broke payments?", team_spec=solo(Outcome(rubric=RUBRIC)))
    async with lead_and_grader(bus, model):
        result = await submit_and_wait(bus, submit)
    model.assert_done()

    assert result.status == "idle"
    assert result.final_text == "Deploy dpl-48db40 broke payments."
    assert result.outcome is not None
    assert result.outcome.result == "satisfied"
    assert [(v.iteration, v.result) for v in result.outcome.iterations] == [
        (1, "needs_revision"),
        (2, "satisfied"),
    ]
    # the lead's second attempt got the grader's feedback as a new turn, after its first answer
    second = model.calls_by("lead")[1].request.messages
    assert [t.role for t in second] == ["user", "assistant", "user"]
    feedback = second[-1].text
    assert "attempt 1 of 3" in feedback
    assert "No deploy id is named." in feedback
    # the grader saw each attempt's answer, in a fresh context: one user message, never the lead's turns
    for call, answer in zip(model.calls_by("grader"), ("Payments broke", "dpl-48db40"), strict=True):
        assert len(call.request.messages) == 1
        assert answer in call.request.messages[0].text
        assert "What broke payments?" in call.request.messages[0].text
    assert "No deploy id is named." not in model.calls_by("grader")[1].request.messages[0].text
    ends = await events(bus, submit.session_id, "span.outcome_evaluation_end")
    assert [(e["iteration"], e["result"]) for e in ends] == [(1, "needs_revision"), (2, "satisfied")]
    assert ends[0]["usage"]["cost_usd"] == 0.0036  # type: ignore[index]
    assert len(await events(bus, submit.session_id, "span.outcome_evaluation_start")) == 2
    assert result.usage.cost_usd >= 2 * 0.0036  # the grader's cost counts in the session's


async def test_max_iterations_reached_stops_the_loop(bus: Bus) -> None:
    model = ScriptedModel(
        {
            "lead": [text("attempt one"), text("attempt two")],
            "grader": [grades(False, "Still no deploy."), grades(False, "Still no deploy.")],
        }
    )
    submit = SessionSubmit(task="What broke?", team_spec=solo(Outcome(rubric=RUBRIC, max_iterations=2)))
    async with lead_and_grader(bus, model):
        result = await submit_and_wait(bus, submit)
    model.assert_done()
    assert result.outcome is not None
    assert [(v.iteration, v.result) for v in result.outcome.iterations] == [
        (1, "needs_revision"),
        (2, "max_iterations_reached"),
    ]
    assert result.outcome.result == "max_iterations_reached"
    assert result.final_text == "attempt two"
    assert len(model.calls_by("lead")) == 2  # no third attempt


async def test_a_rubric_that_contradicts_the_task_fails_at_once(bus: Bus) -> None:
    model = ScriptedModel(
        {
            "lead": [text("The incident had no deploy.")],
            "grader": [grades(False, "-", contradiction="The task says there was no deploy to name.")],
        }
    )
    submit = SessionSubmit(task="Explain the outage.", team_spec=solo(Outcome(rubric=RUBRIC)))
    async with lead_and_grader(bus, model):
        result = await submit_and_wait(bus, submit)
    model.assert_done()
    assert result.outcome is not None
    assert [(v.iteration, v.result) for v in result.outcome.iterations] == [(1, "failed")]
    assert "no deploy to name" in result.outcome.iterations[0].explanation


async def test_machine_checks_are_graded_offline_and_a_failing_one_asks_for_revision(bus: Bus) -> None:
    outcome = Outcome(
        rubric="- The report reads well.",
        checks=[
            Check(name="the report exists", kind="file_exists", path="report.md"),
            # a line of its own (the offline lead echoes its feedback, so not just any mention)
            Check(
                name="it has a rollback line", kind="matches", path="report.md", pattern="^Rollback: done$"
            ),
        ],
        max_iterations=2,
    )
    submit = SessionSubmit(task="Summarize the outage.", team_spec=solo(outcome))
    async with lead_and_grader(bus, OfflineModel()):
        result = await submit_and_wait(bus, submit)
    assert result.status == "idle"
    assert result.outcome is not None
    assert [v.result for v in result.outcome.iterations] == ["needs_revision", "max_iterations_reached"]
    first = result.outcome.iterations[0]
    assert [(c.criterion, c.status) for c in first.criteria] == [
        ("the report exists", "passed"),
        ("it has a rollback line", "failed"),
        ("The report reads well.", "not_graded"),
    ]
    assert "needs a model" in first.criteria[2].explanation  # not silently passed
    assert "it has a rollback line" in first.explanation


async def test_a_submits_outcome_replaces_the_teams(bus: Bus) -> None:
    model = ScriptedModel({"lead": [text("Deploy dpl-48db40.")]})
    team = solo(Outcome(rubric=RUBRIC))  # would need a model to grade
    own = Outcome(checks=[Check(name="names a deploy", kind="matches", pattern=r"dpl-[0-9a-f]{6}")])
    submit = SessionSubmit(task="What broke?", team_spec=team, outcome=own)
    async with lead_and_grader(bus, model):
        result: SessionResult = await submit_and_wait(bus, submit)
    assert result.outcome is not None
    assert result.outcome.result == "satisfied"
    assert [c.criterion for c in result.outcome.iterations[0].criteria] == ["names a deploy"]
    assert not model.calls_by("grader")  # machine checks only: no model call
    assert isinstance(model.calls_by("lead")[0].request.messages[0].content[0], TextBlock)


async def test_without_a_grader_the_lead_gives_up_waiting_with_a_failed_outcome(bus: Bus) -> None:
    model = ScriptedModel({"lead": [text("Deploy dpl-48db40.")]})
    submit = SessionSubmit(task="What broke?", team_spec=solo(Outcome(rubric=RUBRIC)))
    async with running_agents(bus, model, settings=AgentSettings(grade_timeout=0.5)):  # no grader runs
        result = await submit_and_wait(bus, submit)
    assert result.status == "idle"
    assert result.outcome is not None
    [verdict] = result.outcome.iterations
    assert verdict.result == "failed"
    assert verdict.explanation.startswith("no verdict from the grader within 0.5s: is a grader running?")


async def test_a_huge_answer_is_cut_in_the_grading_request_but_graded_from_the_report(bus: Bus) -> None:
    answer = "Deploy dpl-48db40 broke payments.\n" + "x" * 200_000
    model = ScriptedModel({"lead": [text(answer)]})
    outcome = Outcome(
        checks=[Check(name="the report names it", kind="contains", path="report.md", value="xxxx")]
    )
    submit = SessionSubmit(task="What broke?", team_spec=solo(outcome))
    async with lead_and_grader(bus, model):
        result = await submit_and_wait(bus, submit)
    assert result.outcome is not None
    assert result.outcome.result == "satisfied"  # the request fit; the check read the whole report file
    [request] = [
        m async for m in read_subject(bus, bus.subjects.log_stream, bus.subjects.grade(submit.session_id))
    ]
    assert len(request.data) < 200_000
    assert b"more characters: the whole answer is in report.md" in request.data
