"""Memory stores and memories through the HTTP API, with the official ``anthropic`` SDK as the client:
the hosted service's program flow (preconditions, path conflicts, renames, prefixes, pages), the
SDK's error types, workspaces, races, and the same files as an agent sees them through ``Memory``."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import pytest
from anthropic.types.beta import BetaManagedAgentsMemoryStore
from anthropic.types.beta.memory_stores import BetaManagedAgentsMemory, BetaManagedAgentsMemoryPrefix

from actors.api.actor import ApiActor
from bus.connection import Bus
from bus.memory import Memory, sha256_hex
from schemas.memory import Writer
from tests.helpers import OTHER_API_KEY, api_client

AGENT = Writer(kind="session", session_id="ses_1", thread_id="th_1", agent="notes")


def strict_memory(raw: str) -> BetaManagedAgentsMemory:
    """The SDK's model, strictly: a missing or mistyped non-optional field fails."""
    return BetaManagedAgentsMemory.model_validate_json(raw, strict=True)


async def new_store(sdk: anthropic.AsyncAnthropic, name: str = "team-notes") -> BetaManagedAgentsMemoryStore:
    raw = await sdk.beta.memory_stores.with_raw_response.create(name=name, description="Findings")
    return BetaManagedAgentsMemoryStore.model_validate_json(raw.http_response.text, strict=True)


async def put(
    sdk: anthropic.AsyncAnthropic, store_id: str, path: str, content: str
) -> BetaManagedAgentsMemory:
    raw = await sdk.beta.memory_stores.memories.with_raw_response.create(store_id, path=path, content=content)
    return strict_memory(raw.http_response.text)


async def test_the_hosted_program_flow(api: ApiActor, sdk: anthropic.AsyncAnthropic) -> None:
    memories = sdk.beta.memory_stores.memories
    store = await new_store(sdk)
    assert (store.id[:9], store.description, store.archived_at) == ("memstore_", "Findings", None)

    mem = await put(sdk, store.id, "/style.md", "Cite a log line.")
    assert (mem.id[:4], mem.memory_store_id, mem.path) == ("mem_", store.id, "/style.md")
    assert mem.content is None  # view=basic is the default on create
    assert mem.content_sha256 == hashlib.sha256(b"Cite a log line.").hexdigest()
    assert (mem.content_size_bytes, mem.memory_version_id[:7]) == (16, "memver_")

    raw = await memories.with_raw_response.update(
        mem.id,
        memory_store_id=store.id,
        content="Cite one log line per claim.",
        precondition={"type": "content_sha256", "content_sha256": mem.content_sha256},
    )
    updated = strict_memory(raw.http_response.text)
    assert (updated.id, updated.path, updated.created_at) == (mem.id, mem.path, mem.created_at)
    assert updated.content_sha256 == sha256_hex("Cite one log line per claim.")
    assert updated.memory_version_id != mem.memory_version_id

    # A stale precondition: a 409 the SDK does not retry, even a client that retries.
    requests: list[str] = []

    async def count(request: Any) -> None:
        requests.append(f"{request.method} {request.url.path}")

    http = anthropic.DefaultAsyncHttpxClient(event_hooks={"request": [count]})
    async with anthropic.AsyncAnthropic(
        base_url=api.url, api_key=sdk.api_key, max_retries=2, http_client=http
    ) as retrying:
        with pytest.raises(anthropic.ConflictError, match="the precondition failed") as caught:
            await retrying.beta.memory_stores.memories.update(
                mem.id,
                memory_store_id=store.id,
                content="lost",
                precondition={"type": "content_sha256", "content_sha256": mem.content_sha256},
            )
    assert (caught.value.status_code, len(requests)) == (409, 1)
    assert caught.value.body["error"]["type"] == "memory_precondition_failed_error"  # type: ignore[index]
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert updated.content_sha256 in str(caught.value)  # what the memory is now, and what was expected
    assert mem.content_sha256 in str(caught.value)

    other = await put(sdk, store.id, "/notes/other.md", "x")
    with pytest.raises(anthropic.ConflictError, match=r"'/style\.md'") as caught:
        await memories.create(store.id, path="/style.md", content="again")
    assert caught.value.body["error"]["type"] == "memory_path_conflict_error"  # type: ignore[index]
    assert caught.value.response.headers["x-should-retry"] == "false"
    with pytest.raises(anthropic.ConflictError, match=r"'/notes/other\.md'") as caught:
        await memories.update(mem.id, memory_store_id=store.id, path="/notes/other.md")
    assert caught.value.body["error"]["type"] == "memory_path_conflict_error"  # type: ignore[index]

    renamed = await memories.update(mem.id, memory_store_id=store.id, path="/guides/style.md", view="full")
    assert (renamed.id, renamed.path, renamed.content) == (
        mem.id,
        "/guides/style.md",
        "Cite one log line per claim.",
    )
    assert (await memories.retrieve(mem.id, memory_store_id=store.id)).path == "/guides/style.md"
    assert [m.path async for m in memories.list(store.id)] == ["/guides/style.md", "/notes/other.md"]
    assert [m.id async for m in memories.list(store.id) if isinstance(m, BetaManagedAgentsMemory)] == [
        mem.id,
        other.id,
    ]

    with pytest.raises(anthropic.ConflictError) as caught:
        await memories.delete(mem.id, memory_store_id=store.id, expected_content_sha256=mem.content_sha256)
    assert caught.value.body["error"]["type"] == "memory_precondition_failed_error"  # type: ignore[index]
    deleted = await memories.delete(
        mem.id, memory_store_id=store.id, expected_content_sha256=renamed.content_sha256
    )
    assert (deleted.id, deleted.type) == (mem.id, "memory_deleted")
    with pytest.raises(anthropic.NotFoundError, match=mem.id):
        await memories.retrieve(mem.id, memory_store_id=store.id)
    assert [m.path async for m in memories.list(store.id)] == ["/notes/other.md"]


async def test_lists_by_prefix_and_depth_over_pages(sdk: anthropic.AsyncAnthropic) -> None:
    memories = sdk.beta.memory_stores.memories
    store = await new_store(sdk)
    paths = ["/a.md", "/notes/x.md", "/notes/y.md", "/notes/deep/z.md", "/notes-archive/q.md", "/b/c/d.md"]
    for path in paths:
        await put(sdk, store.id, path, f"content of {path}")

    assert [m.path async for m in memories.list(store.id)] == sorted(paths)
    notes = [m.path async for m in memories.list(store.id, path_prefix="/notes/")]
    assert notes == ["/notes/deep/z.md", "/notes/x.md", "/notes/y.md"]  # whole segments: not notes-archive

    raw = await memories.with_raw_response.list(store.id, path_prefix="/", depth=1)
    body = raw.http_response.json()
    for item in body["data"]:
        if item["type"] == "memory_prefix":
            BetaManagedAgentsMemoryPrefix.model_validate_json(json.dumps(item), strict=True)
        else:
            strict_memory(json.dumps(item))
    top = [(m.type, m.path) async for m in memories.list(store.id, depth=1)]
    assert top == [
        ("memory", "/a.md"),
        ("memory_prefix", "/b/"),
        ("memory_prefix", "/notes-archive/"),
        ("memory_prefix", "/notes/"),
    ]
    inside = [(m.type, m.path) async for m in memories.list(store.id, path_prefix="/notes/", depth=1)]
    assert inside == [("memory_prefix", "/notes/deep/"), ("memory", "/notes/x.md"), ("memory", "/notes/y.md")]

    first = await memories.list(store.id, limit=4)
    assert len(first.data) == 4
    assert first.next_page
    assert [m.path async for m in memories.list(store.id, limit=4)] == sorted(paths)  # both pages
    full = [m async for m in memories.list(store.id, limit=2, view="full")]
    assert [(m.path, m.content) for m in full if m.type == "memory"] == [
        (p, f"content of {p}") for p in sorted(paths)
    ]
    basic = [m async for m in memories.list(store.id)]
    assert all(m.type == "memory" and m.content is None for m in basic)
    with pytest.raises(anthropic.BadRequestError, match="limit=21 is out of range"):
        await memories.list(store.id, limit=21, view="full")


async def test_view_basic_and_full(sdk: anthropic.AsyncAnthropic) -> None:
    memories = sdk.beta.memory_stores.memories
    store = await new_store(sdk)
    created = await memories.create(store.id, path="/a.md", content="ünïcode ✓", view="full")
    assert (created.content, created.content_size_bytes) == ("ünïcode ✓", len("ünïcode ✓".encode()))
    raw = await memories.with_raw_response.retrieve(created.id, memory_store_id=store.id)
    assert strict_memory(raw.http_response.text).content == "ünïcode ✓"  # full on retrieve
    basic = await memories.retrieve(created.id, memory_store_id=store.id, view="basic")
    assert (basic.content, basic.content_sha256) == (None, sha256_hex("ünïcode ✓"))
    updated = await memories.update(created.id, memory_store_id=store.id, content="b")
    assert updated.content is None  # basic on update
    with pytest.raises(anthropic.BadRequestError, match="view='everything'"):
        await memories.retrieve(created.id, memory_store_id=store.id, extra_query={"view": "everything"})


async def test_memory_stores(bus: Bus, sdk: anthropic.AsyncAnthropic) -> None:
    stores = sdk.beta.memory_stores
    first = await stores.create(name="first", metadata={"owner": "ops", "tier": "1"})
    second = await stores.create(name="second", description="Shared findings")
    assert (await stores.retrieve(first.id)).metadata == {"owner": "ops", "tier": "1"}
    assert (await Memory(bus).info(second.id)).description == "Shared findings"  # the staffwork store

    raw = await stores.with_raw_response.update(
        first.id, name="First", description="", metadata={"tier": None, "team": "sre"}
    )
    changed = BetaManagedAgentsMemoryStore.model_validate_json(raw.http_response.text, strict=True)
    assert (changed.name, changed.description, changed.metadata) == (
        "First",
        "",
        {"owner": "ops", "team": "sre"},
    )
    assert changed.updated_at > changed.created_at
    assert [s.id async for s in stores.list()] == [second.id, first.id]  # newest first
    assert second.id in [s.id async for s in stores.list(created_at_gte=second.created_at)]
    assert [s.id async for s in stores.list(created_at_lte="2000-01-01T00:00:00Z")] == []

    await put(sdk, first.id, "/kept.md", "kept")
    archived = await stores.archive(first.id)
    assert archived.archived_at is not None
    assert (await stores.archive(first.id)).archived_at == archived.archived_at  # once
    assert [s.id async for s in stores.list()] == [second.id]
    assert [s.id async for s in stores.list(include_archived=True)] == [second.id, first.id]
    with pytest.raises(anthropic.ConflictError, match="is archived"):
        await stores.memories.create(first.id, path="/new.md", content="x")
    with pytest.raises(anthropic.ConflictError, match="is archived"):
        await stores.update(first.id, name="again")
    assert [m.path async for m in stores.memories.list(first.id)] == ["/kept.md"]  # still readable

    deleted = await stores.delete(first.id)
    assert (deleted.id, deleted.type) == (first.id, "memory_store_deleted")
    for call in (
        lambda: stores.retrieve(first.id),
        lambda: stores.delete(first.id),
        lambda: stores.memories.list(first.id),
    ):
        with pytest.raises(anthropic.NotFoundError, match=first.id):
            await call()
    assert [s.id async for s in stores.list(include_archived=True)] == [second.id]
    assert await Memory(bus).list(first.id) == []  # an agent with it attached finds it empty


async def test_unknown_ids_are_not_found(sdk: anthropic.AsyncAnthropic) -> None:
    stores, memories = sdk.beta.memory_stores, sdk.beta.memory_stores.memories
    store = await new_store(sdk)
    for call in (
        lambda: stores.retrieve("memstore_nope"),
        lambda: stores.update("memstore_nope", name="x"),
        lambda: stores.archive("memstore_nope"),
        lambda: memories.create("memstore_nope", path="/a.md", content="x"),
        lambda: memories.retrieve("mem_x", memory_store_id="memstore_nope"),
    ):
        with pytest.raises(anthropic.NotFoundError, match="memory store 'memstore_nope' not found"):
            await call()
    calls: tuple[Callable[[], Awaitable[object]], ...] = (
        lambda: memories.retrieve("mem_nope", memory_store_id=store.id),
        lambda: memories.update("mem_nope", memory_store_id=store.id, content="x"),
        lambda: memories.delete("mem_nope", memory_store_id=store.id),
    )
    for request in calls:
        with pytest.raises(anthropic.NotFoundError, match="memory 'mem_nope' not found") as caught:
            await request()
        assert caught.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("notes/a.md", "path 'notes/a.md' must start with '/'"),
        ("/a/../b.md", "path '/a/../b.md' has a '.' or '..' segment"),
        ("/a//b.md", "has an empty segment"),
        ("/dir/", "has an empty segment"),
        ("/" + "/".join("s" * 21), "has 21 segments, over 20"),
        ("/" + "x" * 1100, "bytes, over 1024"),
        ("/tab\there.md", "contains the character U+0009"),
        ("/zero\u200bwidth.md", "contains the character U+200B"),
        ("/cafe\u0301.md", "is not in Unicode Normalization Form C"),
    ],
)
async def test_invalid_paths_are_bad_requests(sdk: anthropic.AsyncAnthropic, path: str, message: str) -> None:
    store = await new_store(sdk)
    with pytest.raises(anthropic.BadRequestError, match=re.escape(message)):
        await sdk.beta.memory_stores.memories.create(store.id, path=path, content="x")


async def test_bad_bodies_are_bad_requests_naming_the_field(sdk: anthropic.AsyncAnthropic) -> None:
    stores, memories = sdk.beta.memory_stores, sdk.beta.memory_stores.memories
    store = await new_store(sdk)
    mem = await put(sdk, store.id, "/a.md", "a")
    cases: list[tuple[Callable[[], Awaitable[object]], str]] = [
        (lambda: stores.create(name=""), r"\$\.name"),
        (lambda: stores.create(name=7), r"Expected `str`, got `int` - at `\$\.name`"),  # type: ignore[arg-type]
        (lambda: stores.create(name="x", metadata={str(n): "v" for n in range(17)}), "17 keys, over the 16"),
        (lambda: stores.create(name="x", description="d" * 1025), r"\$\.description"),
        (lambda: memories.create(store.id, path="/b.md", content=None), "content must be a string"),
        (
            lambda: memories.create(store.id, path="/b.md", content="x" * 102_401),
            "102,401 bytes, over the 102,400",
        ),
        (lambda: memories.create(store.id, path=3, content="x"), r"\$\.path"),  # type: ignore[arg-type]
        (
            lambda: memories.update(
                mem.id,
                memory_store_id=store.id,
                precondition={"type": "content_sha256", "content_sha256": "abc"},
            ),
            "precondition.content_sha256 'abc' is not a sha256",
        ),
        (
            lambda: memories.update(
                mem.id,
                memory_store_id=store.id,
                precondition={"type": "etag", "content_sha256": "a"},  # type: ignore[arg-type]
            ),
            r"\$\.precondition",
        ),
        (
            lambda: memories.update(mem.id, memory_store_id=store.id, path="rel.md"),
            "path 'rel.md' must start with '/'",
        ),
        (
            lambda: memories.delete(mem.id, memory_store_id=store.id, expected_content_sha256="zz"),
            "'zz' is not a sha256",
        ),
        (lambda: memories.list(store.id, path_prefix="/notes"), "path_prefix='/notes' must end with '/'"),
        (lambda: memories.list(store.id, depth=-1), "depth=-1 is negative"),
    ]
    for call, message in cases:
        with pytest.raises(anthropic.BadRequestError, match=message) as caught:
            await call()
        assert caught.value.body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
        assert "\n" not in caught.value.body["error"]["message"]  # type: ignore[index]


async def test_workspaces_are_isolated(api: ApiActor, sdk: anthropic.AsyncAnthropic) -> None:
    store = await new_store(sdk)
    mem = await put(sdk, store.id, "/secret.md", "acme only")
    async with api_client(api, OTHER_API_KEY) as globex:
        assert [s.id async for s in globex.beta.memory_stores.list(include_archived=True)] == []
        for call in (
            lambda: globex.beta.memory_stores.retrieve(store.id),
            lambda: globex.beta.memory_stores.delete(store.id),
            lambda: globex.beta.memory_stores.memories.list(store.id),
            lambda: globex.beta.memory_stores.memories.retrieve(mem.id, memory_store_id=store.id),
            lambda: globex.beta.memory_stores.memories.delete(mem.id, memory_store_id=store.id),
            lambda: globex.beta.memory_stores.memories.create(store.id, path="/x.md", content="x"),
        ):
            with pytest.raises(anthropic.NotFoundError, match=store.id):
                await call()
    assert (
        await sdk.beta.memory_stores.memories.retrieve(mem.id, memory_store_id=store.id)
    ).content == "acme only"


async def test_the_api_and_agents_share_the_files(bus: Bus, sdk: anthropic.AsyncAnthropic) -> None:
    memories = sdk.beta.memory_stores.memories
    store = await new_store(sdk)
    mem = await memories.create(store.id, path="/notes/findings.md", content="Build 2: disk full ✓")
    agents = Memory(bus)
    file = await agents.read(store.id, "notes/findings.md")  # what read_file of /memory/<id>/... gives
    assert file.content == "Build 2: disk full ✓"
    assert file.sha256 == mem.content_sha256 == sha256_hex(file.content)
    assert (file.size, f"memver_{file.version}") == (mem.content_size_bytes, mem.memory_version_id)
    assert file.writer == Writer(kind="user", user="api:acme")

    # An agent's write is the memory's next version; its own file gets an id the API keeps on rename.
    await agents.write(
        store.id, "notes/findings.md", "Build 2: disk full", writer=AGENT, expected_sha256=file.sha256
    )
    seen = await memories.retrieve(mem.id, memory_store_id=store.id)
    assert (seen.content, seen.id) == ("Build 2: disk full", mem.id)
    await agents.write(store.id, "agent/todo.md", "check build 3", writer=AGENT)
    listed = {m.path: m.id async for m in memories.list(store.id) if isinstance(m, BetaManagedAgentsMemory)}
    assert set(listed) == {"/agent/todo.md", "/notes/findings.md"}
    todo = listed["/agent/todo.md"]
    assert todo.startswith("mem_")
    assert {m.id async for m in memories.list(store.id) if isinstance(m, BetaManagedAgentsMemory)} == set(
        listed.values()
    )  # the same id each time
    moved = await memories.update(todo, memory_store_id=store.id, path="/done/todo.md")
    assert moved.id == todo
    assert (await memories.retrieve(todo, memory_store_id=store.id)).content == "check build 3"
    assert [v.path for v in await agents.list(store.id)] == ["done/todo.md", "notes/findings.md"]
    await memories.delete(mem.id, memory_store_id=store.id)
    assert [v.path for v in await agents.list(store.id)] == ["done/todo.md"]


async def test_racing_writers_keep_one_answer(bus: Bus, sdk: anthropic.AsyncAnthropic) -> None:
    memories = sdk.beta.memory_stores.memories
    store = await new_store(sdk)

    created = await asyncio.gather(
        *(memories.create(store.id, path="/same.md", content=f"writer {n}") for n in range(4)),
        return_exceptions=True,
    )
    winners = [c for c in created if isinstance(c, BetaManagedAgentsMemory)]
    assert len(winners) == 1
    assert all(isinstance(c, anthropic.ConflictError) for c in created if c is not winners[0])
    assert (await memories.retrieve(winners[0].id, memory_store_id=store.id)).path == "/same.md"

    mem = winners[0]
    renames = await asyncio.gather(
        *(memories.update(mem.id, memory_store_id=store.id, path=f"/moved-{n}.md") for n in range(4))
    )
    final = await memories.retrieve(mem.id, memory_store_id=store.id)
    assert final.path in {r.path for r in renames}
    assert final.content == mem_content(winners[0], created)
    assert [v.path for v in await Memory(bus).list(store.id)] == [final.path[1:]]  # no copy left behind
    assert [m.id async for m in memories.list(store.id) if isinstance(m, BetaManagedAgentsMemory)] == [mem.id]

    precondition = {"type": "content_sha256", "content_sha256": final.content_sha256}
    updates = await asyncio.gather(
        *(
            memories.update(mem.id, memory_store_id=store.id, content=f"v{n}", precondition=precondition)  # type: ignore[arg-type]
            for n in range(4)
        ),
        return_exceptions=True,
    )
    assert sum(isinstance(u, BetaManagedAgentsMemory) for u in updates) == 1
    assert all(
        u.body["error"]["type"] == "memory_precondition_failed_error"  # type: ignore[index]
        for u in updates
        if isinstance(u, anthropic.ConflictError)
    )


def mem_content(winner: BetaManagedAgentsMemory, created: list[Any]) -> str:
    """The content the winning create wrote (``writer N``, N its position)."""
    return f"writer {created.index(winner)}"


async def test_an_update_racing_a_rename_is_kept(bus: Bus, sdk: anthropic.AsyncAnthropic) -> None:
    memories = sdk.beta.memory_stores.memories
    store = await new_store(sdk)
    mem = await put(sdk, store.id, "/r0.md", "v0")
    for n in range(1, 6):
        await asyncio.gather(
            memories.update(mem.id, memory_store_id=store.id, content=f"v{n}"),
            memories.update(mem.id, memory_store_id=store.id, path=f"/r{n}.md"),
        )
        now = await memories.retrieve(mem.id, memory_store_id=store.id)
        assert (now.path, now.content) == (f"/r{n}.md", f"v{n}")
        assert [v.path for v in await Memory(bus).list(store.id)] == [f"r{n}.md"]
