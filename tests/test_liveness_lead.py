"""Liveness of the lead and its gateway (issue 12): every session ends, whatever fails.

A delegation JetStream stops delivering (its worker killed ``max_deliver`` times) and one no worker
takes both fail with a clear error and the session goes on; sessions waiting on an unserved agent do
not hold back new ones; stray replies and verdicts are rejected and ignored; a session without a
deadline gets the default one; a submit too large for the server is refused at once.
"""

from __future__ import annotations

import asyncio
import time

import msgspec
import pytest
from structlog.testing import capture_logs

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.roles import AgentSettings, RoleConfig, running, running_agents
from actors.sessions import cancel
from actors.sessions.teams import register_team
from bus.codec import Decoder
from bus.connection import Bus
from bus.direct import read_subject
from schemas import AgentSpec, SessionSubmit, TeamSpec, ThreadReply
from schemas.outcome import Check, GradeVerdict, Outcome
from schemas.session import SubmitReply
from schemas.trace import MessageRejected, ModelRequestStart, SessionErrorEvent
from tests.agents_proc import AGENTS
from tests.helpers import NatsServer, inbox, ready_process, submit, team, tool_results, wait_result

REPLIES = Decoder(SubmitReply)
REJECTED = Decoder(MessageRejected)


def delegating_lead(request: ModelRequest) -> ModelResponse:
    """The lead delegates to every roster agent in one turn (tool use ids ``toolu_<agent>``), then
    reports the results; a subagent answers ``<agent> found <task>``."""
    if request.agent == "lead":
        results = tool_results(request)
        if not results:
            uses: list[tuple[str, str, dict[str, object]]] = [
                (f"toolu_{a}", "delegate", {"agent": a, "task": f"look at {a}"}) for a in request.roster
            ]
            return calls(*uses)
        return text("REPORT\n" + "\n".join(r.content for r in results))
    return text(f"{request.agent} found {request.messages[0].text}")


async def rejections(bus: Bus, session_id: str) -> list[MessageRejected]:
    subject = bus.subjects.event(session_id, "bus.message_rejected")
    return [REJECTED.decode(m.data) async for m in read_subject(bus, bus.subjects.log_stream, subject)]


async def submit_reply(bus: Bus, request: SessionSubmit, timeout: float = 10.0) -> SubmitReply:
    return REPLIES.decode(await bus.request(bus.subjects.api_submit, request, timeout=timeout))


# --- 1: a delegation JetStream stops delivering -----------------------------------------------------


@pytest.mark.slow
async def test_a_delegation_whose_worker_is_killed_max_deliver_times_fails_and_the_session_goes_on(
    nats_server: NatsServer, bus: Bus
) -> None:
    root = bus.subjects.root
    starts = await inbox(bus, bus.subjects.events("*", "span.model_request_start"), ModelRequestStart)
    async with (
        ready_process("tests.agents_proc", nats_server.url, root, "--lead"),
        ready_process("tests.agents_proc", nats_server.url, root, "--agents", "fast"),
    ):
        session_id = await submit(bus, SessionSubmit(task="incident", team_spec=team(*AGENTS)))
        for _ in range(AgentSettings().max_deliver):  # each worker dies inside the same delegation
            worker = ready_process(
                "tests.agents_proc", nats_server.url, root, "--agents", "slow", "--slow", "slow=60"
            )
            async with worker as doomed:
                while (await starts.next(timeout=30)).agent != "slow":
                    pass
                doomed.kill()
                await doomed.wait()
        given_up = time.monotonic()
        # A healthy worker is back, but JetStream will not deliver the message again.
        async with ready_process("tests.agents_proc", nats_server.url, root, "--agents", "slow"):
            result = await wait_result(bus, session_id, timeout=30)
        waited = time.monotonic() - given_up
    await starts.close()
    assert result.status == "idle", result.final_text
    assert "fast found look at fast" in result.final_text
    assert "thread t-toolu_slow (slow) failed: JetStream gave up delivering" in result.final_text
    assert "after 5 deliveries" in result.final_text
    print(f"session ended {waited:.1f}s after the fifth kill")


# --- 2: a team whose agent no worker serves ---------------------------------------------------------


async def test_an_agent_no_worker_serves_is_a_warning_and_its_delegation_fails_after_the_claim_timeout(
    bus: Bus,
) -> None:
    model = ScriptedModel(responder=delegating_lead)
    settings = AgentSettings(claim_timeout=2.0, grace=1.0)
    request = SessionSubmit(task="incident", team_spec=team("fast", "ghost"))
    errors = await inbox(bus, bus.subjects.event(request.session_id, "session.error"), SessionErrorEvent)
    async with running_agents(bus, model, agents=["fast"], settings=settings):
        started = time.monotonic()
        reply = await submit_reply(bus, request)
        answered = time.monotonic() - started
        assert reply.accepted
        assert len(reply.warnings) == 1, reply.warnings
        assert "no worker serves agent 'ghost' right now" in reply.warnings[0]
        warning = await errors.next(timeout=5)
        result = await wait_result(bus, request.session_id, timeout=20)
        ended = time.monotonic() - started
    await errors.close()
    assert warning.error.kind == "no_worker"
    assert "'ghost'" in warning.error.message
    assert result.status == "idle", result.final_text
    assert "fast found look at fast" in result.final_text
    assert "thread t-toolu_ghost (ghost) failed: no worker took the request" in result.final_text
    assert "within 2s: is a worker serving agent 'ghost' running?" in result.final_text
    print(f"gateway answered in {answered * 1000:.0f} ms with the warning; session ended after {ended:.1f}s")


async def test_a_delegation_queued_behind_a_busy_worker_is_not_failed_by_the_claim_timeout(bus: Bus) -> None:
    model = ScriptedModel(responder=delegating_lead, latency={"slow": 2.5})
    settings = AgentSettings(claim_timeout=1.0, subagent_concurrency=1, grace=1.0)
    first, second = (SessionSubmit(task=f"incident {i}", team_spec=team("slow")) for i in range(2))
    async with running_agents(bus, model, agents=["slow"], settings=settings):
        for request in (first, second):
            await submit(bus, request)
        results = [await wait_result(bus, r.session_id, timeout=20) for r in (first, second)]
    for result in results:
        assert result.status == "idle", result.final_text
        assert "slow found look at slow" in result.final_text  # the second waited ~2.5 s for the worker


async def test_sessions_waiting_on_an_unserved_agent_do_not_hold_back_new_sessions(bus: Bus) -> None:
    model = ScriptedModel(responder=delegating_lead)
    stuck = [SessionSubmit(task=f"stuck {i}", team_spec=team("ghost")) for i in range(20)]
    sent = await inbox(bus, bus.subjects.events("*", "agent.thread_message_sent"), dict)
    async with running_agents(bus, model, agents=["fast"], settings=AgentSettings(grace=1.0)):
        for request in stuck:
            await submit(bus, request)
        await sent.take(16, timeout=20)  # at least 16 sessions wait on "ghost": a full lead on HEAD
        started = time.monotonic()
        result = await wait_result(
            bus, await submit(bus, SessionSubmit(task="fresh", team_spec=team("fast"))), timeout=15
        )
        took = time.monotonic() - started
    await sent.close()
    assert result.status == "idle", result.final_text
    assert "fast found look at fast" in result.final_text
    print(f"a new session beside 20 waiting ones finished in {took:.2f}s")


# --- 3: stray replies and verdicts ------------------------------------------------------------------


async def test_stray_replies_are_rejected_and_the_real_reply_is_used(bus: Bus) -> None:
    model = ScriptedModel(responder=delegating_lead, latency={"slow": 1.0})
    request = SessionSubmit(task="incident", team_spec=team("fast", "slow"))
    sid = request.session_id
    subject = bus.subjects.reply(sid, "t-toolu_slow")
    forged = ThreadReply(
        session_id=sid,
        thread_id="t-toolu_slow",
        agent="fast",  # not the agent the request went to
        status="failed",
        text="forged",
        in_reply_to=f"dlg-{sid}-t-toolu_slow",
    )
    orphan = msgspec.structs.replace(forged, agent="slow", in_reply_to="nope", text="orphan")
    starts = await inbox(bus, bus.subjects.event(sid, "span.model_request_start"), ModelRequestStart)
    async with running_agents(bus, model, agents=["fast", "slow"]):
        await submit(bus, request)
        ending = asyncio.ensure_future(wait_result(bus, sid, timeout=20))
        while not ending.done():  # until "slow" works on it (or the session ended without it)
            waiting = asyncio.ensure_future(starts.next(timeout=10))
            await asyncio.wait({waiting, ending}, return_when=asyncio.FIRST_COMPLETED)
            if not waiting.done():
                waiting.cancel()
            elif waiting.result().agent == "slow":
                break
        # While the lead waits: its live subscription gets them. (A new request is sent without
        # reading the reply subject first; a replayed one reads it: test_durability.)
        await bus.publish_bytes(subject, b"\x00 not json")
        await bus.publish(subject, forged)
        await bus.publish(subject, orphan)
        await bus.publish(subject, msgspec.structs.replace(forged, msg_id="rpl_live", text="forged live"))
        result = await ending
    await starts.close()
    assert result.status == "idle", result.final_text
    assert "slow found look at slow" in result.final_text
    assert "fast found look at fast" in result.final_text
    assert "forged" not in result.final_text
    reasons = [r.reason for r in await rejections(bus, sid)]
    assert any("JSON is malformed" in r for r in reasons), reasons
    assert any("agent 'fast' where the request" in r for r in reasons), reasons
    assert any("answers no request" in r for r in reasons), reasons


async def test_stray_verdicts_are_rejected_and_the_graders_verdict_is_used(bus: Bus) -> None:
    outcome = Outcome(checks=[Check(name="names a deploy", kind="matches", pattern=r"dpl-[0-9a-f]{6}")])
    solo = TeamSpec(name="solo", lead=AgentSpec(name="lead"), outcome=outcome)
    model = ScriptedModel({"lead": [text("Deploy dpl-48db40 broke payments.")]})
    request = SessionSubmit(task="What broke?", team_spec=solo)
    sid = request.session_id
    subject = bus.subjects.verdict(sid, 1)
    await bus.publish_bytes(subject, b"\x00 not json")
    await bus.publish(
        subject,
        GradeVerdict(
            session_id=sid, outcome_id="outc_other", iteration=1, result="failed", explanation="forged"
        ),
    )
    async with running(bus, ["lead", "grader"], RoleConfig(model=model)):
        result = await wait_result(bus, await submit(bus, request), timeout=20)
    assert result.status == "idle", result.final_text
    assert result.outcome is not None
    assert result.outcome.result == "satisfied"
    assert [v.explanation for v in result.outcome.iterations if v.explanation == "forged"] == []
    reasons = [r.reason for r in await rejections(bus, sid)]
    assert any("JSON is malformed" in r for r in reasons), reasons
    assert any("outc_other" in r for r in reasons), reasons


# --- 4: a default deadline --------------------------------------------------------------------------


async def test_a_session_without_a_deadline_gets_the_default_one(bus: Bus) -> None:
    model = ScriptedModel(responder=delegating_lead, latency={"slow": 60.0})
    settings = AgentSettings(session_deadline=1.5, grace=1.0)
    request = SessionSubmit(task="incident", team_spec=team("slow"))  # neither sets a deadline
    assert request.deadline_s is None
    assert request.team_spec is not None
    assert not request.team_spec.deadline_s
    async with running_agents(bus, model, agents=["slow"], settings=settings):
        started = time.monotonic()
        result = await wait_result(bus, await submit(bus, request), timeout=15)
        took = time.monotonic() - started
    assert result.status == "deadline_reached", result.final_text
    assert took < 10
    assert AgentSettings().session_deadline == 3600.0  # the documented default
    print(f"deadline_reached after {took:.1f}s (deadline 1.5s)")


# --- 6: a submit near the size limit ----------------------------------------------------------------


async def test_a_submit_whose_record_would_not_fit_the_server_is_refused_at_once(bus: Bus) -> None:
    big = TeamSpec(
        name="big", lead=AgentSpec(name="lead", system="x" * 20_000), agents=[AgentSpec(name="fast")]
    )
    await register_team(bus, big)
    max_payload = (await bus.server_info()).max_payload
    task = "t" * (max_payload - 10_000)  # the request fits; the record (with the team) does not
    model = ScriptedModel(responder=delegating_lead)
    async with running_agents(bus, model, agents=["fast"], settings=AgentSettings(grace=1.0)):
        started = time.monotonic()
        reply = await submit_reply(bus, SessionSubmit(task=task, team="big"), timeout=10)
        took = time.monotonic() - started
        fits = await submit_reply(bus, SessionSubmit(task="a small task", team="big"))
    assert not reply.accepted
    assert reply.error is not None
    assert reply.error.kind == "too_large"
    assert "record would be" in reply.error.message
    assert f"max payload {max_payload:,}" in reply.error.message
    assert fits.accepted
    print(f"refused in {took * 1000:.0f} ms: {reply.error.message}")


async def test_work_that_will_not_stop_is_left_behind_after_a_grace(monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt or cancel must end the wait even when the cancelled work does not stop: the
    caller goes on after STOP_GRACE, and the stuck work's place is logged."""
    monkeypatch.setattr(cancel, "STOP_GRACE", 0.2)
    release = asyncio.Event()

    async def stubborn() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await release.wait()  # swallows the cancel until released

    work = asyncio.ensure_future(stubborn())
    stop = asyncio.Event()
    asyncio.get_running_loop().call_later(0.05, stop.set)
    with capture_logs() as logs:
        started = time.monotonic()
        assert await cancel.race_cancel(work, (stop, "interrupted")) == "interrupted"
    assert time.monotonic() - started < 2
    [stuck] = [entry for entry in logs if entry["event"] == "work_did_not_stop"]
    assert "stubborn" in stuck["where"]
    release.set()
    await asyncio.wait({work}, timeout=2)
    assert work.done()
