"""Webhook payloads are the anthropic SDK's types: every event kind staffwork sends verifies with
``client.beta.webhooks.unwrap()`` and validates, strictly, as the SDK's own pydantic model
``BetaWebhookEvent`` (its ``data`` one of ``BetaWebhookEventData``), carrying our ids, type and
time: built by the payload builder, and as a real session's webhooks actor delivers them. And what
``staffwork run``, ``tail`` and ``webhooks list`` tell the user of skipped deliveries and disabled
endpoints.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import msgspec
import pytest
from anthropic import Anthropic
from anthropic.types.beta import (
    BetaWebhookEvent,
    BetaWebhookSessionOutcomeEvaluationEndedEventData,
    BetaWebhookSessionRequiresActionEventData,
    BetaWebhookSessionStatusIdledEventData,
    BetaWebhookSessionStatusRunStartedEventData,
    BetaWebhookSessionStatusTerminatedEventData,
    BetaWebhookSessionThreadCreatedEventData,
    BetaWebhookSessionThreadIdledEventData,
)
from pydantic import BaseModel, ValidationError

from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.cli.progress import Progress
from actors.client import Client
from actors.roles import RoleConfig, running
from actors.webhooks.actor import (
    WebhookSettings,
    WebhookSource,
    send_test_event,
    webhook_event,
    webhook_event_id,
)
from actors.webhooks.http import payload, signed_headers
from bus.connection import Bus
from bus.direct import read_subject
from schemas.base import Usage
from schemas.outcome import Check, Outcome
from schemas.team import AgentSpec, CustomTool, TeamSpec
from schemas.trace import (
    AnyTraceEvent,
    CustomToolUse,
    OutcomeEvaluationEnd,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadStatusIdle,
    ToolConfirmationRequested,
    WebhookDeliverySkipped,
    WebhookEndpointDisabled,
    WebhookFailed,
    event_kind,
)
from schemas.webhooks import WebhookEventType, WebhookSpec, secret_key
from tests.helpers import NatsServer, delegate, run_cli
from tests.test_webhooks import FAST, SECRET, Receiver

SID = "ses_01webhooksdk"
AT = datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
IDS = WebhookSettings(organization_id="org_test", workspace_id="wrkspc_test")
#: the SDK's data type for each webhook event type staffwork sends
SDK_DATA: dict[str, type[BaseModel]] = {
    "session.status_run_started": BetaWebhookSessionStatusRunStartedEventData,
    "session.status_idled": BetaWebhookSessionStatusIdledEventData,
    "session.status_terminated": BetaWebhookSessionStatusTerminatedEventData,
    "session.thread_created": BetaWebhookSessionThreadCreatedEventData,
    "session.thread_idled": BetaWebhookSessionThreadIdledEventData,
    "session.outcome_evaluation_ended": BetaWebhookSessionOutcomeEvaluationEndedEventData,
    "session.requires_action": BetaWebhookSessionRequiresActionEventData,
}
SessionData = (
    BetaWebhookSessionStatusRunStartedEventData
    | BetaWebhookSessionStatusIdledEventData
    | BetaWebhookSessionStatusTerminatedEventData
    | BetaWebhookSessionThreadCreatedEventData
    | BetaWebhookSessionThreadIdledEventData
    | BetaWebhookSessionOutcomeEvaluationEndedEventData
    | BetaWebhookSessionRequiresActionEventData
)
ThreadData = BetaWebhookSessionThreadCreatedEventData | BetaWebhookSessionThreadIdledEventData
THREAD_EVENTS = {"session.thread_created", "session.thread_idled"}


def sdk_event(body: bytes, headers: Mapping[str, str]) -> tuple[BetaWebhookEvent, SessionData]:
    """``body`` as the SDK sees it: verified by ``unwrap()`` (which only constructs, unvalidated),
    and validated in strict mode by the SDK's own model, both the same event; and its data, which
    is one of the session event data types."""
    with Anthropic(api_key="unused", webhook_key=SECRET) as client:
        unwrapped = client.beta.webhooks.unwrap(body.decode(), headers=dict(headers))
    event = BetaWebhookEvent.model_validate_json(body, strict=True)
    assert unwrapped.model_dump() == event.model_dump()
    assert isinstance(event.data, SessionData)
    assert type(event.data) is SDK_DATA[event.data.type]
    return event, event.data


# --- the payload builder -------------------------------------------------------------------------


USAGE = Usage(input_tokens=120, output_tokens=40, cost_usd=0.002)
CASES: list[tuple[WebhookSource, dict[str, Any]]] = [
    (SessionStatusRunning(session_id=SID, time=AT, thread_id="lead", agent="lead"), {}),
    (
        SessionStatusIdle(session_id=SID, time=AT, thread_id="lead", agent="lead", usage=USAGE),
        {"stop_reason": "end_turn", "usage": msgspec.to_builtins(USAGE)},
    ),
    (SessionStatusTerminated(session_id=SID, time=AT, reason="canceled"), {"reason": "canceled"}),
    (
        ThreadCreated(session_id=SID, time=AT, thread_id="thr_logs", agent="logs", task="look"),
        {"agent": "logs"},
    ),
    (
        ThreadStatusIdle(
            session_id=SID, time=AT, thread_id="thr_logs", agent="logs", stop_reason="requires_action"
        ),
        {"agent": "logs", "stop_reason": "requires_action"},
    ),
    (
        OutcomeEvaluationEnd(session_id=SID, time=AT, outcome_id="outc_1", iteration=2, result="satisfied"),
        {"outcome_id": "outc_1", "iteration": 2, "result": "satisfied"},
    ),
    (
        CustomToolUse(
            session_id=SID,
            time=AT,
            thread_id="thr_ops",
            agent="ops",
            tool_use_id="toolu_approve",
            name="approve",
            input={"change": "roll back"},
        ),
        {
            "session_thread_id": "thr_ops",
            "agent": "ops",
            "tool_use_id": "toolu_approve",
            "name": "approve",
            "action": "custom_tool_result",
        },
    ),
    (
        ToolConfirmationRequested(
            session_id=SID,
            time=AT,
            thread_id="thr_ops",
            agent="ops",
            tool_use_id="toolu_rollback",
            name="rollback",
            input={"deploy": "dpl-1"},
            answer_subject=f"sw.s.{SID}.in.confirm.toolu_rollback",
        ),
        {
            "session_thread_id": "thr_ops",
            "agent": "ops",
            "tool_use_id": "toolu_rollback",
            "name": "rollback",
            "action": "tool_confirmation",
            "answer_subject": f"sw.s.{SID}.in.confirm.toolu_rollback",
        },
    ),
]


def test_the_cases_cover_every_event_kind_we_send() -> None:
    assert {type(event) for event, _ in CASES} == set(get_args(WebhookSource))
    assert {webhook_event(event, IDS)[0] for event, _ in CASES} == set(get_args(WebhookEventType))
    assert set(SDK_DATA) == set(get_args(WebhookEventType))


@pytest.mark.parametrize(("event", "details"), CASES, ids=[event_kind(event) for event, _ in CASES])
def test_every_event_kind_is_the_sdks_own_type(event: WebhookSource, details: dict[str, Any]) -> None:
    kind, built = webhook_event(event, IDS)
    event_id = webhook_event_id(event)
    body = payload(event_id, event.time, built)
    parsed, data = sdk_event(body, signed_headers(secret_key(SECRET), event_id, body))
    assert (parsed.type, parsed.id, parsed.created_at) == ("event", event_id, AT)
    assert (data.type, data.id) == (kind, SID)
    assert (data.organization_id, data.workspace_id) == ("org_test", "wrkspc_test")
    thread = data.session_thread_id if isinstance(data, ThreadData) else None
    assert thread == (event.thread_id if kind in THREAD_EVENTS else None)
    assert data.model_extra == {"staffwork": details}  # ours, kept as the SDK's extra field


def test_a_custom_tool_call_is_one_webhook_event_however_often_announced() -> None:
    """A worker that picks a waiting call's thread up again announces the call again (a new trace
    event): the same webhook event id, so receivers, and JetStream's dedup, see one event per call."""
    call = CustomToolUse(
        session_id=SID, thread_id="thr_ops", agent="ops", tool_use_id="toolu_1", name="approve"
    )
    again = msgspec.structs.replace(call, msg_id="msg_again", time=AT)
    assert webhook_event_id(call) == webhook_event_id(again)
    other_call = msgspec.structs.replace(call, tool_use_id="toolu_2")
    other_session = msgspec.structs.replace(call, session_id="ses_other")
    ids = {webhook_event_id(event) for event in (call, other_call, other_session)}
    assert len(ids) == 3
    assert all(event_id.startswith("whevt_") and len(event_id) == 32 for event_id in ids)


def test_the_old_shape_is_not_the_sdks_type() -> None:
    """The check is strict: what we sent before (``thread_id``, no organization or workspace) fails."""
    old = {"type": "session.thread_idled", "id": SID, "thread_id": "thr_logs", "agent": "logs"}
    with pytest.raises(ValidationError, match="session_thread_id"):
        BetaWebhookEvent.model_validate_json(payload("whevt_1", AT, old), strict=True)


def test_the_ids_come_from_the_environment() -> None:
    assert (WebhookSettings().organization_id, WebhookSettings().workspace_id) == ("staffwork", "default")
    env = {"STAFFWORK_ORGANIZATION_ID": " org_1 ", "STAFFWORK_WORKSPACE_ID": "wrkspc_2"}
    settings = WebhookSettings.from_env(env, allow_private=True)
    assert (settings.organization_id, settings.workspace_id, settings.allow_private) == (
        "org_1",
        "wrkspc_2",
        True,
    )
    unset = WebhookSettings.from_env({"STAFFWORK_ORGANIZATION_ID": ""})
    assert (unset.organization_id, unset.workspace_id) == ("staffwork", "default")


async def test_the_test_commands_sample_is_the_sdks_type() -> None:
    async with Receiver() as receiver:
        settings = WebhookSettings(allow_private=True, organization_id="org_t", workspace_id="wrkspc_t")
        await send_test_event(f"{receiver.url}/test", SECRET, settings=settings)
    [request] = receiver.requests
    parsed, data = sdk_event(request.body, request.headers)
    assert isinstance(data, BetaWebhookSessionStatusIdledEventData)
    assert (parsed.id, data.organization_id, data.workspace_id) == (request.id, "org_t", "wrkspc_t")
    assert data.id.startswith("ses_test_")


def test_run_prints_skipped_given_up_and_disabled_once() -> None:
    progress = Progress()
    url = "https://hooks.example.com/x"
    common: dict[str, Any] = {"session_id": SID, "thread_id": "webhooks", "agent": "webhooks", "url": url}
    skipped = WebhookDeliverySkipped(
        **common, event_id="whevt_1", event_type="session.status_idled", reason="why"
    )
    again = WebhookDeliverySkipped(
        **common, event_id="whevt_2", event_type="session.status_idled", reason="why"
    )
    retried = WebhookFailed(
        **common, event_id="e", event_type="session.thread_idled", attempt=1, error="HTTP 500"
    )
    last = msgspec.structs.replace(retried, attempt=20, retry_in_s=None)
    disabled = WebhookEndpointDisabled(**common, reason="20 consecutive failed attempts (the last: HTTP 500)")
    lines = [
        progress.notice(event)
        for event in (skipped, again, msgspec.structs.replace(retried, retry_in_s=1.0), last, disabled)
    ]
    assert lines == [
        f"warning: webhook session.status_idled to {url} skipped: why",
        None,  # the same line once
        None,  # retried: not a notice
        f"warning: webhook session.thread_idled to {url} given up after 20 attempts: HTTP 500",
        f"warning: webhook endpoint {url} disabled: 20 consecutive failed attempts (the last: HTTP 500); "
        "staffwork webhooks enable URL turns it on again",
    ]
    for event in (skipped, disabled):
        progress.apply(event)
    assert progress.threads == {}  # the webhooks actor is no thread of the session


# --- end to end ----------------------------------------------------------------------------------


_trace_event = msgspec.json.Decoder(AnyTraceEvent)


async def trace_events(bus: Bus, session_id: str, kind: str = ">") -> list[AnyTraceEvent]:
    subject = bus.subjects.events(session_id, kind)
    return [_trace_event.decode(m.data) async for m in read_subject(bus, bus.subjects.log_stream, subject)]


async def test_a_real_session_delivers_every_event_kind_as_the_sdks_type(bus: Bus) -> None:
    """One session delegates to a worker, whose custom tool call the test answers when its webhook
    arrives, and is graded (run started, thread created and idled, action required, outcome
    evaluated, session idled); then another fails (terminated). Each delivery, checked by the SDK,
    matches the trace event it announces."""
    ask: tuple[str, str, dict[str, object]] = ("toolu_ask", "approve", {"change": "look at the deploys"})
    model = ScriptedModel(
        {
            "lead": [calls(delegate("toolu_1", "logs", "look")), text("Deploy dpl-48db40 broke payments.")],
            "logs": [calls(ask), text("dpl-48db40 at 14:02")],
        }
    )  # the second session's lead finds no step left: its model call fails for good
    every: list[WebhookEventType] = list(get_args(WebhookEventType))
    outcome = Outcome(checks=[Check(name="names a deploy", kind="matches", pattern=r"dpl-[0-9a-f]{6}")])
    ids: dict[str, Any] = {"organization_id": "org_e2e", "workspace_id": "wrkspc_e2e"}
    settings = WebhookSettings(**(FAST | ids))
    config = RoleConfig(model=model, agents=("logs",), webhooks=settings)
    async with Receiver() as receiver, running(bus, ["lead", "subagent", "grader", "webhooks"], config):
        hook = WebhookSpec(url=f"{receiver.url}/all", events=every, secret=SECRET)
        approve = CustomTool(name="approve", description="Ask the on-call engineer.")
        agents = [AgentSpec(name="logs", custom_tools=[approve])]
        team = TeamSpec(name="graded", lead=AgentSpec(name="lead"), agents=agents, outcome=outcome)
        client = Client(bus)
        graded = await client.submit("What broke payments?", team=team, webhooks=[hook])

        def requires_action() -> list[dict[str, Any]]:
            delivered = [r.payload["data"] for r in receiver.delivered()]
            return [data for data in delivered if data["type"] == "session.requires_action"]

        await receiver.wait_for(lambda: bool(requires_action()), timeout=20)
        [action] = requires_action()
        assert action["id"] == graded
        await client.answer_tool(graded, action["staffwork"]["tool_use_id"], "approved")
        assert (await client.wait(graded, timeout=30)).status == "idle"
        lone = TeamSpec(name="lone", lead=AgentSpec(name="lead"))
        failed = await client.submit("Fail.", team=lone, webhooks=[hook])
        assert (await client.wait(failed, timeout=30)).status != "idle"

        def kinds(session_id: str) -> set[str]:
            delivered = [r.payload["data"] for r in receiver.delivered()]
            return {data["type"] for data in delivered if data["id"] == session_id}

        await receiver.wait_for(
            lambda: (
                kinds(graded) == set(every) - {"session.status_terminated"}
                and "session.status_terminated" in kinds(failed)
            ),
            timeout=20,
        )
        announced = {
            webhook_event_id(event): event
            for session_id in (graded, failed)
            for event in await trace_events(bus, session_id)
            if isinstance(event, WebhookSource)
        }
    model.assert_done()
    seen: set[str] = set()
    for request in receiver.delivered():
        parsed, data = sdk_event(request.body, request.headers)
        source = announced[parsed.id]  # the trace event it announces, by its event id
        assert (data.id, parsed.created_at) == (source.session_id, source.time)
        assert (data.organization_id, data.workspace_id) == ("org_e2e", "wrkspc_e2e")
        assert isinstance(data, ThreadData) == (data.type in THREAD_EVENTS)
        if isinstance(data, ThreadData):
            assert data.session_thread_id == source.thread_id != ""
        if isinstance(source, CustomToolUse):
            assert data.model_extra == {
                "staffwork": {
                    "session_thread_id": source.thread_id,
                    "agent": "logs",
                    "tool_use_id": "toolu_ask",
                    "name": "approve",
                    "action": "custom_tool_result",
                }
            }
        seen.add(data.type)
    assert seen == set(every)


async def test_run_warns_of_a_skipped_webhook_and_tail_and_list_show_it(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    """``staffwork run`` (a real process) without ``--allow-private-webhooks``, its webhook at a
    loopback receiver: nothing is sent, the trace says why, and so do run, tail and webhooks list."""
    on_bus = ("--nats", nats_server.url, "--root", bus.subjects.root)
    async with Receiver() as receiver:
        url = f"{receiver.url}/done"
        team = tmp_path / "team.toml"
        team.write_text(
            'name = "hooked"\n\n[lead]\nname = "lead"\n\n[[webhooks]]\n'
            f'url = "{url}"\nevents = ["session.status_idled"]\nsecret = "{SECRET}"\n'
        )
        code, out, err = await run_cli(
            "run", "--team", str(team), "--json", *on_bus, "Say hello.", home=tmp_path / "home", timeout=120
        )
        assert code == 0, err
        assert receiver.requests == []
    session_id = json.loads(out)["session_id"]
    reason = "refused: loopback address 127.0.0.1 (allow with --allow-private-webhooks)"
    assert f"warning: webhook session.status_idled to {url} skipped: {reason}\n" in err
    [skipped] = await trace_events(bus, session_id, "webhook.delivery_skipped")
    assert isinstance(skipped, WebhookDeliverySkipped)
    assert (skipped.url, skipped.event_type, skipped.reason) == (url, "session.status_idled", reason)

    args = ("--session", session_id, "--kind", "webhook.delivery_skipped", "--since", "1h", "--no-follow")
    code, out, err = await run_cli("tail", *args, *on_bus, home=tmp_path / "home")
    assert code == 0, err
    [line] = out.splitlines()
    assert " webhook.delivery_skipped " in line
    assert line.endswith(f" session.status_idled → {url} skipped: {reason}")

    code, out, err = await run_cli("webhooks", "list", *on_bus, home=tmp_path / "home")
    assert code == 0, err
    assert out.startswith(f"{url}  failures 0  enabled  skipped 1 (the last at ")
    assert out.rstrip().endswith(f": {reason})")
