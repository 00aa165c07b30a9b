"""Dreams: their records and running one.

:class:`DreamBook` keeps the records in ``<key>_dreams`` (compare-and-set); :func:`cancel_dream`
works until the dream is writing; the final record is published on ``<root>.sys.dream.done.<id>``
(:func:`wait_dream`). :class:`Dreamer` starts a dream and runs it: it reads a memory store and past
sessions (:mod:`actors.dreamer.sessions`) and writes a curated copy, as a new store or into an
existing ``target``, all at the end (:mod:`actors.dreamer.curation`); the input is never written.
The narrative: docs/architecture.md, "Dreams".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable
from typing import Any

import msgspec
import structlog

from actors.agent.calls import call_model
from actors.agent.models.base import Model, ModelRequest, ModelResponse
from actors.dreamer.curation import model_dream, offline_dream
from actors.dreamer.sessions import (
    DreamCanceled,
    DreamError,
    baseline,
    read_session,
    select_sessions,
)
from actors.sessions.cancel import race_cancel
from bus.connection import Bus
from bus.errors import StaffworkError
from bus.memory import Memory, sha256_hex
from bus.subjects import check_token
from schemas.base import Usage
from schemas.dream import (
    DREAM_FINAL,
    MAX_DREAM_SESSIONS,
    DreamCancel,
    DreamRecord,
    DreamRequest,
)
from schemas.ids import new_id
from schemas.memory import Writer
from schemas.team import DEFAULT_MODEL

log = structlog.get_logger("staffwork.dreamer")
_DREAM_ID = re.compile(r"^[a-z0-9_-]{1,64}$")  # it ends up in the output store's name

# --- names -----------------------------------------------------------------------------------------


def output_name(store: str, dream_id: str) -> str:
    """``<store>-dream-<last 8 chars of the id>``, the store's name shortened to fit 48 characters."""
    suffix = f"-dream-{dream_id[-8:]}"
    return store[: 48 - len(suffix)] + suffix


# --- records ---------------------------------------------------------------------------------------

_record_decoder = msgspec.json.Decoder(DreamRecord)


class DreamBook:
    """Dream records in KV; every change is a compare-and-set."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def _kv(self) -> Any:
        return await self.bus.kv(self.bus.subjects.dreams_bucket)  # provisioning made it

    async def create(self, record: DreamRecord) -> None:
        if not await (await self._kv()).create(record.dream_id, msgspec.json.encode(record)):
            raise DreamError(f"dream {record.dream_id!r} already exists")

    async def get(self, dream_id: str) -> DreamRecord | None:
        raw = await (await self._kv()).get(check_token(dream_id, "dream id"))
        return _record_decoder.decode(raw) if raw else None

    async def all(self) -> list[DreamRecord]:
        kv = await self._kv()
        found = [await self.get(key) for key in await kv.keys()]
        return sorted((r for r in found if r is not None), key=lambda r: (r.created, r.dream_id))

    async def change(self, dream_id: str, edit: Callable[[DreamRecord], bool]) -> DreamRecord:
        """Apply ``edit`` (which says whether it changed the record) and store it if the record is
        unchanged since it was read; read again and retry otherwise. Returns the stored record."""
        kv = await self._kv()
        for _ in range(20):
            entry = await kv.entry(dream_id)
            if entry is None:
                raise DreamError(f"no dream {dream_id!r}")
            record = _record_decoder.decode(entry[0])
            if not edit(record):
                return record
            if await kv.update(dream_id, msgspec.json.encode(record), entry[1]):
                return record
        raise DreamError(f"dream {dream_id!r}: its record kept changing under us")


async def cancel_dream(bus: Bus, dream_id: str, reason: str = "canceled") -> DreamRecord:
    """Cancel a pending or running dream (not one already writing its output); returns its record.
    A dream that already ended is returned as it is."""

    def edit(record: DreamRecord) -> bool:
        if record.status in DREAM_FINAL:
            return False
        if record.phase == "writing":
            raise DreamError(
                f"dream {dream_id!r} is already writing {record.output_store!r}: too late to cancel"
            )
        record.status, record.error, record.ended = "canceled", reason, time.time()
        return True

    record = await DreamBook(bus).change(dream_id, edit)
    if record.status == "canceled":
        await bus.publish(bus.subjects.dream_cancel(dream_id), DreamCancel(dream_id=dream_id, reason=reason))
    return record


async def wait_dream(bus: Bus, dream_id: str, *, timeout: float) -> DreamRecord:
    """The dream's final record, once it has ended (:class:`~bus.errors.BusTimeout` semantics: a
    :class:`DreamError` after ``timeout`` seconds)."""
    finals = bus.follow(bus.subjects.dream_done(dream_id), DreamRecord)
    try:
        async with asyncio.timeout(timeout):
            async for record in finals:
                if isinstance(record, DreamRecord):
                    return record
    except TimeoutError:
        pass
    finally:
        await finals.aclose()
    raise DreamError(f"dream {dream_id!r} did not end within {timeout:g}s")


# --- running a dream -------------------------------------------------------------------------------


class Dreamer:
    """Starts and runs dreams for one bus (in-process, or inside the dreamer actor)."""

    def __init__(self, bus: Bus, model: Model) -> None:
        self.bus = bus
        self.model = model
        self.memory = Memory(bus)
        self.book = DreamBook(bus)

    def model_label(self, request: DreamRequest) -> str:
        if self.model.name == "offline":
            return "offline"
        return f"{self.model.name}:{request.model or DEFAULT_MODEL}"

    async def start(self, request: DreamRequest) -> DreamRecord:
        """Check the request and record the dream as ``pending``."""
        if not 1 <= request.sessions <= MAX_DREAM_SESSIONS:
            raise DreamError(f"--sessions must be 1 to {MAX_DREAM_SESSIONS}, got {request.sessions}")
        if len(request.session_ids) > MAX_DREAM_SESSIONS:
            raise DreamError(
                f"a dream reads at most {MAX_DREAM_SESSIONS} sessions, not {len(request.session_ids)}"
            )
        await self.memory.info(request.store)
        if request.target:
            if request.target == request.store:
                raise DreamError(
                    f"the target {request.target!r} is the input store: a dream never writes its input"
                )
            await self.memory.info(request.target)
        dream_id = request.dream_id or new_id("drm")
        if not _DREAM_ID.match(dream_id):
            raise DreamError(f"dream id {dream_id!r} must be lower-case letters, digits, '_' or '-'")
        record = DreamRecord(
            dream_id=dream_id,
            store=request.store,
            output_store=request.target or request.output or output_name(request.store, dream_id),
            target=bool(request.target),
            model=self.model_label(request),
            instructions=request.instructions,
        )
        await self.book.create(record)
        log.info("dream_pending", dream_id=dream_id, store=request.store, output=record.output_store)
        return record

    async def run(self, dream_id: str, request: DreamRequest) -> DreamRecord:
        """Run a pending dream to its end; returns (and publishes) its final record."""
        canceled = asyncio.Event()
        listener = None
        record: DreamRecord | None = None
        try:
            listener = await self.bus.listen(
                self.bus.subjects.dream_cancel(dream_id), DreamCancel, lambda _: canceled.set()
            )
            record = await self.book.change(dream_id, _begin)
            if record.status != "running":
                return record  # canceled before it started
            work = asyncio.ensure_future(self._dream(record, request))
            if await race_cancel(work, (canceled, "canceled")) == "canceled":
                record = await self._ended(dream_id)
            else:
                record = work.result()
        except DreamCanceled:
            record = await self._ended(dream_id)
        except (StaffworkError, ValueError) as exc:
            record = await self._fail(dream_id, str(exc))
        except asyncio.CancelledError:
            with contextlib.suppress(StaffworkError):
                record = await self._fail(dream_id, "the dreamer stopped before the dream ended")
            raise
        except Exception as exc:  # a bug, or an untranslated error: the dream fails, never hangs
            log.exception("dream_crashed", dream_id=dream_id)
            record = await self._fail(dream_id, f"{type(exc).__name__}: {exc}")
        finally:
            if listener is not None:
                await listener.close()
            if record is not None and record.status in DREAM_FINAL:
                with contextlib.suppress(StaffworkError):
                    await self.bus.publish_bytes(
                        self.bus.subjects.dream_done(dream_id), msgspec.json.encode(record)
                    )
        log.info("dream_ended", dream_id=dream_id, status=record.status, error=record.error)
        return record

    async def _ended(self, dream_id: str) -> DreamRecord:
        record = await self.book.get(dream_id)
        if record is None:
            raise DreamError(f"no dream {dream_id!r}")
        return record

    async def _fail(self, dream_id: str, error: str) -> DreamRecord:
        def edit(record: DreamRecord) -> bool:
            if record.status in DREAM_FINAL:
                return False
            record.status, record.phase, record.error, record.ended = "failed", "", error, time.time()
            return True

        return await self.book.change(dream_id, edit)

    async def _step(self, dream_id: str, edit: Callable[[DreamRecord], None]) -> DreamRecord:
        """Move a running dream on (compare-and-set); :class:`DreamCanceled` if it was canceled."""

        def apply(record: DreamRecord) -> bool:
            if record.status != "running":
                return False
            edit(record)
            return True

        record = await self.book.change(dream_id, apply)
        if record.status != "running":
            raise DreamCanceled(f"dream {dream_id!r} was {record.status}")
        return record

    async def _dream(self, record: DreamRecord, request: DreamRequest) -> DreamRecord:
        dream_id = record.dream_id
        files = {
            v.path: (await self.memory.read(record.store, v.path)).content
            for v in await self.memory.list(record.store)
        }
        chosen = await select_sessions(
            self.bus,
            store=record.store,
            limit=request.sessions,
            since_s=request.since_s,
            attached_only=request.attached_only,
            ids=request.session_ids,
        )
        digests = [await read_session(self.bus, session) for session in chosen]
        ids = [d.session_id for d in digests]

        def dreaming(r: DreamRecord) -> None:
            r.phase, r.sessions = "dreaming", ids

        await self._step(dream_id, dreaming)
        report = baseline(digests)
        usage = Usage()
        if self.model.name == "offline":
            out, changes = offline_dream(files, digests, dream_id)
            changes.insert(
                0, "offline model: deterministic merge (exact duplicates, latest key wins) and lessons"
            )
        else:
            name = request.model or DEFAULT_MODEL

            async def complete(request: ModelRequest) -> ModelResponse:
                # A dream has no session: its model call's events go to <root>.sys.evt.<kind>,
                # with the dream's id as their thread.
                request = msgspec.structs.replace(request, session_id="", thread_id=dream_id)
                return await call_model(self.bus, self.model, request)

            out, changes, usage = await model_dream(
                complete, name, record.store, files, digests, request.instructions
            )

        def writing(r: DreamRecord) -> None:
            r.phase = "writing"

        record = await self._step(dream_id, writing)  # from here on, no cancel
        await self._write(record, out)
        report = msgspec.structs.replace(
            report, changes=changes, files_in=len(files), files_out=len(out), model=record.model, usage=usage
        )

        def completed(r: DreamRecord) -> None:
            r.status, r.phase, r.ended, r.report = "completed", "", time.time(), report

        return await self._step(dream_id, completed)

    async def _write(self, record: DreamRecord, files: dict[str, str]) -> None:
        """Write the output store in one go. A new store whose writing fails is emptied again (a
        store's name stays registered: stores are never removed)."""
        writer = Writer(kind="user", user=f"dream {record.dream_id}")
        if not record.target:
            await self.memory.create(record.output_store, f"dream {record.dream_id} of {record.store}")
            current: dict[str, str] = {}
        else:
            current = {v.path: v.sha256 for v in await self.memory.list(record.output_store)}
        written: list[str] = []
        try:
            for path, content in sorted(files.items()):
                if current.get(path) == sha256_hex(content):
                    continue
                await self.memory.write(record.output_store, path, content, writer=writer)
                written.append(path)
        except BaseException:
            if not record.target:
                for path in written:
                    with contextlib.suppress(StaffworkError):
                        await self.memory.delete(record.output_store, path, writer=writer)
            raise

    async def dream(self, request: DreamRequest) -> DreamRecord:
        """Start and run a dream here, to its end."""
        record = await self.start(request)
        return await self.run(record.dream_id, request)


def _begin(record: DreamRecord) -> bool:
    if record.status != "pending":
        return False
    record.status, record.phase, record.started = "running", "reading", time.time()
    return True


# --- the actor -------------------------------------------------------------------------------------
