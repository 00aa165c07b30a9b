"""Stray messages on a session's reply and verdict subjects: reported once each (by payload digest)
as a ``bus.message_rejected`` event from the lead, then left alone."""

from __future__ import annotations

import hashlib

from bus.connection import Bus
from schemas.thread import LEAD_THREAD


class Strays:
    def __init__(self, bus: Bus, session_id: str, lead: str, *, what: str) -> None:
        self.bus = bus
        self.sid = session_id
        self.lead = lead
        self.what = what  # what a stray is not, leading each reason: "not the grader's verdict"
        self._seen: set[str] = set()  # digests of the stray messages already reported

    async def reject(self, subject: str, data: bytes, reason: str) -> None:
        digest = hashlib.sha256(data).hexdigest()
        if digest in self._seen:
            return
        self._seen.add(digest)
        await self.bus.emit_rejected(
            subject,
            data,
            f"{self.what}: {reason}",
            actor="lead",
            session_id=self.sid,
            thread_id=LEAD_THREAD,
            agent=self.lead,
        )
