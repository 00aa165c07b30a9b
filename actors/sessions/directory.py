"""Session state shared by all actors: the session directory (KV) and cancellation.

The lead records each session in the ``<key>_sessions`` KV bucket when it takes it: the team (so a
subagent worker in another process knows the agents' specs), the task and the status. Workers read
the team from there, and check the status so work for a canceled session stops at once.

Cancelling a session writes ``canceled`` to the directory and publishes ``session.cancel.v1`` on
``<root>.s.<session>.ctl``; every lead and worker process watches those subjects and stops that
session's work within moments. Work picked up later sees the status in the directory.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any, TypeVar

import msgspec
import structlog

from bus.connection import Bus
from bus.state import KV, Listener
from schemas.base import Usage
from schemas.session import SessionCancel, SessionState
from schemas.team import TeamSpec

log = structlog.get_logger("staffwork.sessions")

STOPPED: frozenset[str] = frozenset({"canceled", "budget_reached", "deadline_reached", "failed"})
TERMINAL: frozenset[str] = frozenset(
    {"idle", "terminated", "canceled", "failed", "budget_reached", "deadline_reached"}
)


T = TypeVar("T")


class _Bounded(OrderedDict[str, T]):
    """A dict that forgets its least recently used entries beyond ``limit`` (long-lived processes)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def get(self, key: str, default: T | None = None) -> T | None:  # type: ignore[override]
        if key in self:
            self.move_to_end(key)
            return self[key]
        return default

    def __setitem__(self, key: str, value: T) -> None:
        super().__setitem__(key, value)
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class SessionRecord(msgspec.Struct, kw_only=True):
    session_id: str
    team: TeamSpec
    task: str
    status: SessionState = "running"
    stop_reason: str = ""
    started: float = msgspec.field(default_factory=time.time)
    ended: float = 0.0  # when the lead finished it (0 while it runs)
    threads: int = 0  # the lead's thread and the subagent threads it started
    usage: Usage = msgspec.field(default_factory=Usage)


_record = msgspec.json.Decoder(SessionRecord)
_encoder = msgspec.json.Encoder()


class SessionDirectory:
    """Session records in KV, with the teams cached (a session's team never changes)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._teams: _Bounded[TeamSpec] = _Bounded(1000)

    async def _kv(self) -> KV:
        return await self.bus.kv(self.bus.subjects.sessions_bucket)

    async def get(self, session_id: str) -> SessionRecord | None:
        value = await (await self._kv()).get(session_id)
        return _record.decode(value) if value else None

    async def create_pending(self, session_id: str, team: TeamSpec, task: str) -> bool:
        """Record a new session as ``pending`` (accepted, not yet taken by a lead). False if it exists."""
        record = SessionRecord(session_id=session_id, team=team, task=task, status="pending")
        return await (await self._kv()).create(session_id, _encoder.encode(record))

    async def start(self, session_id: str, team: TeamSpec, task: str) -> SessionRecord:
        """Record a session as running, unless it is already recorded (a redelivered submit)."""
        existing = await self.get(session_id)
        if existing is not None:
            self._teams[session_id] = existing.team
            if existing.status == "pending":  # accepted by the gateway, now taken by a lead
                await self.set_status(session_id, "running")
                existing.status = "running"
            return existing
        record = SessionRecord(session_id=session_id, team=team, task=task)
        if not await (await self._kv()).create(session_id, _encoder.encode(record)):
            again = await self.get(session_id)  # another lead recorded it a moment ago
            if again is not None:
                return again
        self._teams[session_id] = team
        return record

    async def set_status(
        self,
        session_id: str,
        status: SessionState,
        stop_reason: str = "",
        *,
        ended: float = 0.0,
        threads: int = 0,
        usage: Usage | None = None,
    ) -> None:
        """Change a session's status (compare-and-set, so a concurrent cancel is never overwritten);
        the lead also records when it ended, how many threads it ran and their usage."""
        kv = await self._kv()
        for _ in range(10):
            current = await kv.entry(session_id)
            if current is None:
                return
            record = _record.decode(current[0])
            if record.status in STOPPED and status != record.status:
                if not ended:
                    return  # a stopped session stays stopped (a late "idle" never undoes a cancel)
            else:
                record.status = status
                record.stop_reason = stop_reason
            if ended:
                record.ended, record.threads = ended, threads
                record.usage = usage or record.usage
            if await kv.update(session_id, _encoder.encode(record), current[1]):
                return
        log.warning("session_status_contended", session_id=session_id, status=status)

    async def team(self, session_id: str) -> TeamSpec | None:
        cached = self._teams.get(session_id)
        if cached is not None:
            return cached
        record = await self.get(session_id)
        if record is None:
            return None
        self._teams[session_id] = record.team
        return record.team

    async def is_canceled(self, session_id: str) -> bool:
        """Whether the session's work was stopped (canceled, or a budget, deadline or failure)."""
        record = await self.get(session_id)
        return record is not None and record.status in STOPPED


async def cancel_session(
    bus: Bus, session_id: str, reason: str = "canceled", *, status: SessionState = "canceled"
) -> None:
    """Stop a session's work: mark it in the directory (``canceled``, or why it stopped:
    ``budget_reached``, ``deadline_reached``, ``failed``) and tell every lead and worker.

    A session that already ended keeps its status (the lead's own budget/deadline stop still
    reaches its threads)."""
    directory = SessionDirectory(bus)
    record = await directory.get(session_id)
    if record is not None and record.status in TERMINAL and status == "canceled":
        return
    await directory.set_status(session_id, status, reason)
    await bus.publish(bus.subjects.ctl(session_id), SessionCancel(session_id=session_id, reason=reason))


class CancelWatch:
    """Watches ``<root>.s.*.ctl`` in this process and keeps one event per canceled session."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._events: _Bounded[asyncio.Event] = _Bounded(10_000)
        self._listener: Listener[SessionCancel] | None = None

    async def start(self) -> None:
        if self._listener is None:
            self._listener = await self.bus.listen(self.bus.subjects.all_ctl, SessionCancel, self._on_cancel)

    async def stop(self) -> None:
        if self._listener is not None:
            await self._listener.close()
            self._listener = None

    def _on_cancel(self, cancel: SessionCancel) -> None:
        log.info("session_cancel_seen", session_id=cancel.session_id, reason=cancel.reason)
        self.event(cancel.session_id).set()

    def event(self, session_id: str) -> asyncio.Event:
        event = self._events.get(session_id)
        if event is None:
            event = self._events[session_id] = asyncio.Event()
        return event

    def forget(self, session_id: str) -> None:
        self._events.pop(session_id, None)


async def race_cancel(work: asyncio.Future[Any], *events: tuple[asyncio.Event, str]) -> str:
    """Wait for ``work`` or the first of ``events`` (each with its name); cancel ``work`` if an
    event wins, and return that event's name (or ``"done"``)."""
    waiters = {asyncio.ensure_future(event.wait()): name for event, name in events}
    try:
        done, _ = await asyncio.wait({work, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()  # we are being cancelled: the work goes with us, never orphaned
        await asyncio.wait({work})
        raise
    finally:
        for waiter in waiters:
            waiter.cancel()
    if work in done:
        return "done"
    work.cancel()
    await asyncio.wait({work})
    for waiter, name in waiters.items():
        if waiter in done:
            return name
    return "done"
