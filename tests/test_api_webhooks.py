"""A workspace's webhooks (``STAFFWORK_API_WEBHOOKS``) carry the ids the HTTP API returns, so a
webhook handler fetches the session and its thread through the API with the SDK; another workspace's
sessions are not announced there; a configuration typo is one clear line."""

from __future__ import annotations

from typing import Any

import anthropic
import pytest

from actors.agent.models.scripted import ScriptedModel, text
from actors.api.actor import ApiActor
from actors.api.auth import WEBHOOK_SECRET_ENV, ApiKeys
from actors.roles import RoleConfig, running
from actors.webhooks.actor import WebhookSettings
from bus.connection import Bus
from bus.errors import ConfigError
from tests.helpers import API_KEY, OTHER_API_KEY, api_client, fan_out_lead
from tests.test_api_sessions import coordinator, specialist
from tests.test_webhook_sdk import sdk_event
from tests.test_webhooks import FAST, SECRET, Receiver

MESSAGE: Any = [{"type": "user.message", "content": [{"type": "text", "text": "Why did build 2 fail?"}]}]


async def test_webhooks_carry_the_api_ids_and_the_workspace(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, SECRET)  # the webhooks actor's: it signs with it
    model = ScriptedModel(responder=specialist)
    for _ in range(2):  # one session per workspace
        model.add("lead", *fan_out_lead(["log-reader"]), text("build 2 failed at line 3"))
    fast: dict[str, Any] = dict(FAST)
    config = RoleConfig(model=model, agents=("log-reader",), webhooks=WebhookSettings(**fast))
    async with Receiver() as receiver, running(bus, ["lead", "subagent", "webhooks"], config):
        keys = ApiKeys.parse(f"acme={API_KEY},globex={OTHER_API_KEY}")
        api = ApiActor(keys.with_webhooks(f"acme={receiver.url}/acme"), port=0)
        await api.on_start(bus)
        try:
            async with api_client(api) as acme, api_client(api, key=OTHER_API_KEY) as globex:
                env_id, agent_id = await coordinator(acme)
                session = await acme.beta.sessions.create(agent=agent_id, environment_id=env_id)
                await acme.beta.sessions.events.send(session.id, events=MESSAGE)
                other_env, other_agent = await coordinator(globex)
                other = await globex.beta.sessions.create(agent=other_agent, environment_id=other_env)
                await globex.beta.sessions.events.send(other.id, events=MESSAGE)

                def kinds() -> set[str]:
                    return {r.payload["data"]["type"] for r in receiver.delivered()}

                await receiver.wait_for(
                    lambda: {"session.status_idled", "session.thread_created"} <= kinds(), 20
                )
                for request in receiver.delivered():  # the handler: verify, then fetch through the API
                    _, data = sdk_event(request.body, request.headers)
                    assert (data.id, data.workspace_id) == (session.id, "acme")
                    fetched = await acme.beta.sessions.retrieve(data.id)
                    assert fetched.id == session.id
                    if data.type == "session.thread_created":
                        thread = await acme.beta.sessions.threads.retrieve(
                            data.session_thread_id, session_id=data.id
                        )
                        assert getattr(thread.agent, "name", None) == "log-reader"
                with pytest.raises(anthropic.NotFoundError):  # the id is the API's, and acme's alone
                    await globex.beta.sessions.retrieve(session.id)
                assert (await globex.beta.sessions.retrieve(other.id)).id == other.id
        finally:
            await api.on_stop()


def test_a_webhook_entry_for_no_workspace_or_no_url_is_one_clear_line() -> None:
    keys = ApiKeys.parse(f"acme={API_KEY}")
    with pytest.raises(ConfigError, match="entry 2: no API key has the workspace 'acmee'"):
        keys.with_webhooks("acme=https://hooks.example/a,acmee=https://hooks.example/b")
    with pytest.raises(ConfigError, match="entry 1 is not WORKSPACE=URL"):
        keys.with_webhooks("https://hooks.example/a")
    with pytest.raises(ConfigError, match="entry 1: webhook url 'ftp://x' must be an http"):
        keys.with_webhooks("acme=ftp://x")
    two = keys.with_webhooks("acme=https://hooks.example/a?x=1,acme=https://hooks.example/b")
    assert [spec.url for spec in two.webhooks["acme"]] == [
        "https://hooks.example/a?x=1",
        "https://hooks.example/b",
    ]
