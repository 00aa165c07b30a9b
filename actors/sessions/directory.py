"""The session directory: one record per session in the ``<key>_sessions`` KV bucket.

The gateway records a session ``pending`` with its effective team; the lead marks it running and,
at the end, records its end, thread count and usage. Every other role reads the team from here.
Status changes are compare-and-set, and a stopped status is never overwritten. A follow-up turn
(:meth:`SessionDirectory.begin_turn`) takes an ``idle`` session back to ``pending``, one turn at a time.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import TypeVar

import msgspec
import structlog

from bus.connection import Bus
from bus.state import KV
from schemas.base import Usage
from schemas.session import SessionRecord, SessionState
from schemas.team import TeamSpec

log = structlog.get_logger("staffwork.sessions")

STOPPED: frozenset[str] = frozenset({"canceled", "budget_reached", "deadline_reached", "failed"})
TERMINAL: frozenset[str] = frozenset(
    {"idle", "terminated", "canceled", "failed", "budget_reached", "deadline_reached"}
)


T = TypeVar("T")


class Bounded(OrderedDict[str, T]):
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


_record = msgspec.json.Decoder(SessionRecord)


class _Status(msgspec.Struct):
    """A session record's status alone (decoding the team is most of a record's cost)."""

    status: str = "running"


_status = msgspec.json.Decoder(_Status)
_encoder = msgspec.json.Encoder()


class SessionDirectory:
    """Session records in KV, with the teams cached (a session's team never changes)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._teams: Bounded[TeamSpec] = Bounded(1000)

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

    async def begin_turn(self, session_id: str, turn: int, text: str) -> tuple[SessionRecord | None, str]:
        """Claim follow-up ``turn`` of an idle session (compare-and-set: of two claims of one turn,
        one wins). Returns the record and "" when claimed; else the record as it is (None if there is
        no such session) and why not: ``taken`` (that turn was claimed before: a repeat, or a
        conflict if its text differs), ``out_of_order``, ``busy`` (a turn is in progress) or
        ``ended`` (the session stopped for good)."""
        kv = await self._kv()
        for _ in range(10):
            current = await kv.entry(session_id)
            if current is None:
                return None, "unknown"
            record = _record.decode(current[0])
            if record.turn >= turn:
                return record, "taken"
            if turn != record.turn + 1:
                return record, "out_of_order"
            if record.status in ("pending", "running"):
                return record, "busy"
            if record.status != "idle":
                return record, "ended"
            record.turn, record.turn_text, record.turn_started = turn, text, time.time()
            record.status, record.stop_reason, record.ended = "pending", "", 0.0
            if await kv.update(session_id, _encoder.encode(record), current[1]):
                return record, ""
        return await self.get(session_id), "busy"

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

    async def lookup(self, session_id: str) -> tuple[TeamSpec, str] | None:
        """The session's team (cached: it never changes) and its status (read now), in one read;
        None if the session is not recorded."""
        value = await (await self._kv()).get(session_id)
        if not value:
            return None
        team = self._teams.get(session_id)
        if team is not None:
            return team, _status.decode(value).status
        record = _record.decode(value)
        self._teams[session_id] = record.team
        return record.team, record.status

    async def team(self, session_id: str) -> TeamSpec | None:
        cached = self._teams.get(session_id)
        if cached is not None:
            return cached
        record = await self.get(session_id)
        if record is None:
            return None
        self._teams[session_id] = record.team
        return record.team
