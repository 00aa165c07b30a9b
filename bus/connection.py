"""The connection to NATS: one client with reconnect-forever, logged errors, and typed publishing.

:class:`Bus` keeps the nats client and its JetStream context private (``_nc``, ``_js``: only
``bus/`` uses them) and offers publishing, requests (:meth:`Bus.request`: :class:`NoResponders` at
once, :class:`BusTimeout`), subscriptions and KV. :func:`translated` maps nats-py's exceptions to
ours, in one place. Publishing a message stamps it with ``Nats-Msg-Id`` (its ``msg_id``: JetStream
stores a repeat once) and the ``traceparent`` of the span in progress. ``close()`` drains: buffered
publishes and acks are flushed and subscriptions finish before the socket closes.

:meth:`Bus.connect` takes the servers and the identity as :class:`~bus.options.NatsOptions` (by
default from the ``STAFFWORK_NATS_*`` environment); a refused identity is one line naming it, never a
secret. The server's permission violations, which reach only the error callback, are kept on
:attr:`Bus.permission_errors`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import ssl
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar, overload

import msgspec
import nats
import nats.errors
import nats.js.errors
import structlog
from nats.aio.client import Client as NATS

from bus.codec import DEFAULT_MAX_BYTES, Decoder, encode
from bus.errors import BusError, BusTimeout, BusUnavailable, NoResponders, ServerRefused
from bus.failover import FailoverJetStream
from bus.options import NatsOptions
from bus.state import KV, Listener, Rejected, Responder, follow, follow_raw
from bus.subjects import JetStreamApi, Subjects
from bus.tracing import SpanContext, current_span
from schemas.base import Message
from schemas.trace import MessageRejected as MessageRejectedEvent
from schemas.trace import TraceEvent, event_kind

log = structlog.get_logger("staffwork.bus")

DEFAULT_URL = "nats://127.0.0.1:4222"
MSG_ID = "Nats-Msg-Id"
TRACEPARENT = "traceparent"
REPLY_TO = "Sw-Reply-To"
API_TIMEOUT = 10.0  # JetStream API calls (stream info, direct get, purge, ...)


T = TypeVar("T")


@dataclass(frozen=True)
class ServerInfo:
    version: str
    max_payload: int  # bytes
    rtt: float  # seconds
    cluster: str = ""  # the cluster's name; "" for a server on its own
    cluster_size: int = 1  # servers in the cluster, as the server announced them when we connected


@dataclass(frozen=True)
class StreamSummary:
    messages: int
    replicas: int
    leader: str = ""  # the server leading the stream in a cluster


class NotFound(BusError):
    """A stream, consumer or message that is not there (raised inside ``bus`` only)."""


@contextlib.contextmanager
def translated(
    operation: str, subject: str, url: str, *, timeout: float = API_TIMEOUT, hint: str = ""
) -> Iterator[None]:
    """nats-py's exceptions become the project's (the one place that maps them, as httpx maps its
    transport's): no responders, timeouts, a closed connection, a missing resource, other errors."""
    try:
        yield
    except nats.js.errors.NoStreamResponseError as exc:  # before NoResponders: it is one
        raise BusError(
            f"no stream stores subject {subject!r}: was the bus provisioned for this root?"
        ) from exc
    except nats.errors.NoRespondersError as exc:
        raise NoResponders(subject, hint) from exc
    except nats.js.errors.ServiceUnavailableError as exc:
        raise BusError("JetStream is not enabled on this server") from exc
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise BusTimeout(operation, subject, timeout) from exc
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError) as exc:
        raise BusUnavailable(url, "connection closed") from exc
    except nats.js.errors.NotFoundError as exc:
        raise NotFound(f"{operation}: {subject!r} not found") from exc
    except nats.js.errors.APIError as exc:
        raise ServerRefused(operation, subject, exc.err_code or 0, exc.description or str(exc)) from exc
    except nats.errors.Error as exc:
        raise BusError(f"{operation} on {subject!r} failed: {exc}") from exc


def _log_emit_failure(future: asyncio.Future[Any]) -> None:
    if future.cancelled():
        return
    if (exc := future.exception()) is not None:
        log.warning("trace_event_not_stored", error=repr(exc))


PERMISSIONS_VIOLATION = "permissions violation"  # nats-py hands the server's -ERR over lowercased


def _refusal(cause: BaseException, options: NatsOptions, timeout: float) -> str:
    """Why the first connection failed, in words: for a refused identity or TLS, naming what was used
    (never a secret)."""
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS: the server's certificate is not trusted ({cause.verify_message}; {options.describe()})"
    if isinstance(cause, TimeoutError):
        return f"no answer within {timeout:g}s"
    if isinstance(cause, ssl.SSLError) or (
        options.tls and isinstance(cause, ConnectionError | nats.errors.UnexpectedEOF)
    ):  # a server wanting a client certificate says so, or just hangs up: which one is a race
        said = (cause.reason or str(cause)) if isinstance(cause, ssl.SSLError) else "the server hung up"
        hint = "" if options.tls_cert else ": does it want a client certificate (--tls-cert, --tls-key)?"
        return f"TLS handshake failed: {said} ({options.describe()}){hint}"
    text = str(cause) or type(cause).__name__
    said = text.removeprefix("nats: ").strip("'\" ").lower()
    if "authorization violation" in said or "authentication" in said:  # refused, expired, revoked
        return f"{said} ({options.identity()})"
    return text


async def _abandon(nc: NATS) -> None:
    """Close a client whose first connection failed, within a second: after a failed TLS handshake
    nats-py's close waits for the transport to close, which never happens."""
    with contextlib.suppress(Exception):
        async with asyncio.timeout(1.0):
            await nc.close()


class PermissionErrors:
    """The server's permission violations on one connection, newest last.

    The server reports a refused publish or subscription only asynchronously, through the client's
    error callback; the refused operation itself waits out its deadline. So whoever wants to know
    notes :attr:`count`, does the operation, and waits for :meth:`after` (or, for a subscription,
    :meth:`Bus.settle` and then compares :attr:`count`).
    """

    def __init__(self, keep: int = 64) -> None:
        self.recent: collections.deque[str] = collections.deque(maxlen=keep)
        self.count = 0  # every one so far, also those no longer in ``recent``
        #: Set while someone tries operations that may be refused on purpose (``doctor``): the
        #: violations are then logged at debug level, not as warnings.
        self.probing = False
        self._arrived = asyncio.Event()

    def add(self, text: str) -> None:
        self.recent.append(text)
        self.count += 1
        self._arrived.set()
        self._arrived = asyncio.Event()

    def since(self, mark: int) -> list[str]:
        """The violations reported after :attr:`count` was ``mark`` (those still kept)."""
        return (
            list(self.recent)[max(mark - (self.count - len(self.recent)), 0) :] if self.count > mark else []
        )

    async def after(self, mark: int) -> str:
        """The first violation reported after :attr:`count` was ``mark``, waiting for it."""
        while self.count <= mark:
            await self._arrived.wait()
        return self.since(mark)[0]


class Bus:
    """A connected client. Use :meth:`connect`; close with :meth:`close` or ``async with``."""

    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        url: str,
        online: asyncio.Event | None = None,
        *,
        options: NatsOptions | None = None,
        permission_errors: PermissionErrors | None = None,
    ) -> None:
        self._nc = nc
        self.api_timeout = API_TIMEOUT
        self._js = FailoverJetStream(nc, timeout=self.api_timeout)
        self.subjects = subjects
        self.url = url
        #: The servers and identity this connection was made with (never print its secrets:
        #: ``options.describe()`` names the identity without them).
        self.options = options or NatsOptions().with_servers(url)
        #: The server's permission violations on this connection (see :class:`PermissionErrors`).
        self.permission_errors = permission_errors or PermissionErrors()
        self._stream_slots: asyncio.Semaphore | None = None
        self._kvs: dict[str, KV] = {}  # the design's buckets, looked up once (see kv())
        self._flushes: set[asyncio.Future[None]] = set()  # settle()'s flushes, until they end
        #: Set while connected; pullers wait on it rather than buffer requests during an outage.
        self.online = online or asyncio.Event()
        if nc.is_connected:
            self.online.set()

    @classmethod
    async def connect(
        cls,
        url: str | None = None,
        *,
        root: str = "sw",
        name: str = "staffwork",
        timeout: float = 10.0,
        options: NatsOptions | None = None,
    ) -> Bus:
        """Connect to ``url`` (one URL or a comma-separated list), then reconnect forever;
        :class:`BusUnavailable` if the first try fails, naming the identity when the server refuses it.

        ``options`` holds the credentials and TLS (default: :meth:`NatsOptions.from_env`, so every
        process started with the ``STAFFWORK_NATS_*`` variables uses them); without ``url``, its
        servers are used, else :data:`DEFAULT_URL`.
        """
        options = NatsOptions.from_env(os.environ) if options is None else options
        if url is not None or not options.servers:
            options = options.with_servers(url or DEFAULT_URL)
        shown = options.shown_servers
        kwargs = options.connect_kwargs()  # a ConfigError (an unusable TLS file, say) before any I/O
        subjects = Subjects(root)
        bound = log.bind(client=name, url=shown)

        connected = False
        first_errors: list[Exception] = []
        online = asyncio.Event()
        denials = PermissionErrors()

        async def error_cb(exc: Exception) -> None:
            if not connected:
                first_errors.append(exc)  # raised as BusUnavailable below, with this cause
                return
            if PERMISSIONS_VIOLATION in str(exc).lower():
                denials.add(str(exc).removeprefix("nats: "))
                if denials.probing:  # asked for on purpose (doctor): reported by whoever probes
                    bound.debug("nats_error", error=repr(exc))
                    return
            # Permission denials and slow-consumer drops reach only this callback; never hide them.
            bound.warning("nats_error", error=repr(exc))

        async def disconnected_cb() -> None:
            online.clear()
            bound.info("nats_disconnected")

        async def reconnected_cb() -> None:
            online.set()
            bound.info("nats_reconnected")

        nc = NATS()
        try:
            async with asyncio.timeout(timeout):
                await nc.connect(
                    **kwargs,
                    name=name,
                    connect_timeout=max(1, int(min(timeout, 5.0))),
                    max_reconnect_attempts=1,  # 0 would mean "forever" to nats-py's server selection
                    reconnect_time_wait=1,
                    error_cb=error_cb,
                    disconnected_cb=disconnected_cb,
                    reconnected_cb=reconnected_cb,
                    drain_timeout=5,  # in-flight work is finished by the runtime before; this only flushes
                    allow_reconnect=False,
                )
        except (OSError, TimeoutError, nats.errors.Error) as exc:
            await _abandon(nc)
            cause = first_errors[-1] if isinstance(exc, nats.errors.NoServersError) and first_errors else exc
            raise BusUnavailable(shown, _refusal(cause, options, timeout)) from exc
        if options.tls and not nc._server_info.get("tls_required"):
            # nats-py upgrades to TLS only when the server asks for it: refuse to go on in plain text.
            await _abandon(nc)
            raise BusUnavailable(
                shown, f"TLS was asked for ({options.describe()}) but the server does not require TLS"
            )
        # Reconnect forever from now on; the first connection attempt above fails fast instead
        # (with -1 attempts nats-py's initial connect would retry forever against a dead URL).
        nc.options["allow_reconnect"] = True
        nc.options["max_reconnect_attempts"] = -1
        connected = True
        return cls(nc, subjects, shown, online, options=options, permission_errors=denials)

    async def close(self) -> None:
        """Drain (flush pending publishes and acks, finish subscriptions), then close."""
        if self._nc.is_closed:
            return
        await self._js.aclose()  # trace events still being sent again after a failover
        try:
            await self._nc.drain()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("nats_drain_failed", error=repr(exc))
            await self._nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    # --- publishing -----------------------------------------------------------------------------

    def headers(self, msg_id: str | None = None, extra: dict[str, str] | None = None) -> dict[str, str]:
        span = current_span.get() or SpanContext.new_root()
        headers = {TRACEPARENT: span.traceparent}
        if msg_id:
            headers[MSG_ID] = msg_id
        if extra:
            headers.update(extra)
        return headers

    async def publish(
        self,
        subject: str,
        msg: Message,
        *,
        msg_id: str | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 10.0,
    ) -> int:
        """Store ``msg`` durably on ``subject`` and return its stream sequence.

        The dedup id is ``msg_id`` if given, else the message's own ``msg_id``.
        """
        return await self.publish_bytes(
            subject, encode(msg), headers=self.headers(msg_id or msg.msg_id, headers), timeout=timeout
        )

    async def publish_bytes(
        self, subject: str, data: bytes, *, headers: dict[str, str] | None = None, timeout: float = 10.0
    ) -> int:
        return int((await self._store(subject, data, headers, timeout)).seq)

    async def _store(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float) -> Any:
        """A JetStream publish with nats-py's errors translated; returns the PubAck."""
        with translated("publish", subject, self.url, timeout=timeout):
            return await self._js.publish(subject, data, timeout=timeout, headers=headers)

    async def emit(self, event: TraceEvent) -> None:
        """Publish a trace event on its session's event subject, stamped with the current span.

        Pipelined: it does not wait for JetStream's ack (the work it describes need not wait for
        the audit trail). Events from one connection are stored in the order they are emitted, and
        before anything published after them; a rejected one is logged.
        """
        span = current_span.get()
        if span is not None and not event.span_id:
            event = msgspec.structs.replace(event, span_id=span.span_id, parent_span_id=span.parent_span_id)
        subject = self.subjects.event(event.session_id, event_kind(event))
        headers = self.headers(event.msg_id)
        with translated("publish a trace event", subject, self.url):
            future = await self._js.publish_async(subject, encode(event), headers=headers)
        future.add_done_callback(_log_emit_failure)

    async def emit_rejected(
        self,
        subject: str,
        data: bytes,
        reason: str,
        *,
        actor: str,
        session_id: str = "",
        thread_id: str = "",
        agent: str = "",
        msg_id: str = "",
    ) -> None:
        """Report a message that was rejected (undecodable, or not from its producer) as a
        ``bus.message_rejected`` event with a preview of the payload. Best effort: the work goes on
        whether or not the event can be published (a failure is logged)."""
        event = MessageRejectedEvent(
            session_id=session_id,
            thread_id=thread_id,
            agent=agent,
            subject=subject,
            actor=actor,
            reason=reason,
            size=len(data),
            preview=data[:200].decode("utf-8", errors="replace"),
        )
        if msg_id:  # a stable id: the same rejection reported again is stored once
            event = msgspec.structs.replace(event, msg_id=msg_id)
        try:
            await self.emit(event)
        except Exception as exc:
            log.warning("reject_event_failed", subject=subject, error=repr(exc))

    async def publish_core(
        self, subject: str, msg: Message, *, headers: dict[str, str] | None = None
    ) -> None:
        """Publish without JetStream (no storage, no ack): for replies to inboxes."""
        with translated("publish", subject, self.url):
            await self._nc.publish(subject, encode(msg), headers=self.headers(None, headers))

    def stream_slots(self, limit: int) -> asyncio.Semaphore:
        """Bounds the large reads (file streams) in flight on this connection at once."""
        if self._stream_slots is None:
            self._stream_slots = asyncio.Semaphore(limit)
        return self._stream_slots

    async def kv(self, bucket: str) -> KV:
        """A KV bucket (it must exist: provisioning creates the design's buckets).

        The design's own buckets (sessions, registry, webhooks, dreams, the HTTP API's records) are
        looked up once per connection: finding a bucket is a stream-info round trip, which the hot
        path would otherwise pay on every read. Memory stores come and go, so they are looked up
        each time."""
        cached = self._kvs.get(bucket)
        if cached is not None:
            return cached
        try:
            kv = KV(await self._js.key_value(bucket), bucket, self._js)
        except nats.js.errors.BucketNotFoundError as exc:
            raise BusError(f"KV bucket {bucket!r} does not exist: was the bus provisioned?") from exc
        s = self.subjects
        if bucket in (s.sessions_bucket, s.registry_bucket, s.webhooks_bucket, s.dreams_bucket, s.api_bucket):
            self._kvs[bucket] = kv
        return kv

    @overload
    async def listen(
        self,
        subject: str,
        type: type[T],
        callback: Callable[[T], Awaitable[None] | None],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        queue: str = "",
        on_rejected: Rejected | None = None,
    ) -> Listener[T]: ...
    @overload
    async def listen(
        self,
        subject: str,
        type: Any,
        callback: Callable[[Any], Awaitable[None] | None],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        queue: str = "",
        on_rejected: Rejected | None = None,
    ) -> Listener[Any]: ...
    async def listen(
        self,
        subject: str,
        type: Any,
        callback: Callable[[Any], Awaitable[None] | None],
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        queue: str = "",
        on_rejected: Rejected | None = None,
    ) -> Listener[Any]:
        """Subscribe to ``subject`` (core, not durable), decoding each message into ``type``; with
        ``queue``, one subscriber of the group gets each message. An undecodable message is logged
        and, with ``on_rejected``, handed to it (subject, payload, reason)."""
        listener: Listener[Any] = Listener(Decoder(type, max_bytes=max_bytes), callback, on_rejected)
        with translated("subscribe", subject, self.url):
            listener._sub = await self._nc.subscribe(subject, queue=queue, cb=listener._on_message)
        return listener

    async def respond(
        self, subject: str, handler: Callable[[bytes], Awaitable[bytes]], *, queue: str
    ) -> Responder:
        """Answer requests on ``subject``; every process with the same ``queue`` shares them."""
        responder = Responder(handler)
        responder._nc = self._nc
        with translated("subscribe", subject, self.url):
            responder._sub = await self._nc.subscribe(subject, queue=queue, cb=responder._on_request)
        return responder

    async def request(
        self, subject: str, payload: Message | bytes, *, timeout: float, hint: str = ""
    ) -> bytes:
        """Ask whoever answers on ``subject`` (core request/reply) and return the answer's payload.

        :class:`NoResponders` at once when nobody listens (``hint`` says what to start),
        :class:`BusTimeout` when nobody answers within ``timeout`` seconds.
        """
        data = payload if isinstance(payload, bytes) else encode(payload)
        return (await self.request_raw(subject, data, timeout=timeout, hint=hint))[0]

    async def request_raw(
        self,
        subject: str,
        data: bytes,
        *,
        timeout: float,
        headers: dict[str, str] | None = None,
        hint: str = "",
    ) -> tuple[bytes, dict[str, str]]:
        """:meth:`request` with headers both ways: the answer's payload and its headers."""
        with translated("request", subject, self.url, timeout=timeout, hint=hint):
            async with asyncio.timeout(timeout):
                answer = await self._nc.request(subject, data, timeout=timeout, headers=headers)
        return bytes(answer.data), dict(answer.headers or {})

    async def publish_once(self, subject: str, msg: Message, *, msg_id: str, timeout: float = 10.0) -> bool:
        """Store ``msg`` unless a message with ``msg_id`` was stored within the dedup window.

        True if it was stored now, False if JetStream recognised it as a duplicate.
        """
        ack = await self._store(subject, encode(msg), self.headers(msg_id), timeout)
        return not ack.duplicate

    @overload
    def follow(self, subject: str, type: type[T]) -> AsyncGenerator[T, None]: ...
    @overload
    def follow(self, subject: str, type: Any) -> AsyncGenerator[Any, None]: ...
    def follow(self, subject: str, type: Any) -> AsyncGenerator[Any, None]:
        """Messages on ``subject`` in the log stream from the first stored one, then live."""
        return follow(self._js, self.subjects.log_stream, subject, Decoder(type, max_bytes=4 * 1024 * 1024))

    async def consumer_active(self, durable: str) -> bool:
        """Whether some worker is pulling from the consumer right now (it has waiting pull requests)."""
        info = await self._consumer_info(durable)
        return info is not None and bool(info.num_waiting)

    async def consumer_backlog(self, durable: str) -> int:
        """Messages the consumer has not settled yet: pending delivery plus delivered and unacked."""
        info = await self._consumer_info(durable)
        return 0 if info is None else int(info.num_pending) + int(info.num_ack_pending)

    async def _consumer_info(self, durable: str) -> Any:
        """The log stream's consumer ``durable`` as the server sees it now, or None if it is not there."""
        try:
            with translated("consumer info", durable, self.url):
                return await self._js.consumer_info(self.subjects.log_stream, durable)
        except NotFound:
            return None

    async def last(self, subject: str) -> bytes | None:
        """The last message stored on ``subject`` in the log stream, or None."""
        hint = f"no log stream for root {self.subjects.root!r}: was the bus provisioned?"
        try:
            with translated("read last message", subject, self.url, timeout=self.api_timeout, hint=hint):
                raw = await self._js.get_last_msg(self.subjects.log_stream, subject, direct=True)
        except NotFound:
            return None
        return raw.data or None

    async def server_info(self, timeout: float = 5.0) -> ServerInfo:
        """The connected server's version and limits, and the round trip to it."""
        with translated("ping", "(server)", self.url, timeout=timeout):
            async with asyncio.timeout(timeout):
                rtt = await self._nc.rtt()
        info = self._nc._server_info  # nats-py keeps the server's INFO only here
        return ServerInfo(
            version=str(info.get("version", "?")),
            max_payload=int(info.get("max_payload", 0)),
            rtt=rtt,
            cluster=str(info.get("cluster") or ""),
            cluster_size=len(set(info.get("connect_urls") or ())) or 1,
        )

    async def stream_messages(self, stream: str, timeout: float = 5.0) -> int | None:
        """How many messages ``stream`` holds, or None if there is no such stream."""
        summary = await self.stream_summary(stream, timeout)
        return None if summary is None else summary.messages

    async def stream_summary(self, stream: str, timeout: float = 5.0) -> StreamSummary | None:
        """``stream``'s message count, replicas and cluster leader, or None if there is no such stream."""
        try:
            with translated("stream info", stream, self.url, timeout=timeout):
                async with asyncio.timeout(timeout):
                    info = await self._js.stream_info(stream)
        except NotFound:
            return None
        cluster = info.cluster
        return StreamSummary(
            messages=int(info.state.messages),
            replicas=int(info.config.num_replicas or 1),
            leader=str(getattr(cluster, "leader", None) or ""),
        )

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until the server has handled everything sent so far and its answers have been read:
        after it, a subscription the server refused is in :attr:`permission_errors`."""
        with translated("flush", "(server)", self.url, timeout=timeout):
            async with asyncio.timeout(timeout):
                # nats-py writes its PING ahead of the commands it still buffers (a SUB, say), so
                # those go out first; then the PONG comes after the server's answer to them.
                await self._nc._flush_pending(force_flush=True)
                # Shielded: a flush cancelled midway leaves its cancelled future among nats-py's
                # PONG waiters, and that PONG then raises in its read loop (InvalidStateError),
                # stranding what came after it in the read buffer (a permission error, say) until
                # more bytes arrive. A cancelled settle lets its flush finish instead.
                flush = asyncio.ensure_future(self._nc.flush(timeout=max(1, int(timeout))))
                self._flushes.add(flush)
                flush.add_done_callback(self._flush_done)
                await asyncio.shield(flush)

    def _flush_done(self, flush: asyncio.Future[None]) -> None:
        self._flushes.discard(flush)
        if not flush.cancelled():
            flush.exception()  # retrieved: a flush nobody waits for any more may fail unseen

    async def account_info(self, timeout: float = 5.0) -> Any:
        """JetStream account info: proves JetStream is enabled and reachable."""
        with translated("JetStream account info", "$JS.API.INFO", self.url, timeout=timeout):
            async with asyncio.timeout(timeout):
                return await self._js.account_info()

    async def stored_message(self, stream: str, seq: int, timeout: float = 5.0) -> tuple[str, bytes] | None:
        """The subject and payload stored at sequence ``seq`` of ``stream``, or None if it is gone."""
        try:
            with translated("read stored message", f"{stream}#{seq}", self.url, timeout=timeout):
                async with asyncio.timeout(timeout):
                    raw = await self._js.get_msg(stream, seq, direct=True)
        except NotFound:
            return None
        return str(raw.subject or ""), bytes(raw.data or b"")

    async def on_max_deliveries(
        self,
        stream: str,
        callback: Callable[[MaxDeliveries], Awaitable[None] | None],
        *,
        consumer: str = "*",
        queue: str = "",
    ) -> Listener[MaxDeliveries]:
        """Call ``callback`` each time the server gives up on a message of ``stream``'s ``consumer``
        (``*``: any) after its ``max_deliver`` deliveries: JetStream's max-deliveries advisory, which
        the server publishes on ``$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>``
        and does not store. With ``queue``, one subscriber of the group gets each advisory."""
        subject = JetStreamApi.max_deliveries(stream, consumer)
        return await self.listen(subject, MaxDeliveries, callback, queue=queue)

    async def follow_raw(self, subject: str) -> AsyncGenerator[bytes, None]:
        """The payloads stored on ``subject`` in the log stream from the first, then live ones, as
        they are (undecodable ones included: the caller decides what to reject)."""
        async with contextlib.aclosing(follow_raw(self._js, self.subjects.log_stream, subject)) as messages:
            async for msg in messages:
                yield bytes(msg.data)

    async def consumer_served(self, durable: str) -> bool:
        """Whether some worker serves the consumer now: it waits for messages (pull requests) or
        holds some it has not settled yet (busy at its concurrency, it sends no pull request)."""
        info = await self._consumer_info(durable)
        return info is not None and bool(info.num_waiting or info.num_ack_pending)


class MaxDeliveries(msgspec.Struct, frozen=True, kw_only=True):
    """JetStream's max-deliveries advisory (``io.nats.jetstream.advisory.v1.max_deliver``): the
    message at ``stream_seq`` was delivered ``deliveries`` times and will not be delivered again."""

    stream: str
    consumer: str
    stream_seq: int
    deliveries: int = 0
