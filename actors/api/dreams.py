"""Dreams (``/v1/dreams``): create, retrieve, list, cancel, archive, in the shapes the SDK's
``BetaDream`` models.

An API dream is a staffwork dream of the same id (``drm_…``, ``actors/dreamer``), started through
the dreamer service (``<root>.api.dream``) over the workspace's memory store and the API sessions
named in ``inputs`` (each a staffwork session of the same id, so it must have started), and the
record ``<workspace>.dream.<id>`` (what the request gave, ``archived_at``). Its status, end and
usage are the dreamer's record's. The result goes to a new staffwork store named by a fresh
``memstore_…`` id; the first request that sees the dream ``completed`` records that store for the
workspace (``actors.api.memory_stores``) before showing it in ``outputs``, so ``memory_stores`` and
``memories`` work on it.

Refused with a 400 that says so: ``update_existing`` (a staffwork dream never writes the store it
reads), a ``fast`` model, a session that has not started. A dream runs as no session: ``session_id``
is null.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
from starlette.routing import Route

from actors.api.errors import ApiError, bad_request, not_found
from actors.api.http import Call, page, route
from actors.api.memory_stores import KIND as STORE_KIND
from actors.api.memory_stores import StoreRecord, get_store
from actors.api.session_records import load_session
from actors.api.values import rfc3339, rfc3339_now
from actors.dreamer.actor import request_dream
from actors.dreamer.dream import DreamBook, cancel_dream, wait_dream
from actors.dreamer.sessions import DreamError
from bus.errors import BusTimeout
from schemas.base import Usage
from schemas.dream import DREAM_FINAL, MAX_DREAM_SESSIONS, DreamRecord, DreamRequest
from schemas.ids import new_id

KIND = "dream"
STATUSES = ("pending", "running", "completed", "failed", "canceled")
#: how long a cancel that came too late (the dream is writing) waits for the dream to end
CANCEL_WAIT = 10.0

# --- request bodies -------------------------------------------------------------------------------


class _StoreInput(msgspec.Struct, frozen=True, tag="memory_store", tag_field="type"):
    memory_store_id: str


class _SessionsInput(msgspec.Struct, frozen=True, tag="sessions", tag_field="type"):
    session_ids: Annotated[list[str], msgspec.Meta(min_length=1, max_length=MAX_DREAM_SESSIONS)]


ModelId = Annotated[str, msgspec.Meta(min_length=1, max_length=256)]


class _Model(msgspec.Struct, frozen=True, kw_only=True):
    id: ModelId
    speed: Literal["standard", "fast"] | None = None


class _CreateNew(msgspec.Struct, frozen=True, tag="create_new", tag_field="type"):
    pass


class _UpdateExisting(msgspec.Struct, frozen=True, tag="update_existing", tag_field="type"):
    memory_store_id: str


class _Create(msgspec.Struct, frozen=True, kw_only=True):
    inputs: list[_StoreInput | _SessionsInput]
    model: ModelId | _Model
    instructions: Annotated[str, msgspec.Meta(min_length=1, max_length=4096)] | None = None
    output_behavior: _CreateNew | _UpdateExisting | None = None


# --- the record and the shown dream ---------------------------------------------------------------


class ApiDream(msgspec.Struct, kw_only=True):
    """The record of one API dream: what the request gave."""

    id: str
    memory_store_id: str
    session_ids: list[str]  # sorted, as shown
    model: str
    instructions: str | None = None
    created_at: str
    archived_at: str | None = None


def _time(when: float) -> str | None:
    return rfc3339(datetime.fromtimestamp(when, UTC)) if when else None


async def _show(call: Call, dream: ApiDream, record: DreamRecord | None) -> dict[str, Any]:
    if record is None:  # the dreamer's record is gone (its bucket was removed): say so
        record = DreamRecord(dream_id=dream.id, store=dream.memory_store_id, output_store="", status="failed")
        record.error = "the dreamer has no record of this dream"
    outputs = []
    if record.status == "completed":
        await _record_output(call, dream, record)
        outputs = [{"type": "memory_store", "memory_store_id": record.output_store}]
    usage = record.report.usage if record.report is not None else Usage()
    return {
        "id": dream.id,
        "type": "dream",
        "status": record.status,
        "inputs": [
            {"type": "memory_store", "memory_store_id": dream.memory_store_id},
            {"type": "sessions", "session_ids": dream.session_ids},
        ],
        "outputs": outputs,
        "model": {"id": dream.model, "speed": "standard"},
        "instructions": dream.instructions,
        "output_behavior": {"type": "create_new"},
        "session_id": None,
        "usage": {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "cache_creation_input_tokens": usage.cache_creation_input_tokens,
            "cache_read_input_tokens": usage.cache_read_input_tokens,
        },
        "error": (
            {"type": "internal_error", "message": record.error or "the dream failed"}
            if record.status == "failed"
            else None
        ),
        "created_at": dream.created_at,
        "ended_at": _time(record.ended) if record.status in DREAM_FINAL else None,
        "archived_at": dream.archived_at,
    }


async def _record_output(call: Call, dream: ApiDream, record: DreamRecord) -> None:
    """Make the completed dream's new store one of the workspace's (once: a later call finds it)."""
    if await call.records.get(call.workspace, STORE_KIND, record.output_store, StoreRecord):
        return
    found = await call.records.get(call.workspace, STORE_KIND, dream.memory_store_id, StoreRecord)
    source = found[0] if found is not None else None
    when = _time(record.ended) or rfc3339_now()
    name = f"{source.name} (dream {dream.id})" if source is not None else f"dream {dream.id}"
    store = StoreRecord(
        id=record.output_store,
        name=name[:255],
        description=source.description if source is not None else "",
        metadata=dict(source.metadata) if source is not None else {},
        created_at=when,
        updated_at=when,
    )
    await call.records.create(call.workspace, STORE_KIND, store.id, store)  # False: another did it


async def _load(call: Call) -> tuple[ApiDream, int, DreamRecord | None]:
    """The workspace's dream named in the path (404 otherwise), its revision and the dreamer's record."""
    dream_id = call.path("dream_id")
    found = await call.records.get(call.workspace, KIND, dream_id, ApiDream)
    if found is None:
        raise not_found("dream", dream_id)
    return found[0], found[1], await DreamBook(call.bus).get(dream_id)


# --- endpoints ------------------------------------------------------------------------------------


async def _checked(call: Call, body: _Create) -> tuple[str, list[str], str]:
    """The input store, the sorted session ids and the model id, each checked; a 400 or 404 naming
    the offending value otherwise."""
    stores = [i for i in body.inputs if isinstance(i, _StoreInput)]
    sessions = [i for i in body.inputs if isinstance(i, _SessionsInput)]
    if len(stores) != 1 or len(sessions) != 1:
        raise bad_request(
            "inputs must hold exactly one memory_store entry and one sessions entry, "
            f"not {len(stores)} and {len(sessions)}"
        )
    if isinstance(body.model, _Model) and body.model.speed == "fast":
        raise bad_request("model.speed 'fast' is not available: dreams run at 'standard' speed only")
    store_id = stores[0].memory_store_id
    if isinstance(body.output_behavior, _UpdateExisting):
        if body.output_behavior.memory_store_id != store_id:
            raise bad_request(
                f"output_behavior.memory_store_id {body.output_behavior.memory_store_id!r} must be "
                f"the memory store in inputs ({store_id!r})"
            )
        raise bad_request(
            "output_behavior update_existing is not supported here: a staffwork dream never writes "
            "the store it reads; use create_new (the default) and attach the new store instead"
        )
    ids = sessions[0].session_ids
    if len(set(ids)) != len(ids):
        twice = next(id for id in ids if ids.count(id) > 1)
        where = f"inputs[{body.inputs.index(sessions[0])}].session_ids"
        raise bad_request(f"{where} names session {twice!r} more than once")
    store = await get_store(call, store_id)
    if store.archived_at is not None:
        raise bad_request(f"memory store {store_id!r} is archived: a dream reads only a live store")
    for session_id in ids:
        if not (await load_session(call, session_id)).started:
            raise bad_request(
                f"session {session_id!r} has not started (no user.message yet): it has nothing to dream from"
            )
    model = body.model.id if isinstance(body.model, _Model) else body.model
    return store_id, sorted(ids), model


async def create(call: Call) -> object:
    body = await call.body(_Create)
    store_id, session_ids, model = await _checked(call, body)
    request = DreamRequest(
        dream_id=new_id("drm"),
        store=store_id,
        session_ids=session_ids,
        model=model,
        instructions=body.instructions or "",
        output=new_id("memstore"),
    )
    try:
        record = await request_dream(call.bus, request)
    except DreamError as exc:
        if isinstance(exc.__cause__, BusTimeout):
            raise ApiError(503, str(exc)) from None
        raise bad_request(f"the dreamer refused the dream: {exc}") from None
    dream = ApiDream(
        id=record.dream_id,
        memory_store_id=store_id,
        session_ids=session_ids,
        model=model,
        instructions=body.instructions,
        created_at=_time(record.created) or rfc3339_now(),
    )
    if not await call.records.create(call.workspace, KIND, dream.id, dream):
        raise ApiError(500, f"dream id {dream.id!r} is taken")  # a fresh id: never
    return await _show(call, dream, record)


async def retrieve(call: Call) -> object:
    dream, _, record = await _load(call)
    return await _show(call, dream, record)


async def list_dreams(call: Call) -> object:
    """Newest first; archived dreams only with ``include_archived=true``; ``statuses[]`` filters."""
    archived = call.query_bool("include_archived")
    statuses = call.query_list("statuses")
    if unknown := [s for s in statuses if s not in STATUSES]:
        raise bad_request(f"query parameter statuses[]={unknown[0]!r} is not one of {', '.join(STATUSES)}")
    after, before = call.query_time("created_at[gt]"), call.query_time("created_at[lt]")
    book = DreamBook(call.bus)
    shown = []
    for dream in await call.records.list(call.workspace, KIND, ApiDream):
        created = datetime.fromisoformat(dream.created_at)
        if dream.archived_at is not None and not archived:
            continue
        if (after and created <= after) or (before and created >= before):
            continue
        record = await book.get(dream.id)
        if statuses and (record.status if record else "failed") not in statuses:
            continue
        shown.append((dream, record))
    shown.sort(key=lambda pair: (pair[0].created_at, pair[0].id), reverse=True)
    chunk = page(call, shown)
    chunk["data"] = [await _show(call, dream, record) for dream, record in chunk["data"]]
    return chunk


async def cancel(call: Call) -> object:
    """Stop a pending or running dream. One already writing its output ends on its own: the answer
    is how it ended (or ``running``, if it takes longer than :data:`CANCEL_WAIT`)."""
    dream, _, record = await _load(call)
    if record is None or record.status in ("completed", "failed"):
        status = record.status if record else "failed"
        raise bad_request(f"dream {dream.id!r} is {status}: only a pending or running dream can be canceled")
    try:
        record = await cancel_dream(call.bus, dream.id, "canceled through the API")
    except DreamError:  # too late: it is writing its output
        try:
            record = await wait_dream(call.bus, dream.id, timeout=CANCEL_WAIT)
        except DreamError:
            record = await DreamBook(call.bus).get(dream.id)
    return await _show(call, dream, record)


async def archive(call: Call) -> object:
    dream, revision, record = await _load(call)
    for _ in range(10):  # compare-and-set on the record: retry when another request changed it
        if dream.archived_at is not None:
            break
        if record is not None and record.status not in DREAM_FINAL:
            raise bad_request(f"dream {dream.id!r} is {record.status}: cancel it before archiving it")
        dream.archived_at = rfc3339_now()
        if await call.records.update(call.workspace, KIND, dream.id, dream, revision):
            break
        dream, revision, record = await _load(call)
    else:
        raise ApiError(503, f"dream {dream.id!r} is changing too often to archive; try again")
    return await _show(call, dream, record)


routes: list[Route] = [
    route("/v1/dreams", create, "POST"),
    route("/v1/dreams", list_dreams),
    route("/v1/dreams/{dream_id}", retrieve),
    route("/v1/dreams/{dream_id}/cancel", cancel, "POST"),
    route("/v1/dreams/{dream_id}/archive", archive, "POST"),
]
