"""Thread history: each thread's conversation as an append-only log in JetStream.

Every model turn, tool call and tool result of a thread is one ``thread.turn.v1`` message on
``<root>.s.<session>.hist.<thread>`` (kept by the log stream). Whoever picks a thread up, after a
crash or for a follow-up, reads the log and continues from its last entry: history lives in
JetStream, never in a worker's memory.

Appends are optimistic: each states the subject's last sequence it saw
(``Nats-Expected-Last-Subject-Sequence``), so two workers can never both extend a thread, and a
retried append after a lost ack is recognised (``Nats-Msg-Id`` = session.thread.index).

Anyone with publish rights can put a message on a history subject, so a load keeps only the entries
an append made: it decodes, names this session and thread, has the next index, and was stored with
the precondition naming the message before it on the subject (the server checked that header when it
stored the message, and keeps it). Anything else is a stray: logged, reported once as a
``bus.message_rejected`` event and skipped. An append that loses only to strays reads them and tries
again (as it does when a stray took its ``Nats-Msg-Id``, with another id); one that loses to a real
entry raises :class:`HistoryConflict`.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import structlog

from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.direct import StoredMsg, read_subject
from bus.errors import HistoryConflict, MessageRejected, Retryable, ServerRefused
from schemas.conversation import ThreadTurn, Turn

log = structlog.get_logger("staffwork.history")

_WRONG_LAST_SEQUENCE = 10071
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_STRAY_RETRIES = 5  # appends that lose only to strays, in a row, before giving up for now (Retryable)
_REPORTED_MAX = 10_000  # strays this process has reported (each once), most recent kept
_reported: OrderedDict[tuple[str, int], None] = OrderedDict()
_decoder: Decoder[ThreadTurn] = Decoder(ThreadTurn, max_bytes=1024 * 1024)


@dataclass
class ThreadHistory:
    session_id: str
    thread_id: str
    entries: list[ThreadTurn] = field(default_factory=list)
    last_seq: int = 0  # the subject's last stored message, strays included: the next append's precondition
    rejected: list[int] = field(default_factory=list)  # the stream sequences of the strays skipped

    @property
    def turns(self) -> list[Turn]:
        return [entry.turn for entry in self.entries]

    @property
    def last(self) -> ThreadTurn | None:
        return self.entries[-1] if self.entries else None

    def has_trigger(self, msg_id: str) -> bool:
        return any(entry.trigger == msg_id for entry in self.entries)


class ThreadLog:
    """Loads and extends threads' logs. ``reader`` names who reads them in rejection events."""

    def __init__(self, bus: Bus, *, reader: str = "history") -> None:
        self.bus = bus
        self.reader = reader

    async def load(self, session_id: str, thread_id: str) -> ThreadHistory:
        history = ThreadHistory(session_id=session_id, thread_id=thread_id)
        await self._read_after(history)
        return history

    async def append(self, history: ThreadHistory, entry: ThreadTurn) -> None:
        """Append ``entry`` (its ``index`` must be the next one); :class:`HistoryConflict` if another
        writer extended the thread first, :class:`Retryable` if strays kept arriving meanwhile."""
        if entry.index != len(history.entries):
            raise ValueError(f"entry index {entry.index} does not follow {len(history.entries)} entries")
        subject = self.bus.subjects.history(history.session_id, history.thread_id)
        data = encode(entry)
        msg_id = f"{history.session_id}.{history.thread_id}.{entry.index}"
        for _ in range(_STRAY_RETRIES):
            headers = self.bus.headers(msg_id, {_EXPECTED_LAST: str(history.last_seq)})
            try:
                ack = await self.bus._store(subject, data, headers, 10.0)
            except ServerRefused as exc:
                if exc.err_code != _WRONG_LAST_SEQUENCE:
                    raise
                if await self._read_after(history):  # a real entry: another writer owns the thread
                    raise HistoryConflict(history.session_id, history.thread_id, entry.index) from exc
                continue  # only strays came in between: state the new last sequence and try again
            if ack.duplicate and not await self._stored_as(subject, int(ack.seq), data):
                # A stray took this append's Nats-Msg-Id first: JetStream stored nothing. Another id.
                log.warning("history_msg_id_taken", subject=subject, msg_id=msg_id, by_seq=ack.seq)
                msg_id = f"{history.session_id}.{history.thread_id}.{entry.index}.{ack.seq}"
                continue
            history.entries.append(entry)
            history.last_seq = int(ack.seq)
            return
        raise Retryable(
            f"thread {history.thread_id!r} of session {history.session_id!r}: stray messages kept arriving "
            f"on {subject!r} during {_STRAY_RETRIES} appends"
        )

    async def _stored_as(self, subject: str, seq: int, data: bytes) -> bool:
        """Whether ``data`` is what the stream holds at ``seq`` on ``subject`` (a duplicate that is
        this very append, retried within the dedup window)."""
        stream = self.bus.subjects.log_stream
        async for stored in read_subject(self.bus, stream, subject, start_seq=seq, limit=1):
            return stored.seq == seq and stored.data == data
        return False

    async def _read_after(self, history: ThreadHistory) -> int:
        """Read the subject's messages after ``history.last_seq`` into ``history``: the entries an
        append made are added, strays are reported and skipped. How many entries were added."""
        subject = self.bus.subjects.history(history.session_id, history.thread_id)
        stream = self.bus.subjects.log_stream
        added = 0
        async for stored in read_subject(self.bus, stream, subject, start_seq=history.last_seq + 1):
            try:
                entry = self._check(history, stored)
            except MessageRejected as exc:
                history.rejected.append(stored.seq)
                await self._report(history, stored, exc.reason)
            else:
                history.entries.append(entry)
                added += 1
            history.last_seq = stored.seq
        return added

    def _check(self, history: ThreadHistory, stored: StoredMsg) -> ThreadTurn:
        """The entry, if an append made it here; :class:`MessageRejected` saying why not otherwise."""
        stated = stored.headers.get(_EXPECTED_LAST)
        if stated != str(history.last_seq):
            raise MessageRejected(
                f"not appended after the message before it: {_EXPECTED_LAST} is {stated!r}, "
                f"the subject's previous message is {history.last_seq}",
                subject=stored.subject,
                size=len(stored.data),
            )
        entry = _decoder.decode(stored.data, subject=stored.subject)
        if (entry.session_id, entry.thread_id) != (history.session_id, history.thread_id):
            raise MessageRejected(
                f"an entry of session {entry.session_id!r} thread {entry.thread_id!r} on the log of "
                f"session {history.session_id!r} thread {history.thread_id!r}",
                subject=stored.subject,
                size=len(stored.data),
            )
        if entry.index != len(history.entries):
            raise MessageRejected(
                f"index {entry.index} does not follow the {len(history.entries)} entries before it",
                subject=stored.subject,
                size=len(stored.data),
            )
        return entry

    async def _report(self, history: ThreadHistory, stored: StoredMsg, reason: str) -> None:
        """Log a stray and report it as a trace event, once per process (and, through the event's
        dedup id, once per JetStream duplicate window across processes)."""
        key = (stored.subject, stored.seq)
        if key in _reported:
            return
        _reported[key] = None
        if len(_reported) > _REPORTED_MAX:
            _reported.popitem(last=False)
        log.warning("history_entry_rejected", subject=stored.subject, seq=stored.seq, reason=reason)
        await self.bus.emit_rejected(
            stored.subject,
            stored.data,
            reason,
            actor=self.reader,
            session_id=history.session_id,
            thread_id=history.thread_id,
            msg_id=f"rejected-{self.bus.subjects.log_stream}-{stored.seq}",
        )
