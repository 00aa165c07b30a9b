"""Memories (``/v1/memory_stores/{id}/memories``): create, retrieve, update (content, rename, with a
``content_sha256`` precondition), list (``path_prefix``, ``depth``, ``view``), delete, in the shapes
the SDK's ``BetaManagedAgentsMemory`` and ``BetaManagedAgentsMemoryPrefix`` model.

A memory is a file of the staffwork store (``actors.api.memory_stores``): the API path ``/a/b.md`` is
the store's ``a/b.md``; its content, sha256 and version are the file's latest version
(``memory_version_id`` is ``memver_<stream sequence>``). What the file store does not have is an id
that survives a rename: the record ``<workspace>.memindex.<store id>`` maps paths to memory ids,
changed only by compare-and-set. A file no API call created (an agent wrote it) has an id derived
from its path until a rename records it.

Who owns a path is decided by the file store's own compare-and-set: a create or a rename first writes
the new path on condition that there is no file there (one of two racing writers wins, the other gets
a 409), then records the id at that path, then (a rename) deletes the old path on condition that it
is still at the content copied; a rename whose record update finds the memory moved by another
request undoes its copy and starts again from where the memory is now. Content updates and deletes
are conditional on the version read, and look the memory up again when it moved meanwhile.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import re
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from msgspec import UNSET, UnsetType
from starlette.routing import Route

from actors.api.errors import ApiError, bad_request, not_found
from actors.api.http import Call, page, route
from actors.api.memory_stores import INDEX_KIND, get_store, memory, writer
from actors.api.values import rfc3339
from bus.errors import InvalidPath, MemoryConflict, MemoryFileNotFound
from bus.memory import Memory
from bus.objects import normalize_path
from schemas.ids import new_id
from schemas.memory import MAX_MEMORY_BYTES, MemoryFile, MemoryVersion

MAX_SEGMENTS = 20
MAX_PATH_BYTES = 1024
ATTEMPTS = 10  # a request racing others looks again this many times before giving up
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


# --- paths and ids -----------------------------------------------------------------------------------


def store_path(path: str, field: str = "path") -> str:
    """The store's relative path of the API path ``path`` (``/a/b.md`` → ``a/b.md``), or a 400."""
    if not path.startswith("/"):
        raise bad_request(f"{field} {path!r} must start with '/'")
    if len(path.encode()) > MAX_PATH_BYTES:
        raise bad_request(f"{field} {path[:80]!r}... is {len(path.encode())} bytes, over {MAX_PATH_BYTES}")
    if unicodedata.normalize("NFC", path) != path:
        raise bad_request(f"{field} {path!r} is not in Unicode Normalization Form C")
    for char in path:
        if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise bad_request(f"{field} {path!r} contains the character U+{ord(char):04X}")
    segments = path[1:].split("/")
    if len(segments) > MAX_SEGMENTS:
        raise bad_request(f"{field} {path!r} has {len(segments)} segments, over {MAX_SEGMENTS}")
    if "" in segments:
        raise bad_request(f"{field} {path!r} has an empty segment ('//' or a trailing '/')")
    if "." in segments or ".." in segments:
        raise bad_request(f"{field} {path!r} has a '.' or '..' segment")
    try:
        return normalize_path(path[1:])
    except InvalidPath as exc:
        raise bad_request(f"{field} {path!r} is invalid: {exc.reason}") from None


def _sha(value: str, field: str) -> str:
    if not _SHA256.match(value.lower()):
        raise bad_request(f"{field} {value!r} is not a sha256 (64 hex digits)")
    return value.lower()


def _view(call: Call, default: str) -> bool:
    """Whether the response includes content (``view=full``)."""
    view = call.query("view", default)
    if view not in ("basic", "full"):
        raise bad_request(f"query parameter view={view!r} is not 'basic' or 'full'")
    return view == "full"


def _check_size(content: str) -> None:
    if (size := len(content.encode())) > MAX_MEMORY_BYTES:
        raise bad_request(f"content is {size:,} bytes, over the {MAX_MEMORY_BYTES:,} allowed")


class Entry(msgspec.Struct, array_like=True):
    id: str
    created_at: str


class Index(msgspec.Struct):
    """A store's memory ids, by the store's path."""

    paths: dict[str, Entry] = msgspec.field(default_factory=dict)

    def find(self, memory_id: str) -> tuple[str, Entry] | None:
        return next(((p, e) for p, e in self.paths.items() if e.id == memory_id), None)

    def ids(self) -> set[str]:
        return {entry.id for entry in self.paths.values()}


def derived_id(store_id: str, path: str, taken: set[str]) -> str:
    """The id of a file no API call recorded: from its path, skipping the ``taken`` (recorded) ids."""
    for n in itertools.count():
        digest = hashlib.sha256(f"{store_id}/{path}#{n}".encode()).hexdigest()
        if (found := "mem_" + digest[:26]) not in taken:
            return found
    raise AssertionError("unreachable: count() is endless")


async def _index(call: Call, store_id: str) -> tuple[Index, int | None]:
    found = await call.records.get(call.workspace, INDEX_KIND, store_id, Index)
    return found if found is not None else (Index(), None)


async def _edit(call: Call, store_id: str, change: Callable[[Index], bool]) -> None:
    """Apply ``change`` (False: nothing to write) to the store's index, compare-and-set."""
    for _ in range(ATTEMPTS):
        index, revision = await _index(call, store_id)
        if not change(index):
            return
        if revision is None:
            written = await call.records.create(call.workspace, INDEX_KIND, store_id, index)
        else:
            written = await call.records.update(call.workspace, INDEX_KIND, store_id, index, revision)
        if written:
            return
    raise ApiError(503, f"the memories of store {store_id!r} are changing too often; try again")


async def _locate(call: Call, store_id: str, memory_id: str) -> tuple[str, Entry]:
    """Where the memory is (its store path) and its entry; a 404 if nowhere."""
    index, _ = await _index(call, store_id)
    if (found := index.find(memory_id)) is not None:
        return found
    taken = index.ids()
    for version in await memory(call.bus).list(store_id):
        if version.path not in index.paths and derived_id(store_id, version.path, taken) == memory_id:
            return version.path, Entry(memory_id, rfc3339(version.time))
    raise not_found("memory", memory_id)


async def _retrying(
    call: Call, memory_id: str, attempt: Callable[[], Awaitable[dict[str, Any] | None]]
) -> dict[str, Any]:
    """Run ``attempt`` until it answers (None: the memory moved meanwhile, look again)."""
    for _ in range(ATTEMPTS):
        if (answer := await attempt()) is not None:
            return answer
    raise not_found("memory", memory_id)


def _out(
    store_id: str, memory_id: str, created_at: str, file: MemoryFile | MemoryVersion, content: str | None
) -> dict[str, Any]:
    return {
        "id": memory_id,
        "type": "memory",
        "memory_store_id": store_id,
        "path": "/" + file.path,
        "content": content,
        "content_sha256": file.sha256,
        "content_size_bytes": file.size,
        "memory_version_id": f"memver_{file.version}",
        "created_at": created_at,
        "updated_at": rfc3339(file.time),
    }


# --- endpoints -----------------------------------------------------------------------------------------


class _Create(msgspec.Struct, frozen=True, kw_only=True):
    path: str
    content: str | None


class _Precondition(msgspec.Struct, frozen=True, kw_only=True, tag="content_sha256", tag_field="type"):
    content_sha256: str


class _Update(msgspec.Struct, frozen=True, kw_only=True):
    content: str | UnsetType | None = UNSET
    path: str | UnsetType | None = UNSET
    precondition: _Precondition | UnsetType | None = UNSET


def _path_taken(path: str) -> ApiError:
    return ApiError(409, f"a memory exists at path {path!r}", type="memory_path_conflict_error")


def _precondition_failed(memory_id: str, expected: str, actual: str) -> ApiError:
    now = f"content_sha256 {actual}" if actual else "deleted"
    return ApiError(
        409,
        f"memory {memory_id!r} is {now}, not content_sha256 {expected}: the precondition failed",
        type="memory_precondition_failed_error",
    )


async def create(call: Call) -> object:
    store_id = call.path("memory_store_id")
    body = await call.body(_Create)
    full = _view(call, "basic")
    path = store_path(body.path)
    if body.content is None:
        raise bad_request("content must be a string ('' for an empty memory), not null")
    _check_size(body.content)
    await get_store(call, store_id, writable=True)
    try:  # no file there: of two creators (or renames) only one writes it
        version = await memory(call.bus).write(
            store_id, path, body.content, writer=writer(call), expected_sha256=""
        )
    except MemoryConflict:
        raise _path_taken(body.path) from None
    entry = Entry(new_id("mem"), rfc3339(version.time))

    def record(index: Index) -> bool:
        index.paths[path] = entry  # whatever was recorded here is gone: this write created the file
        return True

    await _edit(call, store_id, record)
    return _out(store_id, entry.id, entry.created_at, version, body.content if full else None)


async def retrieve(call: Call) -> object:
    store_id, memory_id = call.path("memory_store_id"), call.path("memory_id")
    full = _view(call, "full")
    await get_store(call, store_id)

    async def attempt() -> dict[str, Any] | None:
        path, entry = await _locate(call, store_id, memory_id)
        try:
            file = await memory(call.bus).read(store_id, path)
        except MemoryFileNotFound:
            return None
        return _out(store_id, memory_id, entry.created_at, file, file.content if full else None)

    return await _retrying(call, memory_id, attempt)


async def update(call: Call) -> object:
    store_id, memory_id = call.path("memory_store_id"), call.path("memory_id")
    body = await call.body(_Update)
    full = _view(call, "basic")
    content = body.content if isinstance(body.content, str) else None
    new_path = store_path(body.path) if isinstance(body.path, str) else None
    expected = None
    if isinstance(body.precondition, _Precondition):
        expected = _sha(body.precondition.content_sha256, "precondition.content_sha256")
    if content is not None:
        _check_size(content)
    await get_store(call, store_id, writable=True)
    store = memory(call.bus)

    async def attempt() -> dict[str, Any] | None:
        path, entry = await _locate(call, store_id, memory_id)
        try:
            current = await store.read(store_id, path)
        except MemoryFileNotFound:
            return None
        if expected is not None and current.sha256 != expected:
            raise _precondition_failed(memory_id, expected, current.sha256)
        text = current.content if content is None else content
        if new_path is None or new_path == path:
            if text == current.content:
                return _out(store_id, memory_id, entry.created_at, current, text if full else None)
            try:
                version = await store.write(
                    store_id, path, text, writer=writer(call), expected_sha256=current.sha256
                )
            except MemoryConflict:
                return None  # changed since it was read: check the precondition again
            return _out(store_id, memory_id, entry.created_at, version, text if full else None)
        moved = await _rename(call, store, store_id, memory_id, (path, entry), current, new_path, text)
        if moved is None:
            return None
        return _out(store_id, memory_id, entry.created_at, moved, text if full else None)

    return await _retrying(call, memory_id, attempt)


async def _rename(
    call: Call,
    store: Memory,
    store_id: str,
    memory_id: str,
    located: tuple[str, Entry],
    current: MemoryFile,
    new_path: str,
    text: str,
) -> MemoryVersion | None:
    """Move the memory from ``located`` (at ``current``) to ``new_path`` with ``text``; None if another
    request moved or deleted it first (the copy is undone: look again)."""
    path, entry = located
    try:
        version = await store.write(store_id, new_path, text, writer=writer(call), expected_sha256="")
    except MemoryConflict:
        raise _path_taken("/" + new_path) from None
    moved = False

    def move(index: Index) -> bool:
        nonlocal moved
        recorded = index.paths.get(path)
        moved = recorded.id == memory_id if recorded is not None else index.find(memory_id) is None
        if moved:
            index.paths.pop(path, None)
            index.paths[new_path] = entry
        return moved

    await _edit(call, store_id, move)
    if not moved:
        with contextlib.suppress(MemoryConflict, MemoryFileNotFound):  # else someone's file now
            await store.delete(store_id, new_path, writer=writer(call), expected_sha256=version.sha256)
        return None
    sha = current.sha256
    for _ in range(3):  # delete the old path; a write that reached it meanwhile moves along
        try:
            await store.delete(store_id, path, writer=writer(call), expected_sha256=sha)
            break
        except MemoryFileNotFound:
            break
        except MemoryConflict:
            try:
                late = await store.read(store_id, path)
                version = await store.write(
                    store_id, new_path, late.content, writer=writer(call), expected_sha256=version.sha256
                )
            except (MemoryConflict, MemoryFileNotFound):
                break  # both paths changed: leave the old one as the file it now is
            sha = late.sha256
    return version


async def delete(call: Call) -> object:
    store_id, memory_id = call.path("memory_store_id"), call.path("memory_id")
    raw = call.query("expected_content_sha256")
    expected = _sha(raw, "expected_content_sha256") if raw else None
    await get_store(call, store_id)
    store = memory(call.bus)

    async def attempt() -> dict[str, Any] | None:
        path, _ = await _locate(call, store_id, memory_id)
        try:
            await store.delete(store_id, path, writer=writer(call), expected_sha256=expected)
        except MemoryFileNotFound:
            return None
        except MemoryConflict as exc:
            if exc.actual and expected is not None:
                raise _precondition_failed(memory_id, expected, exc.actual) from None
            return None
        moved = False

        def forget(index: Index) -> bool:
            nonlocal moved
            recorded = index.paths.get(path)
            if recorded is not None and recorded.id == memory_id:
                del index.paths[path]
                return True
            moved = index.find(memory_id) is not None  # renamed meanwhile: delete it where it is
            return False

        await _edit(call, store_id, forget)
        return None if moved else {"id": memory_id, "type": "memory_deleted"}

    return await _retrying(call, memory_id, attempt)


async def list_memories(call: Call) -> object:
    """By path; with ``depth``, deeper paths rolled up into ``memory_prefix`` items."""
    store_id = call.path("memory_store_id")
    full = _view(call, "basic")
    prefix = call.query("path_prefix", "/")
    if not prefix.endswith("/"):
        raise bad_request(f"query parameter path_prefix={prefix!r} must end with '/'")
    relative = "" if prefix == "/" else store_path(prefix[:-1], "path_prefix") + "/"
    try:
        depth = int(call.query("depth", "0"))
    except ValueError:
        raise bad_request(f"query parameter depth={call.query('depth')!r} is not an integer") from None
    if depth < 0:
        raise bad_request(f"query parameter depth={depth} is negative")
    await get_store(call, store_id)
    index, _ = await _index(call, store_id)
    store = memory(call.bus)
    items: dict[str, MemoryVersion | None] = {}  # by API path; None: a prefix
    for version in await store.list(store_id, relative):
        segments = version.path[len(relative) :].split("/")
        if depth and len(segments) > depth:
            items["/" + relative + "/".join(segments[:depth]) + "/"] = None
        else:
            items["/" + version.path] = version
    chunk = page(call, sorted(items.items()), max_limit=20 if full else 100)
    taken = index.ids()
    data: list[dict[str, Any]] = []
    for path, version in chunk["data"]:
        if version is None:
            data.append({"type": "memory_prefix", "path": path})
            continue
        entry = index.paths.get(version.path)
        memory_id = entry.id if entry is not None else derived_id(store_id, version.path, taken)
        created_at = entry.created_at if entry is not None else rfc3339(version.time)
        if not full:
            data.append(_out(store_id, memory_id, created_at, version, None))
            continue
        try:
            file = await store.read(store_id, version.path)
        except MemoryFileNotFound:
            continue  # deleted since the list
        data.append(_out(store_id, memory_id, created_at, file, file.content))
    return {"data": data, "next_page": chunk["next_page"]}


routes: list[Route] = [
    route("/v1/memory_stores/{memory_store_id}/memories", create, "POST"),
    route("/v1/memory_stores/{memory_store_id}/memories", list_memories),
    route("/v1/memory_stores/{memory_store_id}/memories/{memory_id}", retrieve),
    route("/v1/memory_stores/{memory_store_id}/memories/{memory_id}", update, "POST"),
    route("/v1/memory_stores/{memory_store_id}/memories/{memory_id}", delete, "DELETE"),
]
