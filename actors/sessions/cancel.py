"""Cancelling a session and noticing it: ``cancel_session`` marks the session in the directory and
publishes ``session.cancel.v1`` on ``<root>.s.<session>.ctl``; a :class:`CancelWatch` per process
keeps one event per canceled session; :func:`race_cancel` runs work against those events.

Interrupts travel on the same subject (``session.interrupt.v1``, from :func:`interrupt`): they stop
the work in progress of one thread, or of every thread, without ending the session. Work that can be
interrupted registers with :meth:`CancelWatch.interrupts` while it runs; an interrupt for a thread
with no work in progress in any process changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import structlog

from actors.sessions.directory import TERMINAL, Bounded, SessionDirectory
from bus.connection import Bus
from bus.state import Listener
from schemas.session import SessionCancel, SessionInterrupt, SessionState
from schemas.thread import LEAD_THREAD
from schemas.trace import SessionStatusTerminated

log = structlog.get_logger("staffwork.sessions")


async def cancel_session(
    bus: Bus, session_id: str, reason: str = "canceled", *, status: SessionState = "canceled"
) -> None:
    """Stop a session's work: mark it in the directory (``canceled``, or why it stopped:
    ``budget_reached``, ``deadline_reached``, ``failed``) and tell every lead and worker.

    A session that already ended keeps its status (the lead's own budget/deadline stop still
    reaches its threads). An idle one, waiting for a follow-up, ends here: no lead runs a turn that
    would say so, so its ``session.status_terminated`` is emitted here."""
    directory = SessionDirectory(bus)
    record = await directory.get(session_id)
    if record is not None and record.status in TERMINAL and status == "canceled":
        if record.status == "idle":
            await directory.set_status(session_id, status, reason)
            lead = record.team.lead.name
            await bus.emit(
                SessionStatusTerminated(
                    session_id=session_id, thread_id=LEAD_THREAD, agent=lead, reason=reason
                )
            )
        return
    await directory.set_status(session_id, status, reason)
    await bus.publish(bus.subjects.ctl(session_id), SessionCancel(session_id=session_id, reason=reason))


async def interrupt(bus: Bus, session_id: str, thread_id: str = "", reason: str = "", by: str = "") -> None:
    """Stop one thread's work in progress (or, without ``thread_id``, every thread's and the lead's
    turn); the session goes on and its threads can take follow-ups. ``by`` is who, for the trace."""
    message = SessionInterrupt(session_id=session_id, thread_id=thread_id, reason=reason, by=by)
    await bus.publish(bus.subjects.ctl(session_id), message)


class CancelWatch:
    """Watches ``<root>.s.*.ctl`` in this process: keeps one event per canceled session, and sets the
    event of each piece of interruptible work an interrupt names."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._events: Bounded[asyncio.Event] = Bounded(10_000)
        self._listener: Listener[SessionCancel | SessionInterrupt] | None = None
        #: work in progress that an interrupt stops: (session, thread) -> its events
        self._interrupts: dict[tuple[str, str], list[asyncio.Event]] = {}
        #: the interrupt that stopped each interrupted piece of work
        self._stopped_by: dict[int, SessionInterrupt] = {}
        self._users = 0  # the actors of this process that started it (lead and workers share one)

    async def start(self) -> None:
        self._users += 1
        if self._listener is None:
            self._listener = await self.bus.listen(
                self.bus.subjects.all_ctl, SessionCancel | SessionInterrupt, self._on_control
            )

    async def stop(self) -> None:
        self._users = max(0, self._users - 1)
        if self._users == 0 and self._listener is not None:
            await self._listener.close()
            self._listener = None

    def _on_control(self, message: SessionCancel | SessionInterrupt) -> None:
        if isinstance(message, SessionCancel):
            log.info("session_cancel_seen", session_id=message.session_id, reason=message.reason)
            self.event(message.session_id).set()
            return
        hit = 0
        for (session_id, thread_id), events in self._interrupts.items():
            if session_id == message.session_id and message.thread_id in ("", thread_id):
                for event in events:
                    self._stopped_by[id(event)] = message
                    event.set()
                    hit += 1
        log.info(
            "session_interrupt_seen",
            session_id=message.session_id,
            thread_id=message.thread_id or "*",
            stopped=hit,
        )

    @contextlib.contextmanager
    def interrupts(self, session_id: str, thread_id: str) -> Iterator[asyncio.Event]:
        """An event set when an interrupt names this thread (or all of the session's), while the
        ``with`` block runs: the work in it races the event. ``interrupt_of(event)`` is the interrupt."""
        event = asyncio.Event()
        key = (session_id, thread_id)
        self._interrupts.setdefault(key, []).append(event)
        try:
            yield event
        finally:
            events = self._interrupts.get(key, [])
            if event in events:
                events.remove(event)
            if not events:
                self._interrupts.pop(key, None)
            self._stopped_by.pop(id(event), None)

    def interrupt_of(self, event: asyncio.Event) -> SessionInterrupt | None:
        """The interrupt that set ``event`` (None while it is not set)."""
        return self._stopped_by.get(id(event))

    def event(self, session_id: str) -> asyncio.Event:
        event = self._events.get(session_id)
        if event is None:
            event = self._events[session_id] = asyncio.Event()
        return event

    def forget(self, session_id: str) -> None:
        self._events.pop(session_id, None)


#: how long cancelled work may take to stop before the caller goes on without it
STOP_GRACE = 5.0


async def race_cancel(work: asyncio.Future[Any], *events: tuple[asyncio.Event, str]) -> str:
    """Wait for ``work`` or the first of ``events`` (each with its name); cancel ``work`` if an
    event wins, and return that event's name (or ``"done"``). Cancelled work gets ``STOP_GRACE``
    seconds to stop; work that does not is logged with where it is stuck, and left to finish alone
    (the caller goes on: a stop that never returns would hang the session)."""
    waiters = {asyncio.ensure_future(event.wait()): name for event, name in events}
    try:
        done, _ = await asyncio.wait({work, *waiters}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        work.cancel()  # we are being cancelled: the work goes with us, never orphaned
        await _stopped(work)
        raise
    finally:
        for waiter in waiters:
            waiter.cancel()
    if work in done:
        return "done"
    work.cancel()
    await _stopped(work)
    for waiter, name in waiters.items():
        if waiter in done:
            return name
    return "done"


async def _stopped(work: asyncio.Future[Any]) -> None:
    """Wait up to ``STOP_GRACE`` for cancelled ``work`` to end."""
    done, _ = await asyncio.wait({work}, timeout=STOP_GRACE)
    if done:
        return
    where = ""
    if isinstance(work, asyncio.Task):
        frames = work.get_stack()
        where = " < ".join(
            f"{f.f_code.co_name} ({f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno})" for f in frames
        )
    log.warning("work_did_not_stop", after_s=STOP_GRACE, where=where)
    work.add_done_callback(lambda task: task.cancelled() or task.exception())  # its end, retrieved
