"""Reading stored messages back by subject, fast: batched direct gets.

One ``$JS.API.DIRECT.GET`` request returns up to ``batch`` messages of a subject in stream order and
ends with a ``204 EOB`` status; no consumer is created. The workspace reads file chunks this way, and
the thread log reads a thread's history.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats.errors

from bus.connection import Bus
from bus.errors import BusError, BusTimeout


@dataclass(frozen=True, slots=True)
class StoredMsg:
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


async def read_subject(
    bus: Bus,
    stream: str,
    subject: str,
    *,
    limit: int | None = None,
    batch: int = 64,
    timeout: float = 30.0,
    pending_bytes: int = 256 * 1024 * 1024,
) -> AsyncIterator[StoredMsg]:
    """Every message stored on ``subject`` in ``stream`` (at most ``limit``), in stream order."""
    if limit == 0:
        return
    nc = bus.nc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_bytes_limit=pending_bytes)
    try:
        seq = 1
        remaining = limit
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            request = {"seq": seq, "next_by_subj": subject, "batch": size}
            await nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
            got = 0
            more = 0
            while True:
                try:
                    msg = await sub.next_msg(timeout=timeout)
                except (nats.errors.TimeoutError, TimeoutError) as exc:
                    raise BusTimeout("read stored messages", subject, timeout) from exc
                headers = msg.headers or {}
                status = headers.get("Status")
                if status:
                    if status == "204":
                        more = int(headers.get("Nats-Num-Pending", "0"))
                        break
                    if status == "404":
                        break
                    raise BusError(f"reading {subject!r} from {stream!r} failed: status {status}")
                if not headers:  # an API error arrives as a JSON body without headers
                    raise BusError(f"reading {subject!r} from {stream!r} failed: {msg.data[:200]!r}")
                seq = int(headers["Nats-Sequence"]) + 1
                got += 1
                if remaining is not None:
                    remaining -= 1
                yield StoredMsg(
                    subject=headers.get("Nats-Subject", subject), seq=seq - 1, data=msg.data, headers=headers
                )
            if got == 0 or more == 0:
                return
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
