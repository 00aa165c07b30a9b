"""JetStream through a node's loss: publishes and API calls that outlast a failover.

On a cluster, a replicated stream (the log, a KV bucket, the object store) whose leader died has no
leader for a few seconds (4-6 s after a SIGKILL on one machine) while the others elect one. In that
window the server answers a publish with 503 "no responders" at once (nats-py raises
``NoStreamResponseError``), a request about the stream (its info, a consumer) gets no answer, and a
publish that was on its way to the lost node is never answered. :class:`FailoverJetStream`:

- sends a publish refused with 503 again, with the same headers, until the publish's own deadline
  (on a cluster only: on a single server a 503 means no stream captures the subject), and one that
  JetStream is still storing under the same ``Nats-Msg-Id`` (code 10158) until it is stored;
- sends again a publish with a ``Nats-Msg-Id`` (JetStream stores a repeat once) that was sent
  before the connection was lost, once the client has reconnected, and on a cluster one whose ack
  has not come within 2 s;
- does both for pipelined publishes (``publish_async``), one retry task sending them in the order
  they failed;
- asks again, with a short per-attempt deadline, for stream and consumer info and for a consumer,
  when the request timed out (creating one is idempotent for a durable; an ephemeral one that
  appears late is removed at its inactive threshold).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, ConsumerInfo, PubAck, StreamInfo

log = structlog.get_logger("staffwork.bus")

T = TypeVar("T")

MSG_ID = "Nats-Msg-Id"
_DUPLICATE_IN_PROCESS = 10158
_FIRST_DELAY = 0.05
_MAX_DELAY = 0.5
_API_ATTEMPT = 2.0  # seconds per attempt of an idempotent API request on a cluster
_PUBLISH_ATTEMPT = 2.0  # seconds to wait for the ack of a deduplicated publish on a cluster
_ASYNC_RETRY_WINDOW = 30.0  # how long a failed pipelined publish is tried again


class _InFlight:
    """A pipelined publish awaiting its ack: what to send again, and when it was sent."""

    __slots__ = ("epoch", "headers", "inner", "payload", "subject")

    def __init__(self, subject: str, payload: bytes, headers: dict[str, Any] | None, inner: Any, epoch: int):
        self.subject, self.payload, self.headers, self.inner, self.epoch = (
            subject,
            payload,
            headers,
            inner,
            epoch,
        )


class FailoverJetStream(JetStreamContext):
    """nats-py's JetStream context, retrying what a failover refuses or loses (see the module)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = 0  # connections lost so far
        self._reconnected = asyncio.Event()  # replaced after each reconnect: waiters see "it happened"
        self._in_flight: dict[asyncio.Future[PubAck], _InFlight] = {}
        self._retries: asyncio.Queue[tuple[str, bytes, dict[str, Any] | None, asyncio.Future[PubAck]]] = (
            asyncio.Queue()
        )
        self._retrier: asyncio.Task[None] | None = None
        nc = self._nc
        disconnected, reconnected = nc._disconnected_cb, nc._reconnected_cb

        async def on_disconnected() -> None:
            self._epoch += 1
            if disconnected is not None:
                await disconnected()

        async def on_reconnected() -> None:
            self._on_reconnect()
            if reconnected is not None:
                await reconnected()

        nc._disconnected_cb, nc._reconnected_cb = on_disconnected, on_reconnected

    @property
    def _jsm(self) -> FailoverJetStream:  # nats-py's subscribe and ordered-consumer resets use this
        return self

    @property
    def clustered(self) -> bool:
        info = getattr(self._nc, "_server_info", None) or {}
        return bool(info.get("cluster"))

    def _on_reconnect(self) -> None:
        self._reconnected.set()
        self._reconnected = asyncio.Event()
        lost = [
            (outer, sent)
            for outer, sent in self._in_flight.items()
            if sent.epoch < self._epoch and sent.headers and MSG_ID in sent.headers
        ]
        for outer, sent in lost:
            del self._in_flight[outer]
            sent.inner.cancel()  # its ack would have come over the lost connection; frees its slot
            self._retry_later(sent.subject, sent.payload, sent.headers, outer)
        if lost:
            log.info("publishes_resent_after_reconnect", count=len(lost))

    # --- publishing -----------------------------------------------------------------------------

    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> PubAck:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (timeout if timeout is not None else self._timeout)
        resendable = bool(headers and MSG_ID in headers)
        delay = _FIRST_DELAY
        while True:
            left = max(deadline - loop.time(), 0.001)
            if resendable and self.clustered:
                left = min(left, _PUBLISH_ATTEMPT)
            attempt = super().publish(
                subject, payload, timeout=left, stream=stream, headers=headers, msg_ttl=msg_ttl
            )
            try:
                if not resendable:
                    return await attempt
                ack = await self._unless_lost(attempt)
                if ack is not None:
                    return ack
                log.debug("publish_resent_after_reconnect", subject=subject)
                continue
            except nats.errors.TimeoutError:
                # no ack: lost with a leader that died, or a leader still taking over; the same
                # Nats-Msg-Id makes sending it again safe
                if not (resendable and self.clustered) or loop.time() >= deadline:
                    raise
                log.debug("publish_unacked_resent", subject=subject)
                continue
            except nats.js.errors.NoStreamResponseError:
                if not self.clustered or loop.time() + delay >= deadline:
                    raise
            except nats.js.errors.APIError as exc:
                if exc.err_code != _DUPLICATE_IN_PROCESS or loop.time() + delay >= deadline:
                    raise
            log.debug("publish_retry", subject=subject, retry_in_s=delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY)

    async def _unless_lost(self, attempt: Awaitable[PubAck]) -> PubAck | None:
        """The attempt's ack; None if the connection it went out on was lost and the client has
        reconnected since (the attempt is then cancelled: send it again)."""
        epoch = self._epoch
        task = asyncio.ensure_future(attempt)
        try:
            while not task.done():
                reconnect = asyncio.ensure_future(self._reconnected.wait())
                try:
                    await asyncio.wait({task, reconnect}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    reconnect.cancel()
                if not task.done() and self._epoch > epoch:
                    break  # sent before the connection went: its ack is not coming
        finally:
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        return None if task.cancelled() else task.result()

    async def publish_async(
        self,
        subject: str,
        payload: bytes = b"",
        wait_stall: float | None = None,
        stream: str | None = None,
        headers: dict[str, Any] | None = None,
        msg_ttl: float | None = None,
    ) -> asyncio.Future[PubAck]:
        epoch = self._epoch
        inner = await super().publish_async(
            subject, payload, wait_stall=wait_stall, stream=stream, headers=headers, msg_ttl=msg_ttl
        )
        outer: asyncio.Future[PubAck] = asyncio.get_running_loop().create_future()
        self._in_flight[outer] = _InFlight(subject, payload, headers, inner, epoch)

        def settle(done: asyncio.Future[PubAck]) -> None:
            if self._in_flight.pop(outer, None) is None or outer.done():
                return  # sent again after a reconnect: the retry settles it
            if done.cancelled():
                outer.cancel()
                return
            exc = done.exception()
            retry = (isinstance(exc, nats.js.errors.NoStreamResponseError) and self.clustered) or (
                isinstance(exc, nats.js.errors.APIError) and exc.err_code == _DUPLICATE_IN_PROCESS
            )
            if retry:
                self._retry_later(subject, payload, headers, outer)
            elif exc is not None:
                outer.set_exception(exc)
            else:
                outer.set_result(done.result())

        inner.add_done_callback(settle)
        return outer

    def _retry_later(
        self, subject: str, payload: bytes, headers: dict[str, Any] | None, outer: asyncio.Future[PubAck]
    ) -> None:
        self._retries.put_nowait((subject, payload, headers, outer))
        if self._retrier is None or self._retrier.done():
            self._retrier = asyncio.ensure_future(self._retry_async())

    async def _retry_async(self) -> None:
        """Send failed pipelined publishes again, one at a time, in the order they failed."""
        while not self._retries.empty():
            subject, payload, headers, outer = self._retries.get_nowait()
            if outer.done():
                continue
            try:
                ack = await self.publish(subject, payload, timeout=_ASYNC_RETRY_WINDOW, headers=headers)
            except asyncio.CancelledError:
                outer.cancel()
                raise
            except Exception as exc:
                if not outer.done():
                    outer.set_exception(exc)
            else:
                if not outer.done():
                    outer.set_result(ack)

    # --- idempotent API requests ---------------------------------------------------------------------

    async def _again_on_timeout(self, call: Callable[[float], Awaitable[T]], timeout: float | None) -> T:
        total = timeout or self._timeout
        if not self.clustered:
            return await call(total)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        while True:
            left = deadline - loop.time()
            try:
                return await call(max(min(left, _API_ATTEMPT), 0.001))
            except (nats.errors.TimeoutError, nats.js.errors.ServiceUnavailableError):
                if deadline - loop.time() <= 0:
                    raise
                log.debug("jetstream_api_retry")

    async def stream_info(self, name: str, subjects_filter: str | None = None) -> StreamInfo:
        if subjects_filter is not None:
            return await super().stream_info(name, subjects_filter)

        async def call(timeout: float) -> StreamInfo:  # nats-py's stream_info takes no timeout
            subject = f"{self._prefix}.STREAM.INFO.{name}"
            info: StreamInfo = StreamInfo.from_response(
                await self._api_request(subject, b"", timeout=timeout)
            )
            return info

        return await self._again_on_timeout(call, None)

    async def consumer_info(self, stream: str, consumer: str, timeout: float | None = None) -> ConsumerInfo:
        plain = super().consumer_info
        return await self._again_on_timeout(lambda left: plain(stream, consumer, timeout=left), timeout)

    async def add_consumer(
        self,
        stream: str,
        config: ConsumerConfig | None = None,
        timeout: float | None = None,
        **params: Any,
    ) -> ConsumerInfo:
        plain = super().add_consumer
        return await self._again_on_timeout(lambda left: plain(stream, config, left, **params), timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        """Let the retries finish within ``timeout``, then stop; what still waits fails as cancelled."""
        if self._retrier is not None:
            await asyncio.wait({self._retrier}, timeout=timeout)
            self._retrier.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._retrier
        while not self._retries.empty():
            self._retries.get_nowait()[3].cancel()
