"""Dreams through the HTTP API, with the official SDK as the client and the dreamer service on the
same bus: a dream over a store with memories and a session run to its end through the API, followed
to ``completed``, its new store read through ``memory_stores`` and ``memories``; a running dream
canceled; the list, archive, unknown ids, bad bodies and another workspace as the SDK types them.

Every answer is validated strictly (``_strict_response_validation`` and ``BetaDream`` in strict
mode): a shape the SDK does not model fails the test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anthropic
import pytest
from anthropic.types.beta import BetaDream

from actors.agent.models.offline import OfflineModel
from actors.agent.models.scripted import ScriptedModel, text
from actors.api.actor import ApiActor
from actors.dreamer.actor import DreamerService
from actors.dreamer.dream import wait_dream
from actors.roles import running_agents
from bus.connection import Bus
from tests.helpers import API_KEY, OTHER_API_KEY, BlockingModel, running_actors

FACTS = "db: pg12\nregion: eu\ndb: pg15\n"


def client(api: ApiActor, key: str = API_KEY) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=api.url, api_key=key, max_retries=0, _strict_response_validation=True
    )


def checked(dream: BetaDream) -> BetaDream:
    """``dream`` as the SDK's model reads it in strict mode (every field it models, typed)."""
    return BetaDream.model_validate_json(dream.to_json(), strict=True)


@asynccontextmanager
async def dreamer(bus: Bus, model: Any) -> AsyncIterator[None]:
    async with running_actors(bus, [DreamerService(model)]):
        yield


async def store_with_memories(sdk: anthropic.AsyncAnthropic) -> str:
    b = sdk.beta
    store = await b.memory_stores.create(name="ops-notes", description="what the team learned")
    await b.memory_stores.memories.create(store.id, path="/facts.md", content=FACTS)
    await b.memory_stores.memories.create(store.id, path="/runbook.md", content="restart api\ncheck disk\n")
    return store.id


async def finished_session(bus: Bus, sdk: anthropic.AsyncAnthropic) -> str:
    """A one-agent session run to its end through the API: its id."""
    b = sdk.beta
    env = await b.environments.create(name="demo")
    agent = await b.agents.create(name="lead", model="claude-sonnet-4-6", system="Find the cause.")
    session = await b.sessions.create(agent=agent.id, environment_id=env.id)
    model = ScriptedModel({"lead": [text("Build 2 failed: the disk was full.")]})
    async with running_agents(bus, model), await b.sessions.events.stream(session.id) as stream:
        message: Any = {"type": "user.message", "content": [{"type": "text", "text": "Why?"}]}
        await b.sessions.events.send(session.id, events=[message])
        async with asyncio.timeout(20):
            async for event in stream:
                if event.type == "session.status_idle":
                    break
    model.assert_done()
    return session.id


async def test_a_dream_over_a_store_and_a_session_completes_into_a_new_store(bus: Bus, api: ApiActor) -> None:
    async with client(api) as sdk, client(api, OTHER_API_KEY) as other, dreamer(bus, OfflineModel()):
        b = sdk.beta
        store_id = await store_with_memories(sdk)
        session_id = await finished_session(bus, sdk)
        inputs: Any = [
            {"type": "memory_store", "memory_store_id": store_id},
            {"type": "sessions", "session_ids": [session_id]},
        ]
        created = checked(
            await b.dreams.create(inputs=inputs, model="claude-sonnet-4-6", instructions="Keep the facts.")
        )
        assert created.id.startswith("drm_")
        assert (created.status, created.outputs, created.session_id) == ("pending", [], None)
        assert (created.model.id, created.model.speed) == ("claude-sonnet-4-6", "standard")
        assert created.output_behavior.type == "create_new"
        assert (created.instructions, created.ended_at, created.error) == ("Keep the facts.", None, None)
        assert [i.type for i in created.inputs] == ["memory_store", "sessions"]

        await wait_dream(bus, created.id, timeout=20)
        done = checked(await b.dreams.retrieve(created.id))
        assert done.status == "completed", done.error
        assert done.ended_at is not None
        assert done.ended_at >= done.created_at
        [output] = done.outputs
        assert output.memory_store_id.startswith("memstore_")
        assert output.memory_store_id != store_id

        new = await b.memory_stores.retrieve(output.memory_store_id)
        assert new.name == f"ops-notes (dream {done.id})"
        assert new.description == "what the team learned"
        assert output.memory_store_id in [s.id async for s in b.memory_stores.list()]
        listed = {m.path: m async for m in b.memory_stores.memories.list(output.memory_store_id)}
        assert sorted(listed) == ["/facts.md", "/lessons.csv", "/lessons.md", "/runbook.md"]
        facts = await b.memory_stores.memories.retrieve(
            listed["/facts.md"].id,  # type: ignore[union-attr]
            memory_store_id=output.memory_store_id,
        )
        assert facts.content == "db: pg15\nregion: eu\n"  # the offline dream: the latest value wins
        before = [m async for m in b.memory_stores.memories.list(store_id)]
        assert len(before) == 2  # the input is never written

        again = checked(await b.dreams.retrieve(created.id))  # the store is recorded once
        assert again.outputs == done.outputs
        assert [d.id async for d in b.dreams.list()] == [created.id]
        assert [d.id async for d in b.dreams.list(statuses=["running", "failed"])] == []
        with pytest.raises(anthropic.BadRequestError, match="is completed: only a pending or running"):
            await b.dreams.cancel(created.id)

        # another workspace sees none of it
        with pytest.raises(anthropic.NotFoundError, match=f"dream {created.id!r} not found"):
            await other.beta.dreams.retrieve(created.id)
        with pytest.raises(anthropic.NotFoundError, match=f"memory store {store_id!r} not found"):
            await other.beta.dreams.create(inputs=inputs, model="claude-sonnet-4-6")
        with pytest.raises(anthropic.NotFoundError):
            await other.beta.memory_stores.retrieve(output.memory_store_id)
        assert [d async for d in other.beta.dreams.list()] == []
        theirs = await other.beta.memory_stores.create(name="theirs")
        mixed: Any = [inputs[1], {"type": "memory_store", "memory_store_id": theirs.id}]
        with pytest.raises(anthropic.NotFoundError, match=f"session {session_id!r} not found"):
            await other.beta.dreams.create(inputs=mixed, model="claude-sonnet-4-6")

        archived = checked(await b.dreams.archive(created.id))
        assert archived.archived_at is not None
        assert [d async for d in b.dreams.list()] == []
        assert [d.id async for d in b.dreams.list(include_archived=True)] == [created.id]
        assert (await b.dreams.archive(created.id)).archived_at == archived.archived_at

    # a dream that is running when it is canceled
    blocking = BlockingModel()
    async with client(api) as sdk, dreamer(bus, blocking):
        b = sdk.beta
        running = await b.dreams.create(inputs=inputs, model={"id": "claude-sonnet-4-6", "speed": "standard"})
        async with asyncio.timeout(10):
            await blocking.called.wait()
        assert (await b.dreams.retrieve(running.id)).status == "running"
        with pytest.raises(anthropic.BadRequestError, match="is running: cancel it before archiving"):
            await b.dreams.archive(running.id)
        canceled = checked(await b.dreams.cancel(running.id))
        assert (canceled.status, canceled.outputs, canceled.error) == ("canceled", [], None)
        assert canceled.ended_at is not None
        assert (await b.dreams.cancel(running.id)).status == "canceled"  # again: unchanged
        newest = [d.id async for d in b.dreams.list(include_archived=True)]
        assert newest == [running.id, created.id]
        assert [d.id async for d in b.dreams.list(statuses=["canceled"], include_archived=True)] == [
            running.id
        ]
        assert [d.id async for d in b.dreams.list(include_archived=True, limit=1)] == newest  # paged


async def test_unknown_ids_and_bad_bodies_are_the_sdks_errors(bus: Bus, api: ApiActor) -> None:
    async with client(api) as sdk:
        b = sdk.beta
        for call in (b.dreams.retrieve, b.dreams.cancel, b.dreams.archive):
            with pytest.raises(anthropic.NotFoundError, match="dream 'drm_nope' not found"):
                await call("drm_nope")
        with pytest.raises(anthropic.NotFoundError, match="not found"):
            await b.dreams.retrieve("a.b>")
        store_id = await store_with_memories(sdk)
        env = await b.environments.create(name="demo")
        agent = await b.agents.create(name="lead", model="claude-sonnet-4-6")
        idle = await b.sessions.create(agent=agent.id, environment_id=env.id)
        store: Any = {"type": "memory_store", "memory_store_id": store_id}
        sessions: Any = {"type": "sessions", "session_ids": [idle.id]}
        model = "claude-sonnet-4-6"

        def ids(*session_ids: str) -> dict[str, Any]:
            return {"inputs": [store, {"type": "sessions", "session_ids": list(session_ids)}], "model": model}

        def given(**fields: Any) -> dict[str, Any]:
            return {"inputs": [store, sessions], "model": model, **fields}

        existing = {"type": "update_existing", "memory_store_id": store_id}
        bad: list[tuple[dict[str, Any], str]] = [
            ({"inputs": [store], "model": model}, "exactly one memory_store entry and one sessions entry"),
            ({"inputs": [store, store, sessions], "model": model}, "not 2 and 1"),
            (ids(), r"length >= 1 - at `\$\.inputs\[1\]\.session_ids`"),
            (ids(*["sesn_x"] * 101), r"length <= 100 - at `\$\.inputs\[1\]\.session_ids`"),
            (ids(idle.id, idle.id), rf"inputs\[1\]\.session_ids names session '{idle.id}' more than once"),
            ({"inputs": [store, {"type": "files"}], "model": model}, r"\$\.inputs\[1\]\.type"),
            ({"inputs": [store, sessions]}, "missing required field `model`"),
            (given(model=""), r"\$\.model"),
            (given(model={"id": model, "speed": "fast"}), "'standard' speed only"),
            (given(instructions="x" * 4097), r"length <= 4096 - at `\$\.instructions`"),
            (given(instructions=""), r"\$\.instructions"),
            (
                given(output_behavior=existing),
                "update_existing is not supported here: a staffwork dream never",
            ),
            (
                given(output_behavior={**existing, "memory_store_id": "memstore_x"}),
                "'memstore_x' must be the memory store in inputs",
            ),
            (given(output_behavior={"type": "overwrite"}), r"\$\.output_behavior\.type"),
            (given(), f"session {idle.id!r} has not started"),
        ]
        for body, message in bad:
            with pytest.raises(anthropic.BadRequestError, match=message):
                await b.dreams.create(**{"model": anthropic.omit, **body})
        unknown: Any = [{"type": "memory_store", "memory_store_id": "memstore_nope"}, sessions]
        with pytest.raises(anthropic.NotFoundError, match="memory store 'memstore_nope' not found"):
            await b.dreams.create(inputs=unknown, model=model)
        unknown = [store, {"type": "sessions", "session_ids": ["sesn_nope"]}]
        with pytest.raises(anthropic.NotFoundError, match="session 'sesn_nope' not found"):
            await b.dreams.create(inputs=unknown, model=model)
        await b.memory_stores.archive(store_id)
        with pytest.raises(anthropic.BadRequestError, match=f"memory store {store_id!r} is archived"):
            await b.dreams.create(inputs=[store, sessions], model=model)
        with pytest.raises(anthropic.BadRequestError, match="statuses"):
            await b.dreams.list(statuses=["sleeping"])  # type: ignore[list-item]
        with pytest.raises(anthropic.BadRequestError, match=r"created_at\[gt\]"):
            await b.dreams.list(created_at_gt="yesterday")
