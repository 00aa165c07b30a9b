"""Thread history: each thread's conversation as an append-only log in JetStream.

Every model turn, tool call and tool result of a thread is one ``thread.turn.v1`` message on
``<root>.s.<session>.hist.<thread>`` (kept by the log stream). Whoever picks a thread up, after a
crash or for a follow-up, reads the log and continues from its last entry: history lives in
JetStream, never in a worker's memory.

Appends are optimistic: each states the subject's last sequence it saw
(``Nats-Expected-Last-Subject-Sequence``), so two workers can never both extend a thread, and a
retried append after a lost ack is recognised (``Nats-Msg-Id`` = session.thread.index).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bus.codec import Decoder
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import HistoryConflict, ServerRefused
from schemas.conversation import ThreadTurn, Turn

_WRONG_LAST_SEQUENCE = 10071
_decoder: Decoder[ThreadTurn] = Decoder(ThreadTurn, max_bytes=1024 * 1024)


@dataclass
class ThreadHistory:
    session_id: str
    thread_id: str
    entries: list[ThreadTurn] = field(default_factory=list)
    last_seq: int = 0

    @property
    def turns(self) -> list[Turn]:
        return [entry.turn for entry in self.entries]

    @property
    def last(self) -> ThreadTurn | None:
        return self.entries[-1] if self.entries else None

    def has_trigger(self, msg_id: str) -> bool:
        return any(entry.trigger == msg_id for entry in self.entries)


class ThreadLog:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def load(self, session_id: str, thread_id: str) -> ThreadHistory:
        history = ThreadHistory(session_id=session_id, thread_id=thread_id)
        subject = self.bus.subjects.history(session_id, thread_id)
        async for stored in read_subject(self.bus, self.bus.subjects.log_stream, subject):
            history.entries.append(_decoder.decode(stored.data, subject=subject))
            history.last_seq = stored.seq
        return history

    async def append(self, history: ThreadHistory, entry: ThreadTurn) -> None:
        """Append ``entry`` (its ``index`` must be the next one); :class:`HistoryConflict` if taken."""
        if entry.index != len(history.entries):
            raise ValueError(f"entry index {entry.index} does not follow {len(history.entries)} entries")
        subject = self.bus.subjects.history(history.session_id, history.thread_id)
        headers = {"Nats-Expected-Last-Subject-Sequence": str(history.last_seq)}
        try:
            seq = await self.bus.publish(
                subject,
                entry,
                msg_id=f"{history.session_id}.{history.thread_id}.{entry.index}",
                headers=headers,
            )
        except ServerRefused as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise HistoryConflict(history.session_id, history.thread_id, entry.index) from exc
            raise
        history.entries.append(entry)
        history.last_seq = seq
