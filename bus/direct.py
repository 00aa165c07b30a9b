"""Reading stored messages back by subject, fast: batched direct gets.

One ``$JS.API.DIRECT.GET`` request returns up to ``batch`` messages of a subject in stream order and
ends with a ``204 EOB`` status; no consumer is created. The workspace reads file chunks this way, and
the thread log reads a thread's history.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import ConsumerConfig, DeliverPolicy

from bus.connection import Bus
from bus.errors import BusError, BusTimeout, NoResponders
from bus.subjects import JetStreamApi


@dataclass(frozen=True, slots=True)
class StoredMsg:
    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


async def next_message(sub: Subscription, timeout: float) -> Msg:
    """The subscription's next message, as nats-py's ``next_msg`` gives it, without the task and
    the uuid4 it makes for every message (a tenth of a busy worker's time went there): a message
    already queued is taken at once. ``TimeoutError`` after ``timeout``."""
    queue: asyncio.Queue[Msg] = sub._pending_queue
    if queue.empty():
        async with asyncio.timeout(timeout):
            msg = await queue.get()
    else:
        msg = queue.get_nowait()
    sub._pending_size -= len(msg.data)  # the slow-consumer accounting next_msg keeps
    queue.task_done()
    return msg


async def read_subject(
    bus: Bus,
    stream: str,
    subject: str,
    *,
    limit: int | None = None,
    batch: int = 64,
    timeout: float = 30.0,
    pending_bytes: int = 256 * 1024 * 1024,
    since: datetime | None = None,
    until_seq: int | None = None,
    start_seq: int = 1,
) -> AsyncGenerator[StoredMsg, None]:
    """Every message stored on ``subject`` (wildcards allowed) in ``stream`` (at most ``limit``; only
    those stored at or after ``since``, from stream sequence ``start_seq`` up to ``until_seq``), in
    stream order."""
    if limit == 0:
        return
    nc = bus._nc
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, pending_bytes_limit=pending_bytes)
    try:
        seq = max(start_seq, 1)
        remaining = limit
        while remaining is None or remaining > 0:
            size = batch if remaining is None else min(batch, remaining)
            request: dict[str, object] = {"seq": seq, "next_by_subj": subject, "batch": size}
            if since is not None and seq == 1:  # the first batch starts at a time, the next ones at a seq
                del request["seq"]
                request["start_time"] = since.astimezone(UTC).isoformat().replace("+00:00", "Z")
            await nc.publish(JetStreamApi.direct_get(stream), json.dumps(request).encode(), reply=inbox)
            got = 0
            more = 0
            while True:
                try:
                    msg = await next_message(sub, timeout)
                except TimeoutError as exc:
                    raise BusTimeout("read stored messages", subject, timeout) from exc
                headers = msg.headers or {}
                status = headers.get("Status")
                if status:
                    if status == "204":
                        more = int(headers.get("Nats-Num-Pending", "0"))
                        break
                    if status == "404":
                        break
                    if status == "503":  # no responders: the stream does not exist
                        raise NoResponders(JetStreamApi.direct_get(stream), f"is there a stream {stream!r}?")
                    raise BusError(f"reading {subject!r} from {stream!r} failed: status {status}")
                if not headers:  # an API error arrives as a JSON body without headers
                    raise BusError(f"reading {subject!r} from {stream!r} failed: {msg.data[:200]!r}")
                seq = int(headers["Nats-Sequence"]) + 1
                if until_seq is not None and seq - 1 > until_seq:
                    return  # past the cutoff (the rest of this batch is too)
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


async def watch_subject(
    bus: Bus,
    stream: str,
    subject: str,
    *,
    start_seq: int | None = None,
    subscribed: asyncio.Event | None = None,
) -> AsyncGenerator[StoredMsg, None]:
    """Messages on ``subject`` (wildcards allowed) as they are stored: from ``start_seq`` when given,
    else only new ones. An ordered consumer: nothing is skipped or repeated, and it survives
    reconnects."""
    config = ConsumerConfig(opt_start_seq=start_seq) if start_seq else None
    sub = await bus._js.subscribe(
        subject,
        stream=stream,
        ordered_consumer=True,
        config=config,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE if start_seq else DeliverPolicy.NEW,
    )
    if subscribed is not None:
        subscribed.set()
    try:
        async for msg in sub.messages:
            yield StoredMsg(
                subject=msg.subject,
                seq=msg.metadata.sequence.stream,
                data=msg.data,
                headers=msg.headers or {},
            )
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def tail_subjects(
    bus: Bus,
    stream: str,
    subjects: list[str],
    *,
    since: datetime | None = None,
    follow: bool = True,
    on_following: Callable[[], None] | None = None,
) -> AsyncGenerator[StoredMsg, None]:
    """Messages on any of ``subjects``, in stream order: the stored ones first (those stored at or
    after ``since``; all of them when not following and no ``since``), then, when following, new
    ones as they are stored, with no gap and no repeat between the two (the stored part ends at the
    stream's last sequence when it starts; the live part starts right after it). ``on_following`` is
    called once the live part is subscribed. Live messages of different subjects come as they arrive.
    """
    cutoff = (await bus._js.stream_info(stream)).state.last_seq
    if since is not None or not follow:
        readers = [read_subject(bus, stream, subject, since=since, until_seq=cutoff) for subject in subjects]
        async with contextlib.aclosing(_merge_ordered(readers)) as stored:
            async for msg in stored:
                yield msg
    if not follow:
        return
    last = cutoff
    queue: asyncio.Queue[StoredMsg] = asyncio.Queue(maxsize=10_000)

    subscribed = [asyncio.Event() for _ in subjects]

    async def pump(subject: str, ready: asyncio.Event) -> None:
        async for msg in watch_subject(bus, stream, subject, start_seq=last + 1, subscribed=ready):
            await queue.put(msg)

    pumps = [
        asyncio.create_task(pump(subject, ready)) for subject, ready in zip(subjects, subscribed, strict=True)
    ]
    getter: asyncio.Future[StoredMsg] | None = None
    try:
        readiness = asyncio.ensure_future(_all_set(subscribed))
        await asyncio.wait([readiness, *pumps], return_when=asyncio.FIRST_COMPLETED)
        readiness.cancel()
        if on_following is not None and all(ready.is_set() for ready in subscribed):
            on_following()
        while True:
            getter = asyncio.ensure_future(queue.get())
            done, _ = await asyncio.wait([getter, *pumps], return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                for pump_task in done:
                    pump_task.result()  # a watcher failed: raise its error
                raise BusError(f"following {', '.join(subjects)} stopped")
            yield getter.result()
    finally:
        if getter is not None:
            getter.cancel()
        for pump_task in pumps:
            pump_task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)


async def _all_set(events: list[asyncio.Event]) -> None:
    for event in events:
        await event.wait()


async def _merge_ordered(readers: list[AsyncGenerator[StoredMsg, None]]) -> AsyncGenerator[StoredMsg, None]:
    """Merge iterators that are each in stream order into one in stream order."""
    heads: list[tuple[int, int, StoredMsg]] = []
    try:
        for index, reader in enumerate(readers):
            first = await anext(reader, None)
            if first is not None:
                heapq.heappush(heads, (first.seq, index, first))
        while heads:
            _, index, msg = heapq.heappop(heads)
            yield msg
            following = await anext(readers[index], None)
            if following is not None:
                heapq.heappush(heads, (following.seq, index, following))
    finally:
        for reader in readers:
            await reader.aclose()
