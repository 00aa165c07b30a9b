"""The dreamer role: :class:`DreamerService`, a service actor (no consumer) that answers
``<root>.api.dream`` (:func:`request_dream`) and dreams on :class:`DreamSchedule` s, at most a few
at once; the dreams themselves are :mod:`actors.dreamer.dream`'s."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence

import msgspec
import structlog

from actors.agent.models.base import Model
from actors.dreamer.dream import Dreamer
from actors.dreamer.sessions import (
    DREAMER,
    DreamError,
)
from bus.actor import BaseActor
from bus.codec import Decoder
from bus.connection import Bus
from bus.errors import BusTimeout, StaffworkError
from bus.state import Responder
from bus.subjects import Subjects
from schemas.dream import (
    DreamAnswer,
    DreamRecord,
    DreamRequest,
)

log = structlog.get_logger("staffwork.dreamer")


class DreamSchedule(msgspec.Struct, frozen=True, kw_only=True):
    """Dream ``store`` every ``every_s`` seconds (``request``'s other fields as given)."""

    every_s: float
    request: DreamRequest


_request_decoder: Decoder[DreamRequest] = Decoder(DreamRequest, max_bytes=64 * 1024)


class DreamerService(BaseActor[None]):
    """The dreamer role: a service (no consumer) that answers ``<root>.api.dream`` and dreams on
    ``schedules``, at most ``max_running`` at once. On stop, running dreams get ``grace`` seconds;
    the rest are failed (a dream waiting for a slot never ran, and says so)."""

    role = DREAMER

    def __init__(
        self,
        model: Model,
        *,
        schedules: Sequence[DreamSchedule] = (),
        max_running: int = 2,
        grace: float = 10.0,
    ) -> None:
        self.model = model
        self.schedules = list(schedules)
        self.grace = grace
        self._slots = asyncio.Semaphore(max_running)
        self._stopping = asyncio.Event()
        self._running: set[asyncio.Task[DreamRecord]] = set()
        self._timers: list[asyncio.Task[None]] = []
        self._responder: Responder | None = None

    def consumer(self, subjects: Subjects) -> None:
        return None

    async def on_start(self, bus: Bus) -> None:
        self.bus = bus
        self.dreamer = Dreamer(bus, self.model)
        self._responder = await bus.respond(bus.subjects.api_dream, self._answer, queue=DREAMER)
        self._timers = [
            asyncio.create_task(self._scheduled(s), name=f"dream-schedule-{s.request.store}")
            for s in self.schedules
        ]

    async def on_stop(self) -> None:
        self._stopping.set()
        if self._responder is not None:
            await self._responder.close()
            self._responder = None
        await asyncio.gather(*self._timers, return_exceptions=True)  # each ends at _stopping
        if self._running:
            _, late = await asyncio.wait(set(self._running), timeout=self.grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    async def _run(self, record: DreamRecord, request: DreamRequest) -> DreamRecord:
        try:
            await self._slots.acquire()
        except asyncio.CancelledError:  # stopped while it waited for a slot: it never ran
            with contextlib.suppress(StaffworkError):
                ended = await self.dreamer._fail(
                    record.dream_id, "the dreamer stopped before the dream started"
                )
                done = self.bus.subjects.dream_done(record.dream_id)
                await self.bus.publish_bytes(done, msgspec.json.encode(ended))
            raise
        try:
            return await self.dreamer.run(record.dream_id, request)
        finally:
            self._slots.release()

    def _launch(self, record: DreamRecord, request: DreamRequest) -> None:
        task = asyncio.create_task(self._run(record, request), name=f"dream-{record.dream_id}")
        self._running.add(task)  # owned: on_stop waits for it (or cancels it)
        task.add_done_callback(self._running.discard)

    async def _answer(self, data: bytes) -> bytes:
        try:
            request = _request_decoder.decode(data)
            if self._stopping.is_set():
                raise DreamError("the dreamer is stopping")
            record = await self.dreamer.start(request)
        except (StaffworkError, ValueError) as exc:
            return msgspec.json.encode(DreamAnswer(error=str(exc)))
        except Exception as exc:  # never a traceback instead of an answer
            log.exception("dream_request_failed")
            return msgspec.json.encode(DreamAnswer(error=f"{type(exc).__name__}: {exc}"))
        self._launch(record, request)
        return msgspec.json.encode(DreamAnswer(record=record))

    async def _scheduled(self, schedule: DreamSchedule) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(schedule.every_s):
                    await self._stopping.wait()
            if self._stopping.is_set():
                return
            try:
                record = await self.dreamer.start(msgspec.structs.replace(schedule.request, dream_id=""))
            except StaffworkError as exc:
                log.warning("scheduled_dream_refused", store=schedule.request.store, error=str(exc))
                continue
            self._launch(record, schedule.request)


async def request_dream(bus: Bus, request: DreamRequest, *, timeout: float = 10.0) -> DreamRecord:
    """Ask a running dreamer to start a dream; its ``pending`` record (:class:`DreamError` if refused)."""
    try:
        reply = await bus.request(bus.subjects.api_dream, request, timeout=timeout)
    except BusTimeout as exc:
        raise DreamError(f"the dreamer did not answer on {bus.subjects.api_dream!r}: {exc}") from exc
    answer = msgspec.json.decode(reply, type=DreamAnswer)
    if answer.record is None:
        raise DreamError(answer.error or "the dreamer refused the dream")
    return answer.record
