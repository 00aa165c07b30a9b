"""Small typed views of JetStream for actors: a KV bucket, a decoding subscription, the last message.

Actors use these instead of nats-py, so the transport stays in ``bus/``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Generic, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue

from bus.codec import Decoder
from bus.errors import BusError, BusTimeout, MessageRejected
from bus.subjects import JetStreamApi

T = TypeVar("T")
log = structlog.get_logger("staffwork.bus")


class KV:
    """One KV bucket: ``get``, ``create`` (only if absent), ``put``; errors translated."""

    def __init__(self, kv: KeyValue, bucket: str, js: Any) -> None:
        self._kv = kv
        self.bucket = bucket
        self._js = js  # for keys(): a race-free listing

    async def get(self, key: str) -> bytes | None:
        current = await self.entry(key)
        return current[0] if current else None

    async def entry(self, key: str) -> tuple[bytes, int] | None:
        """The value and its revision (for :meth:`update`), or None."""
        try:
            entry = await self._kv.get(key)
        except nats.js.errors.KeyNotFoundError:
            return None
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise BusTimeout("KV get", f"{self.bucket}/{key}", 10.0) from exc
        if not entry.value or entry.revision is None:
            return None
        return entry.value, entry.revision

    async def update(self, key: str, value: bytes, revision: int) -> bool:
        """Replace the value if it is still at ``revision``; False if someone changed it since."""
        try:
            await self._kv.update(key, value, last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except nats.js.errors.APIError as exc:
            raise BusError(f"KV update {self.bucket}/{key} failed: {exc.description}") from exc
        return True

    async def keys(self, prefix: str = "") -> list[str]:
        """The keys (optionally only those starting with ``prefix``), sorted; [] for an empty bucket."""
        head = JetStreamApi.kv_key(self.bucket, "")
        found: list[str] = []
        stream, every = JetStreamApi.kv_stream(self.bucket), JetStreamApi.kv_key(self.bucket)
        async for msg in last_per_subject(self._js, stream, every, headers_only=True):
            if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                continue  # deleted: its last message is the delete marker
            key = msg.subject[len(head) :]
            if key.startswith(prefix):
                found.append(key)
        return sorted(found)

    async def values(self, pattern: str = ">") -> list[tuple[str, bytes]]:
        """Every live key matching ``pattern`` (subject wildcards over the key's dot-separated
        tokens) with its value, in one read, sorted by key."""
        head = JetStreamApi.kv_key(self.bucket, "")
        found: list[tuple[str, bytes]] = []
        stream, wanted = JetStreamApi.kv_stream(self.bucket), JetStreamApi.kv_key(self.bucket, pattern)
        async for msg in last_per_subject(self._js, stream, wanted):
            if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
                continue
            found.append((msg.subject[len(head) :], msg.data))
        return sorted(found)

    async def create(self, key: str, value: bytes) -> bool:
        """Store ``value`` unless ``key`` exists; False if it did."""
        try:
            await self._kv.create(key, value)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        except nats.js.errors.APIError as exc:
            raise BusError(f"KV create {self.bucket}/{key} failed: {exc.description}") from exc
        return True

    async def put(self, key: str, value: bytes) -> None:
        try:
            await self._kv.put(key, value)
        except nats.js.errors.APIError as exc:
            raise BusError(f"KV put {self.bucket}/{key} failed: {exc.description}") from exc


class Responder:
    """Answers requests on a subject (in a queue group, so several processes share the work).

    The handler gets the raw payload (so it can report malformed input itself) and returns the reply
    bytes. Replies are published to the request's reply subject without echoing its headers.
    """

    def __init__(self, handler: Callable[[bytes], Awaitable[bytes]]) -> None:
        self._handler = handler
        self._sub: Subscription | None = None
        self._nc: Any = None

    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            answer = await self._handler(msg.data)
        except Exception:
            log.exception("responder_failed", subject=msg.subject)
            return
        with contextlib.suppress(nats.errors.Error):
            await self._nc.publish(msg.reply, answer)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None


async def follow_raw(js: Any, stream: str, subject: str) -> AsyncGenerator[Msg, None]:
    """Every message stored on ``subject`` from the first, then new ones as they come (an ordered
    consumer), as they are."""
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        async for msg in sub.messages:
            yield msg
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()


async def follow(js: Any, stream: str, subject: str, decoder: Decoder[T]) -> AsyncGenerator[T, None]:
    """:func:`follow_raw`, decoded; messages that do not decode are skipped."""
    async with contextlib.aclosing(follow_raw(js, stream, subject)) as messages:
        async for msg in messages:
            try:
                yield decoder.decode(msg.data, subject=msg.subject)
            except MessageRejected:
                continue


#: What a listener hands an undecodable message to: (subject, payload, reason).
Rejected = Callable[[str, bytes, str], Awaitable[None]]


class Listener(Generic[T]):
    """A core subscription that decodes each message into ``T`` and hands it to a callback.

    Undecodable messages are logged and skipped; a failing callback is logged and does not stop
    the listener.
    """

    def __init__(
        self,
        decoder: Decoder[T],
        callback: Callable[[T], Awaitable[None] | None],
        on_rejected: Rejected | None = None,
    ) -> None:
        self._decoder = decoder
        self._callback = callback
        self._on_rejected = on_rejected
        self._sub: Subscription | None = None

    async def _on_message(self, msg: Msg) -> None:
        try:
            value = self._decoder.decode(msg.data, subject=msg.subject)
        except MessageRejected as exc:
            log.warning("listener_rejected", subject=msg.subject, reason=exc.reason)
            if self._on_rejected is not None:
                try:
                    await self._on_rejected(msg.subject, msg.data, exc.reason)
                except Exception:
                    log.exception("listener_reject_report_failed", subject=msg.subject)
            return
        try:
            result = self._callback(value)
            if result is not None:
                await result
        except Exception:
            log.exception("listener_callback_failed", subject=msg.subject)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(nats.errors.Error):
                await self._sub.unsubscribe()
            self._sub = None


_LAST_BATCH = 256


async def last_per_subject(
    js: Any, stream: str, filter_subject: str, *, headers_only: bool = False, timeout: float = 10.0
) -> AsyncIterator[Msg]:
    """The last message of every subject matching ``filter_subject``, via an ephemeral pull consumer
    (memory, no acks, removed after use). Race-free: how many there are is known when the consumer
    is made, before any is delivered (the server's multi-subject direct get stops at 1024 subjects;
    nats-py's KV ``keys()`` can miss keys still in flight). Raises ``nats.js.errors.NotFoundError``
    for a missing stream."""
    config = ConsumerConfig(
        filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        ack_policy=AckPolicy.NONE,
        headers_only=headers_only or None,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=60.0,
    )
    try:
        async with asyncio.timeout(timeout):
            info = await js.add_consumer(stream, config)
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise BusTimeout("read the last messages", filter_subject, timeout) from exc
    remaining = info.num_pending or 0
    psub = await js.pull_subscribe_bind(info.name, stream)
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while remaining > 0:
            try:
                batch = await psub.fetch(min(_LAST_BATCH, remaining), timeout=timeout)
            except (nats.errors.TimeoutError, TimeoutError) as exc:
                raise BusTimeout("read the last messages", filter_subject, timeout) from exc
            except nats.js.errors.ServiceUnavailableError as exc:
                # on a cluster, the server we talk to may not know the new consumer yet (503)
                if loop.time() >= deadline:
                    raise BusTimeout("read the last messages", filter_subject, timeout) from exc
                await asyncio.sleep(0.05)
                continue
            for msg in batch:
                remaining -= 1
                yield msg
    finally:
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await psub.unsubscribe()
        with contextlib.suppress(nats.errors.Error, TimeoutError):
            await js.delete_consumer(stream, info.name)
