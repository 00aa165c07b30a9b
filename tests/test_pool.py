"""The pool: one process serves any agent of any session, with a real nats-server and a scripted model.

A team whose agents no dedicated worker serves runs on the pool alone, and the gateway, having asked
the pool, warns of nothing; a session that bypassed the gateway is seen by its ``accepted``; a pool
started after a session was accepted serves it from the session's record; a pool and a dedicated
worker share an agent's tasks, each once; a pool serves no more agents than its bound; and on its
own least-privilege user (``staffwork auth``'s role ``pool``) nothing it does is refused.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import structlog

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.client import Client
from actors.pool import PoolService
from actors.roles import AgentSettings, RoleConfig, build, running, running_agents
from bus.codec import Decoder
from bus.connection import Bus
from bus.options import NatsOptions
from bus.permissions import AgentAccess, deployment, new_passwords, render_config
from bus.provision import provision
from bus.subjects import Subjects
from schemas.pool import PoolServe, PoolServed
from schemas.session import SessionAccepted, SessionSubmit, SubmitReply
from tests.helpers import (
    delegate,
    inbox,
    running_actors,
    start_nats_server,
    stop_nats_server,
    submit_and_wait,
    team,
    tool_results,
    wait_result,
)

REPLIES = Decoder(SubmitReply)
ANSWERS = Decoder(PoolServed)


def delegating_lead(request: ModelRequest) -> ModelResponse:
    """The lead delegates to every roster agent in one turn, then reports; an agent answers
    ``<agent> found <task>``."""
    if request.agent == "lead":
        results = tool_results(request)
        if not results:
            return calls(*[delegate(f"toolu_{a}", a, f"look at {a}") for a in request.roster])
        return text("REPORT\n" + "\n".join(r.content for r in results))
    return text(f"{request.agent} found {request.messages[0].text}")


async def submit_reply(bus: Bus, request: SessionSubmit) -> SubmitReply:
    return REPLIES.decode(await bus.request(bus.subjects.api_submit, request, timeout=10))


def answered(model: ScriptedModel, agent: str) -> int:
    """How many model calls ``agent``'s threads made."""
    return sum(1 for call in model.calls if call.agent == agent)


async def test_agents_no_worker_serves_run_on_the_pool_and_the_gateway_warns_of_nothing(bus: Bus) -> None:
    model = ScriptedModel(responder=delegating_lead)
    request = SessionSubmit(task="incident", team_spec=team("zeta", "omega"))  # names no worker serves
    async with running_agents(bus, model, pool=True):
        reply = await submit_reply(bus, request)
        assert reply.accepted, reply.error
        assert reply.warnings == []  # the pool answered: it serves both
        result = await wait_result(bus, request.session_id, timeout=10)
    assert result.status == "idle", result.final_text
    assert "zeta found look at zeta" in result.final_text
    assert "omega found look at omega" in result.final_text


async def test_a_session_that_bypassed_the_gateway_is_served_from_its_accepted(bus: Bus) -> None:
    model = ScriptedModel(responder=delegating_lead)
    async with running_agents(bus, model, pool=True):
        result = await submit_and_wait(
            bus, SessionSubmit(task="incident", team_spec=team("sigma")), timeout=10, direct=True
        )
    assert result.status == "idle", result.final_text
    assert "sigma found look at sigma" in result.final_text


async def test_a_pool_started_after_the_session_was_accepted_serves_it_from_its_record(bus: Bus) -> None:
    model = ScriptedModel(responder=delegating_lead)
    request = SessionSubmit(task="incident", team_spec=team("kappa"))
    accepted = await inbox(bus, bus.subjects.out(request.session_id, "accepted"), SessionAccepted)
    async with running_agents(bus, model):  # the lead alone: no pool answers, no worker pulls
        reply = await submit_reply(bus, request)
        assert reply.accepted, reply.error
        assert len(reply.warnings) == 1, reply.warnings
        assert "no worker serves agent 'kappa' right now" in reply.warnings[0]
        await accepted.next(timeout=10)  # the session is running: only its record tells the pool now
        async with running_agents(bus, model, lead=False, pool=True):
            result = await wait_result(bus, request.session_id, timeout=10)
    await accepted.close()
    assert result.status == "idle", result.final_text
    assert "kappa found look at kappa" in result.final_text


async def test_a_pool_and_a_dedicated_worker_share_an_agent_each_task_once(bus: Bus) -> None:
    model = ScriptedModel(responder=delegating_lead)
    requests = [SessionSubmit(task=f"incident {i}", team_spec=team("logs")) for i in range(4)]
    async with running_agents(bus, model, agents=["logs"], pool=True):
        for request in requests:
            reply = await submit_reply(bus, request)
            assert reply.warnings == [], reply.warnings
        results = [await wait_result(bus, r.session_id, timeout=10) for r in requests]
    for result in results:
        assert result.status == "idle", result.final_text
        assert "logs found look at logs" in result.final_text
    assert answered(model, "logs") == len(requests)  # no delegation was run twice


async def test_a_pool_serves_no_more_agents_than_its_bound_and_stops_every_worker(bus: Bus) -> None:
    model = ScriptedModel(responder=delegating_lead)
    settings = AgentSettings(pool_agents=2, claim_timeout=1.0, grace=1.0)
    built = build(bus, ["lead", "pool"], RoleConfig(model=model, agent_settings=settings))
    [pool] = [actor for actor, _ in built if isinstance(actor, PoolService)]
    request = SessionSubmit(task="incident", team_spec=team("alpha", "gamma"))
    with structlog.testing.capture_logs() as logs:
        async with running_actors(bus, built):
            asked = PoolServe(session_id="ses_bound", agents=["alpha", "beta", "gamma"])
            answer = ANSWERS.decode(await bus.request(bus.subjects.api_pool, asked, timeout=10))
            assert (answer.agents, answer.refused) == (["alpha", "beta"], ["gamma"])
            assert pool.serving == ["alpha", "beta"]
            # the gateway counts what the pool refused as unserved, as it did before pools
            reply = await submit_reply(bus, request)
            assert len(reply.warnings) == 1, reply.warnings
            assert "no worker serves agent 'gamma' right now" in reply.warnings[0]
            result = await wait_result(bus, request.session_id, timeout=10)
        assert pool.serving == []  # every worker stopped with the pool
    assert "alpha found look at alpha" in result.final_text
    assert "thread t-toolu_gamma (gamma) failed: no worker took the request" in result.final_text
    full = [line for line in logs if line["event"] == "pool_full"]
    assert full
    assert {line["agent"] for line in full} == {"gamma"}
    assert all(line["limit"] == 2 for line in full)


async def test_the_pool_and_the_lead_on_their_own_users_are_refused_nothing(tmp_path: Path) -> None:
    subjects = Subjects(f"q{uuid.uuid4().hex[:8]}")
    plan = deployment(subjects, [AgentAccess("zeta", known=False)], roles=("lead", "pool", "admin"))
    passwords = new_passwords(plan)
    config = tmp_path / "auth.conf"
    config.write_text(render_config(plan, passwords))
    server = start_nats_server(tmp_path / "js", config=config)

    async def connect(role: str) -> Bus:
        user = plan.user(role)
        options = NatsOptions(user=user.name, password=passwords[user.name], inbox_prefix=user.inbox_prefix)
        return await Bus.connect(server.url, root=subjects.root, name=f"pool-test-{role}", options=options)

    try:
        admin = await connect("admin")
        await provision(admin, agents=("zeta",))  # what the operator provisions
        lead, pool = await connect("lead"), await connect("pool")
        model = ScriptedModel(responder=delegating_lead)
        request = SessionSubmit(task="incident", team_spec=team("zeta"))
        try:
            async with (
                running(lead, ["lead"], RoleConfig(model=model)),
                running(pool, ["pool"], RoleConfig(model=model)),
            ):
                reply = await submit_reply(admin, request)
                assert reply.warnings == [], reply.warnings
                result = await wait_result(admin, request.session_id, timeout=10)
        finally:
            for bus in (admin, lead, pool):
                await bus.close()
    finally:
        stop_nats_server(server)
    assert result.status == "idle", result.final_text
    assert "zeta found look at zeta" in result.final_text
    assert [line for line in server.log if "Violation" in line] == []


async def test_a_follow_up_reaches_a_pool_started_while_the_session_was_idle(bus: Bus) -> None:
    """The session went idle with its first pool; a new pool knows nothing of it (it serves the
    sessions pending or running) until the follow-up's gateway asks it."""

    def lead(request: ModelRequest) -> ModelResponse:
        if request.agent == "lead" and not tool_results(request):  # each turn: new tool use ids
            turn = len(request.messages)
            return calls(*[delegate(f"toolu_{turn}_{a}", a, f"look at {a}") for a in request.roster])
        return delegating_lead(request)

    model = ScriptedModel(responder=lead)
    request = SessionSubmit(task="incident", team_spec=team("rho"))
    client = Client(bus)
    async with running_agents(bus, model):  # the lead
        async with running_agents(bus, model, lead=False, pool=True):
            await submit_reply(bus, request)
            assert (await wait_result(bus, request.session_id, timeout=10)).status == "idle"
        async with running_agents(bus, model, lead=False, pool=True):
            turn = await client.send(request.session_id, "and now?")
            second = await client.wait(request.session_id, timeout=10, turn=turn)
    assert second.status == "idle", second.final_text
    assert "rho found look at rho" in second.final_text
    assert answered(model, "rho") == 2
