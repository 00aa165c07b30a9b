"""Cancelling a session and noticing it: ``cancel_session`` marks the session in the directory and
publishes ``session.cancel.v1`` on ``<root>.s.<session>.ctl``; a :class:`CancelWatch` per process
keeps one event per canceled session; :func:`race_cancel` runs work against those events."""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from actors.sessions.directory import TERMINAL, Bounded, SessionDirectory
from bus.connection import Bus
from bus.state import Listener
from schemas.session import SessionCancel, SessionState

log = structlog.get_logger("staffwork.sessions")


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
        self._events: Bounded[asyncio.Event] = Bounded(10_000)
        self._listener: Listener[SessionCancel] | None = None
        self._users = 0  # the actors of this process that started it (lead and workers share one)

    async def start(self) -> None:
        self._users += 1
        if self._listener is None:
            self._listener = await self.bus.listen(self.bus.subjects.all_ctl, SessionCancel, self._on_cancel)

    async def stop(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._listener is not None:
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
