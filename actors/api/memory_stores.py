"""Memory stores (``/v1/memory_stores``): create, retrieve, update, list, archive, delete, in the shapes
the SDK's ``BetaManagedAgentsMemoryStore`` models; the memories in them are ``actors.api.memories``.

Each API store is a staffwork memory store (``bus/memory.py``) whose name is the store's id
(``memstore_…``, 35 lower-case characters), so an agent that has it attached reads and writes the
same files under ``/memory/<id>/``. The API's own fields (display name, description, metadata,
timestamps) are the record ``<workspace>.memstore.<id>``; the store's description given at creation
is also the staffwork store's (what agents are told), a later update changes only the record.

Deleting a store marks the record deleted (every call then answers 404) and deletes each of its
files (a delete version each), so an agent that still has it attached finds it empty; staffwork
cannot drop a store, so its name stays registered and its old versions stay in the memory stream.
"""

from __future__ import annotations

import weakref
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, UnsetType
from starlette.routing import Route

from actors.api.errors import ApiError, not_found
from actors.api.http import Call, page, route
from actors.api.values import check_metadata, rfc3339_now
from bus.connection import Bus
from bus.errors import MemoryConflict, MemoryFileNotFound
from bus.memory import Memory
from schemas.ids import new_id
from schemas.memory import Writer

KIND = "memstore"
INDEX_KIND = "memindex"  # actors.api.memories: the store's memory ids by path

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=255, pattern=r"^[^\x00-\x1f\x7f]*$")]
Description = Annotated[str, msgspec.Meta(max_length=1024)]

_memories: weakref.WeakKeyDictionary[Bus, Memory] = weakref.WeakKeyDictionary()


def memory(bus: Bus) -> Memory:
    """The bus's :class:`Memory` (one per bus: it caches the stores it has seen)."""
    if (found := _memories.get(bus)) is None:
        found = _memories[bus] = Memory(bus)
    return found


def writer(call: Call) -> Writer:
    """Who a change made through the API is recorded as in the store's versions."""
    return Writer(kind="user", user=f"api:{call.workspace}")


class StoreRecord(msgspec.Struct, kw_only=True):
    """The record of one store; ``deleted_at`` set: it answers 404."""

    id: str
    name: str
    description: str = ""
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    created_at: str
    updated_at: str
    archived_at: str | None = None
    deleted_at: str | None = None

    def out(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "memory_store",
            "name": self.name,
            "description": self.description,
            "metadata": self.metadata,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "archived_at": self.archived_at,
        }


async def get_store(call: Call, store_id: str, *, writable: bool = False) -> StoreRecord:
    """The workspace's store ``store_id`` (404 otherwise, also for another workspace's); with
    ``writable``, a 409 if it is archived."""
    found = await call.records.get(call.workspace, KIND, store_id, StoreRecord)
    if found is None or found[0].deleted_at is not None:
        raise not_found("memory store", store_id)
    if writable and found[0].archived_at is not None:
        raise ApiError(
            409, f"memory store {store_id!r} is archived: its memories can be read and deleted only"
        )
    return found[0]


class _Create(msgspec.Struct, frozen=True, kw_only=True):
    name: Name
    description: Description | None = None
    metadata: dict[str, str] | None = None


class _Update(msgspec.Struct, frozen=True, kw_only=True):
    name: Name | UnsetType | None = UNSET
    description: Description | UnsetType | None = UNSET
    metadata: dict[str, str | None] | UnsetType | None = UNSET


async def create(call: Call) -> object:
    body = await call.body(_Create)
    now = rfc3339_now()
    record = StoreRecord(
        id=new_id("memstore"),
        name=body.name,
        description=body.description or "",
        metadata=check_metadata(body.metadata or {}),
        created_at=now,
        updated_at=now,
    )
    await memory(call.bus).create(record.id, record.description)
    if not await call.records.create(call.workspace, KIND, record.id, record):
        raise ApiError(500, f"memory store id {record.id!r} is taken")  # a fresh id: never
    return record.out()


async def retrieve(call: Call) -> object:
    return (await get_store(call, call.path("memory_store_id"))).out()


async def update(call: Call) -> object:
    store_id = call.path("memory_store_id")
    body = await call.body(_Update)
    for _ in range(10):  # compare-and-set on the record: retry when another request changed it
        found = await call.records.get(call.workspace, KIND, store_id, StoreRecord)
        if found is None or found[0].deleted_at is not None:
            raise not_found("memory store", store_id)
        record, revision = found
        if record.archived_at is not None:
            raise ApiError(409, f"memory store {store_id!r} is archived: it cannot be updated")
        if isinstance(body.name, str):
            record.name = body.name
        if not isinstance(body.description, UnsetType):
            record.description = body.description or ""
        if isinstance(body.metadata, dict):
            merged = dict(record.metadata)
            for key, value in body.metadata.items():
                if value is None:
                    merged.pop(key, None)
                else:
                    merged[key] = value
            record.metadata = check_metadata(merged)
        record.updated_at = rfc3339_now()
        if await call.records.update(call.workspace, KIND, store_id, record, revision):
            return record.out()
    raise ApiError(503, f"memory store {store_id!r} is changing too often to update; try again")


async def _set(call: Call, field: Literal["archived_at", "deleted_at"]) -> StoreRecord:
    """Set ``field`` to now (once: archiving an archived store changes nothing)."""
    store_id = call.path("memory_store_id")
    for _ in range(10):
        found = await call.records.get(call.workspace, KIND, store_id, StoreRecord)
        if found is None or found[0].deleted_at is not None:
            raise not_found("memory store", store_id)
        record, revision = found
        if getattr(record, field) is not None:
            return record
        setattr(record, field, rfc3339_now())
        if field == "archived_at":
            record.updated_at = record.archived_at or record.updated_at
        if await call.records.update(call.workspace, KIND, store_id, record, revision):
            return record
    raise ApiError(503, f"memory store {store_id!r} is changing too often; try again")


async def archive(call: Call) -> object:
    return (await _set(call, "archived_at")).out()


async def delete(call: Call) -> object:
    record = await _set(call, "deleted_at")
    store = memory(call.bus)
    for version in await store.list(record.id):
        try:
            await store.delete(record.id, version.path, writer=writer(call))
        except (MemoryFileNotFound, MemoryConflict):
            continue  # deleted meanwhile, or written after the list: the next delete gets it
    return {"id": record.id, "type": "memory_store_deleted"}


async def list_stores(call: Call) -> object:
    """Newest first; archived stores only with ``include_archived=true``."""
    archived = call.query_bool("include_archived")
    since, until = call.query_time("created_at[gte]"), call.query_time("created_at[lte]")
    shown = []
    for record in await call.records.list(call.workspace, KIND, StoreRecord):
        created = datetime.fromisoformat(record.created_at)
        if record.deleted_at is not None or (record.archived_at is not None and not archived):
            continue
        if (since and created < since) or (until and created > until):
            continue
        shown.append(record)
    shown.sort(key=lambda record: record.id, reverse=True)  # ids sort by creation time
    return page(call, [record.out() for record in shown])


routes: list[Route] = [
    route("/v1/memory_stores", create, "POST"),
    route("/v1/memory_stores", list_stores),
    route("/v1/memory_stores/{memory_store_id}", retrieve),
    route("/v1/memory_stores/{memory_store_id}", update, "POST"),
    route("/v1/memory_stores/{memory_store_id}", delete, "DELETE"),
    route("/v1/memory_stores/{memory_store_id}/archive", archive, "POST"),
]
