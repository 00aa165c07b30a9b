"""Tasks from other systems: hand-written JSON on NATS, no staffwork code on the publishing side."""

from __future__ import annotations

import json

import msgspec
import nats
import pytest
import structlog
from nats.js.api import DeliverPolicy

from actors.agent.models.offline import OfflineModel
from actors.agent.models.scripted import ScriptedModel, text
from actors.client import Client, SubmitRefused
from actors.roles import running_agents
from actors.sessions.teams import register_team
from bus.connection import Bus
from bus.direct import read_subject
from schemas.trace import ModelRequestStart, event_kind
from tests.helpers import NatsServer, fan_out_lead, inbox, team

HAND_WRITTEN_TEAM: dict[str, object] = {
    "name": "handmade",
    "lead": {"name": "lead"},
    "agents": [{"name": "notes", "description": "takes notes"}],
}
HAND_WRITTEN: dict[str, object] = {
    "type": "session.submit.v1",
    "task": "Summarise the incident",
    "team_spec": HAND_WRITTEN_TEAM,
}


async def plain_request(server: NatsServer, subject: str, payload: bytes) -> dict[str, object]:
    """What any other system does: connect, request, parse JSON. No staffwork imports."""
    nc = await nats.connect(server.url)
    try:
        answer = await nc.request(subject, payload, timeout=10)
        return json.loads(answer.data)  # type: ignore[no-any-return]
    finally:
        await nc.close()


async def test_hand_written_json_starts_a_session_and_the_result_arrives(
    nats_server: NatsServer, bus: Bus
) -> None:
    root = bus.subjects.root
    async with running_agents(bus, OfflineModel(), agents=["notes"]):
        nc = await nats.connect(nats_server.url)
        try:
            reply = json.loads(
                (await nc.request(f"{root}.api.submit", json.dumps(HAND_WRITTEN).encode(), timeout=10)).data
            )
            assert reply["type"] == "session.submit_reply.v1"
            assert reply["accepted"] is True
            assert reply["result_subject"] == f"{root}.s.{reply['session_id']}.out.result"
            js = nc.jetstream()
            sub = await js.subscribe(
                reply["result_subject"], ordered_consumer=True, deliver_policy=DeliverPolicy.ALL
            )
            result = json.loads((await sub.next_msg(timeout=20)).data)
            await sub.unsubscribe()
        finally:
            await nc.close()
    assert result["type"] == "session.result.v1"
    assert result["status"] == "idle"
    assert "Summarise the incident" in result["final_text"]


@pytest.mark.parametrize(
    ("payload", "kind", "message"),
    [
        (b"{not json", "invalid_request", "not a valid session.submit.v1: JSON is malformed"),
        (
            json.dumps({"type": "session.submit.v1", "team": "handmade"}).encode(),
            "invalid_request",
            "Object missing required field `task`",
        ),
        (
            json.dumps({"type": "session.submit.v1", "task": "x", "team": "nosuchteam"}).encode(),
            "unknown_team",
            "team 'nosuchteam' is not registered (known: demo)",
        ),
        (
            json.dumps({"type": "session.submit.v1", "task": "x"}).encode(),
            "invalid_request",
            "give 'team' (a registered team's name) or 'team_spec'",
        ),
        (
            json.dumps({**HAND_WRITTEN, "task": ""}).encode(),
            "invalid_request",
            "Expected `str` of length >= 1 - at `$.task`",
        ),
        (
            json.dumps({**HAND_WRITTEN, "team": "demo"}).encode(),
            "invalid_request",
            "give 'team' or 'team_spec', not both",
        ),
        (
            json.dumps(
                {
                    **HAND_WRITTEN,
                    "team_spec": {**HAND_WRITTEN_TEAM, "lead": {"name": "lead", "tools": ["rm"]}},
                }
            ).encode(),
            "invalid_team",
            "unknown tool 'rm' for agent 'lead'",
        ),
    ],
)
async def test_bad_requests_get_an_error_reply_naming_the_problem(
    nats_server: NatsServer, bus: Bus, payload: bytes, kind: str, message: str
) -> None:
    await register_team(bus, msgspec.structs.replace(team("notes"), name="demo"))
    async with running_agents(bus, OfflineModel(), agents=["notes"]):
        reply = await plain_request(nats_server, bus.subjects.api_submit, payload)
        assert reply["accepted"] is False
        assert reply["error"]["kind"] == kind  # type: ignore[index]
        assert message in reply["error"]["message"]  # type: ignore[index]
        # and nothing else broke: a good request still works
        good = await plain_request(nats_server, bus.subjects.api_submit, json.dumps(HAND_WRITTEN).encode())
        assert good["accepted"] is True
        async with Client(bus) as client:
            assert (await client.wait(str(good["session_id"]), timeout=20)).status == "idle"


async def test_the_same_idempotency_key_twice_starts_one_session(nats_server: NatsServer, bus: Bus) -> None:
    model = ScriptedModel({"lead": fan_out_lead(["notes"])}, responder=lambda request: text("ok"))
    payload = json.dumps({**HAND_WRITTEN, "idempotency_key": "ticket-4711"}).encode()
    async with running_agents(bus, model, agents=["notes"]):
        first = await plain_request(nats_server, bus.subjects.api_submit, payload)
        second = await plain_request(nats_server, bus.subjects.api_submit, payload)
        assert first["session_id"] == second["session_id"]
        assert (first["duplicate"], second["duplicate"]) == (False, True)
        async with Client(bus) as client:
            result = await client.wait(str(first["session_id"]), timeout=20)
    assert result.status == "idle"
    stored = [m async for m in read_subject(bus, bus.subjects.log_stream, bus.subjects.submit)]
    assert len(stored) == 1  # one session request was stored
    assert len(model.calls_by("lead")) == 2  # one session's two lead turns
    model.assert_done()


async def test_the_python_client_submits_follows_and_reads(bus: Bus) -> None:
    await register_team(bus, team("notes"))
    async with running_agents(bus, OfflineModel(), agents=["notes"]), Client(bus) as client:
        session_id = await client.submit("write it down", team="testteam")
        kinds = [event_kind(e) async for e in client.events(session_id)]
        result = await client.wait(session_id, timeout=20)
        report = await client.read_file(session_id, result.report_path)
        with pytest.raises(SubmitRefused, match="team 'ghost' is not registered"):
            await client.submit("x", team="ghost")
    assert kinds[0] == "session.status_running"
    assert kinds[-1] == "session.status_idle"
    assert "session.thread_created" in kinds
    assert report.decode() == result.final_text


async def test_a_callers_msg_id_never_costs_a_later_session_its_result(
    nats_server: NatsServer, bus: Bus
) -> None:
    payload = json.dumps({**HAND_WRITTEN, "msg_id": "my-own-id"}).encode()
    async with running_agents(bus, OfflineModel(), agents=["notes"]):
        first = await plain_request(nats_server, bus.subjects.api_submit, payload)
        second = await plain_request(nats_server, bus.subjects.api_submit, payload)
        assert first["session_id"] != second["session_id"]
        async with Client(bus) as client:
            for reply in (first, second):
                assert (await client.wait(str(reply["session_id"]), timeout=20)).status == "idle"


async def test_a_session_id_contradicting_the_idempotency_key_is_refused(
    nats_server: NatsServer, bus: Bus
) -> None:
    payload = json.dumps({**HAND_WRITTEN, "idempotency_key": "k-1", "session_id": "ses_mine"}).encode()
    async with running_agents(bus, OfflineModel(), agents=["notes"]):
        reply = await plain_request(nats_server, bus.subjects.api_submit, payload)
    assert reply["accepted"] is False
    assert "session_id 'ses_mine' contradicts idempotency_key 'k-1'" in reply["error"]["message"]  # type: ignore[index]


async def test_a_key_or_session_id_reused_with_another_task_is_refused(
    nats_server: NatsServer, bus: Bus
) -> None:
    keyed = {**HAND_WRITTEN, "idempotency_key": "ticket-4712"}
    chosen = {**HAND_WRITTEN, "session_id": "ses_ticket-4713"}
    async with running_agents(bus, OfflineModel(), agents=["notes"]):
        replies = [
            await plain_request(nats_server, bus.subjects.api_submit, json.dumps(request).encode())
            for request in (
                keyed,
                {**keyed, "task": "Something else entirely"},
                chosen,
                chosen,
                {**chosen, "task": "Another task"},
            )
        ]
        async with Client(bus) as client:
            result = await client.wait(str(replies[0]["session_id"]), timeout=20)
    first, other_task, mine, mine_again, mine_other = replies
    assert (first["accepted"], first["duplicate"]) == (True, False)
    assert other_task["accepted"] is False
    assert other_task["error"] == {
        "kind": "conflict",
        "message": f"idempotency_key 'ticket-4712' was already used for session {first['session_id']!r} "
        "with another task ('Summarise the incident', not 'Something else entirely'): use a new key "
        "for new work",
        "retryable": False,
    }
    assert (mine["session_id"], mine["accepted"], mine_again["duplicate"]) == ("ses_ticket-4713", True, True)
    assert mine_other["accepted"] is False
    assert "session_id 'ses_ticket-4713' was already used" in mine_other["error"]["message"]  # type: ignore[index]
    assert "Summarise the incident" in result.final_text  # the first task ran, untouched


async def test_inputs_put_by_any_object_store_client_reach_the_agents(
    nats_server: NatsServer, bus: Bus
) -> None:
    """A caller in another language: choose the session id, put the inputs with the client's own
    object store (the standard layout), submit naming them. A missing input is refused by name."""
    session_id = "ses_upload-first"
    nc = await nats.connect(nats_server.url)
    try:
        store = await nc.jetstream().object_store(bus.subjects.files_bucket)
        await store.put(f"{session_id}/data/orders.csv", b"order,amount\n1,10\n")
        async with running_agents(bus, OfflineModel(), agents=["notes"]):
            missing = await plain_request(
                nats_server,
                bus.subjects.api_submit,
                json.dumps(
                    {**HAND_WRITTEN, "session_id": session_id, "inputs": ["data/orders.csv", "data/gone.csv"]}
                ).encode(),
            )
            assert missing["accepted"] is False
            assert missing["error"]["kind"] == "missing_input"  # type: ignore[index]
            assert "1 of the inputs is not in the session's workspace: 'data/gone.csv'" in str(
                missing["error"]
            )
            assert await Client(bus).status(session_id) is None  # refused: nothing was recorded
            reply = await plain_request(
                nats_server,
                bus.subjects.api_submit,
                json.dumps(
                    {**HAND_WRITTEN, "session_id": session_id, "inputs": ["data/orders.csv"]}
                ).encode(),
            )
            assert reply["accepted"] is True
            async with Client(bus) as client:
                assert (await client.wait(session_id, timeout=20)).status == "idle"
                listed = [f.path for f in await client.workspace.list(session_id)]
                assert "data/orders.csv" in listed  # adopted into the session's index: agents list it
                assert await client.read_file(session_id, "data/orders.csv") == b"order,amount\n1,10\n"
    finally:
        await nc.close()


async def test_a_plain_json_cancel_on_the_ctl_subject_ends_the_session(
    nats_server: NatsServer, bus: Bus
) -> None:
    slow = ScriptedModel(
        {"lead": fan_out_lead(["notes"])}, responder=lambda r: text("x"), latency={"notes": 30.0}
    )
    session_id = "ses_cancel-me"
    async with running_agents(bus, slow, agents=["notes"]):
        reply = await plain_request(
            nats_server,
            bus.subjects.api_submit,
            json.dumps({**HAND_WRITTEN, "session_id": session_id}).encode(),
        )
        assert reply["accepted"] is True
        started = await inbox(
            bus, bus.subjects.event(session_id, "span.model_request_start"), ModelRequestStart
        )
        await started.take(2)  # the lead's call, then the subagent's (30 s) call is under way
        await started.close()
        nc = await nats.connect(nats_server.url)
        try:
            cancel = {"type": "session.cancel.v1", "session_id": session_id, "reason": "the caller gave up"}
            await nc.publish(f"{bus.subjects.root}.s.{session_id}.ctl", json.dumps(cancel).encode())
            await nc.flush()
        finally:
            await nc.close()
        async with Client(bus) as client:
            result = await client.wait(session_id, timeout=10)
    assert result.status == "canceled"


async def test_the_python_client_tells_the_warnings_of_an_accepted_request(bus: Bus) -> None:
    await register_team(bus, team("notes", "ghost"))
    async with running_agents(bus, OfflineModel(), agents=["notes"]), Client(bus) as client:
        with structlog.testing.capture_logs() as logs:
            session_id = await client.submit("write it down", team="testteam")
        await client.cancel(session_id)
    warnings = [entry for entry in logs if entry["event"] == "submit_warning"]
    assert [entry["log_level"] for entry in warnings] == ["warning"]
    assert "no worker serves agent 'ghost' right now" in warnings[0]["warning"]
