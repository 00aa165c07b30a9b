"""The actor runtime: everything an actor does that is not its behaviour.

An actor is its ``handle(msg, ctx) -> reply``. The runtime, once for every actor:

1. makes sure the actor's durable pull consumer exists (or only binds to it);
2. pulls with bounded concurrency: each pull request asks for as many messages as there are free
   slots, and each message is dispatched the moment it arrives (no waiting for a full batch);
3. decodes into the actor's inbox type; a payload over the size limit, one that is not JSON, or one
   with a wrong tag or field is logged with msgspec's path message, published as a
   ``bus.message_rejected`` trace event and terminated (never redelivered) — the actor carries on;
4. calls ``handle`` in a task of its TaskGroup, with the sender's span as parent and the message's
   session/thread/agent bound to the log context, sending ``in_progress`` heartbeats every third of
   ``ack_wait`` so a long handler is never redelivered while it is alive;
5. publishes the reply (to the ``Sw-Reply-To`` header, or wherever the actor routes it) with a dedup
   id derived from the request, then acks; a :class:`Retryable` failure is nak'ed with backoff, any
   other failure becomes the actor's typed failure reply (if it has one) and a ``session.error``
   event, and the message is terminated;
6. on stop: no new pulls, messages still arriving are nak'ed for another worker, in-flight handlers
   get ``grace`` seconds to finish, the rest are cancelled (and nak'ed), then the connection drains.

A worker that dies mid-message (kill -9) never acks: JetStream redelivers after ``ack_wait``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg

from bus.codec import DEFAULT_MAX_BYTES, Decoder, peek_session
from bus.connection import REPLY_TO, TRACEPARENT, Bus
from bus.errors import MessageRejected, Retryable, StaffworkError
from bus.provision import ConsumerSpec, ensure_consumer
from bus.subjects import Subjects
from bus.tracing import SpanContext, current_span
from schemas.base import ErrorInfo, Message
from schemas.trace import MessageRejected as MessageRejectedEvent
from schemas.trace import SessionErrorEvent

log = structlog.get_logger("staffwork.runtime")

In = TypeVar("In")
In_contra = TypeVar("In_contra", contravariant=True)


@dataclass
class Context:
    """What a handler knows about the message in hand, and the bus to act on."""

    bus: Bus
    subject: str
    headers: Mapping[str, str]
    delivery: int
    stream_seq: int
    span: SpanContext
    log: Any
    reply_to: str | None = None


class Actor(Protocol[In_contra]):
    """An actor's behaviour: which consumer it reads, what it decodes, and how it handles a message."""

    role: str
    inbox: Any

    def consumer(self, subjects: Subjects) -> ConsumerSpec: ...

    async def handle(self, msg: In_contra, ctx: Context) -> Message | None: ...

    def failure(self, msg: In_contra, error: ErrorInfo) -> Message | None: ...

    def reply_subject(self, msg: In_contra, reply: Message, ctx: Context) -> str | None: ...


class BaseActor(Generic[In]):
    """Defaults for the optional parts of :class:`Actor`."""

    role: str = "actor"
    inbox: Any = None

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        raise NotImplementedError(f"actor {self.role!r} must say which consumer it reads")

    async def handle(self, msg: In, ctx: Context) -> Message | None:
        raise NotImplementedError(f"actor {self.role!r} has no handler")

    def failure(self, msg: In, error: ErrorInfo) -> Message | None:
        """The typed failure reply for a message whose handler failed for good (None: no reply)."""
        return None

    def reply_subject(self, msg: In, reply: Message, ctx: Context) -> str | None:
        """Where a reply goes: by default the request's ``Sw-Reply-To`` header."""
        return ctx.reply_to


@dataclass(frozen=True)
class RuntimeSettings:
    concurrency: int = 8
    max_bytes: int = DEFAULT_MAX_BYTES
    grace: float = 30.0
    pull_expires: float = 5.0
    heartbeat: float | None = None  # default: a third of the consumer's ack_wait
    retry_delays: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0)
    create_consumer: bool = True


@dataclass
class _Stats:
    handled: int = 0
    rejected: int = 0
    failed: int = 0
    retried: int = 0
    returned: int = 0
    started: float = field(default_factory=time.monotonic)


class ActorRuntime(Generic[In]):
    """Runs one actor on one connection until ``stop`` is set. See the module docstring."""

    def __init__(self, bus: Bus, actor: Actor[In], settings: RuntimeSettings | None = None) -> None:
        self.bus = bus
        self.actor = actor
        self.settings = settings or RuntimeSettings()
        self.spec = actor.consumer(bus.subjects)
        self.decoder: Decoder[In] = Decoder(actor.inbox, max_bytes=self.settings.max_bytes)
        self.stats = _Stats()
        self.log = log.bind(actor=actor.role, consumer=self.spec.durable)
        self._inflight: dict[asyncio.Task[None], Msg] = {}
        self._slot_free = asyncio.Event()
        self._request_done = asyncio.Event()
        self._credits = 0
        self._stopping = False
        self._tg: asyncio.TaskGroup | None = None
        self.ready = asyncio.Event()

    # --- intake ---

    async def run(self, stop: asyncio.Event) -> None:
        settings = self.settings
        if settings.create_consumer:
            await ensure_consumer(self.bus, self.spec)
        nc = self.bus.nc
        inbox = nc.new_inbox()
        pull_subject = f"$JS.API.CONSUMER.MSG.NEXT.{self.bus.subjects.log_stream}.{self.spec.durable}"
        expires_ns = int(settings.pull_expires * 1e9)
        stop_waiter = asyncio.ensure_future(stop.wait())
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            sub = await nc.subscribe(
                inbox, cb=self._on_delivery, pending_msgs_limit=4 * settings.concurrency + 64
            )
            self.ready.set()
            self.log.info(
                "actor_started", concurrency=settings.concurrency, filters=list(self.spec.filter_subjects)
            )
            try:
                while not stop.is_set():
                    free = settings.concurrency - len(self._inflight)
                    if free <= 0:
                        self._slot_free.clear()
                        await _first(stop_waiter, self._slot_free.wait())
                        continue
                    self._credits = free
                    self._request_done.clear()
                    request = json.dumps({"batch": free, "expires": expires_ns}).encode()
                    try:
                        await nc.publish(pull_subject, request, reply=inbox)
                    except nats.errors.Error as exc:
                        self.log.warning("pull_failed", error=repr(exc))
                    # A request lost to a reconnect never ends by itself: give up on it after expiry.
                    await _first(stop_waiter, self._request_done.wait(), timeout=settings.pull_expires + 2.0)
            finally:
                self._stopping = True
                stop_waiter.cancel()
                with contextlib.suppress(nats.errors.Error):
                    await sub.unsubscribe()
                await self._finish_inflight()
        self._tg = None
        self.log.info(
            "actor_stopped",
            handled=self.stats.handled,
            rejected=self.stats.rejected,
            failed=self.stats.failed,
            returned=self.stats.returned,
        )

    async def _on_delivery(self, msg: Msg) -> None:
        """Subscription callback: route a status, or dispatch a message to a handler task. Never blocks."""
        headers = msg.headers or {}
        status = headers.get("Status")
        if status and not msg.data:
            if status in ("404", "408", "409"):
                if status == "409":
                    self.log.warning("pull_status", status=status, description=headers.get("Description", ""))
                self._credits = 0
                self._request_done.set()
            return
        self._credits -= 1
        if self._credits <= 0:
            self._request_done.set()
        if self._stopping or self._tg is None:
            await msg.nak()  # taken after stop: hand it straight to another worker
            self.stats.returned += 1
            return
        task = self._tg.create_task(self._process(msg))
        self._inflight[task] = msg

    async def _finish_inflight(self) -> None:
        tasks = set(self._inflight)
        if not tasks:
            return
        self.log.info("actor_draining", in_flight=len(tasks), grace_s=self.settings.grace)
        _, pending = await asyncio.wait(tasks, timeout=self.settings.grace)
        for task in pending:
            task.cancel()
        if pending:
            self.log.warning("actor_grace_expired", cancelled=len(pending))
            await asyncio.wait(pending)

    # --- one message ---

    async def _process(self, msg: Msg) -> None:
        task = asyncio.current_task()
        structlog.contextvars.clear_contextvars()
        try:
            await self._handle_one(msg)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            self.stats.returned += 1
            raise
        except Exception:
            # Publishing the reply or acking failed (the bus is down?): try the message again later.
            self.log.exception("message_processing_failed", subject=msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.settings.retry_delays[0])
        finally:
            if task is not None:
                self._inflight.pop(task, None)
            self._slot_free.set()

    async def _handle_one(self, msg: Msg) -> None:
        meta = msg.metadata
        headers = msg.headers or {}
        try:
            decoded = self.decoder.decode(msg.data, subject=msg.subject)
        except MessageRejected as exc:
            await self._reject(msg, exc)
            return

        session_id = str(getattr(decoded, "session_id", ""))
        structlog.contextvars.bind_contextvars(
            session_id=session_id,
            thread_id=str(getattr(decoded, "thread_id", "")),
            agent=str(getattr(decoded, "agent", "")),
        )
        parent = SpanContext.from_traceparent(headers.get(TRACEPARENT))
        span = parent.child() if parent else SpanContext.new_root()
        current_span.set(span)
        ctx = Context(
            bus=self.bus,
            subject=msg.subject,
            headers=headers,
            delivery=meta.num_delivered,
            stream_seq=meta.sequence.stream,
            span=span,
            log=structlog.get_logger("staffwork.actor").bind(actor=self.actor.role),
            reply_to=headers.get(REPLY_TO),
        )
        heartbeat = asyncio.create_task(self._heartbeat(msg))
        try:
            reply = await self.actor.handle(decoded, ctx)
        except Retryable as exc:
            await self._retry(msg, decoded, ctx, exc)
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.log.exception("handler_failed", subject=msg.subject, delivery=ctx.delivery)
            await self._fail(
                msg, decoded, ctx, ErrorInfo(kind=type(exc).__name__, message=str(exc) or repr(exc))
            )
            return
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        if reply is not None:
            await self._send_reply(decoded, reply, ctx)
        await msg.ack()
        self.stats.handled += 1

    async def _heartbeat(self, msg: Msg) -> None:
        interval = self.settings.heartbeat or max(self.spec.ack_wait / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            try:
                await msg.in_progress()
            except nats.errors.Error as exc:
                self.log.warning("heartbeat_failed", error=repr(exc))

    async def _send_reply(self, request: In, reply: Message, ctx: Context) -> None:
        subject = self.actor.reply_subject(request, reply, ctx)
        if not subject:
            return
        request_id = str(getattr(request, "msg_id", ""))
        if subject.startswith(self.bus.subjects.root + "."):
            await self.bus.publish(subject, reply, msg_id=f"{request_id}.reply" if request_id else None)
        else:
            await self.bus.publish_core(subject, reply)

    async def _reject(self, msg: Msg, exc: MessageRejected) -> None:
        self.stats.rejected += 1
        self.log.warning("message_rejected", subject=msg.subject, reason=exc.reason, size=len(msg.data))
        await msg.term()
        preview = msg.data[:200].decode("utf-8", errors="replace")
        event = MessageRejectedEvent(
            session_id=peek_session(msg.data) if len(msg.data) <= self.settings.max_bytes else "",
            subject=msg.subject,
            actor=self.actor.role,
            reason=exc.reason,
            size=len(msg.data),
            preview=preview,
        )
        try:
            await self.bus.emit(event)
        except (StaffworkError, msgspec.ValidationError, ValueError) as emit_exc:
            self.log.warning("reject_event_failed", error=str(emit_exc))

    async def _retry(self, msg: Msg, request: In, ctx: Context, exc: Retryable) -> None:
        if 0 < self.spec.max_deliver <= ctx.delivery:
            self.log.warning("retries_exhausted", delivery=ctx.delivery, error=str(exc))
            await self._fail(
                msg, request, ctx, ErrorInfo(kind="retries_exhausted", message=str(exc), retryable=True)
            )
            return
        delays = self.settings.retry_delays
        delay = exc.delay if exc.delay is not None else delays[min(ctx.delivery - 1, len(delays) - 1)]
        self.stats.retried += 1
        self.log.info("handler_retry", delivery=ctx.delivery, delay_s=delay, error=str(exc))
        await msg.nak(delay=delay)

    async def _fail(self, msg: Msg, request: In, ctx: Context, error: ErrorInfo) -> None:
        self.stats.failed += 1
        try:
            reply = self.actor.failure(request, error)
            if reply is not None:
                await self._send_reply(request, reply, ctx)
            session_id = str(getattr(request, "session_id", ""))
            await self.bus.emit(
                SessionErrorEvent(
                    session_id=session_id,
                    thread_id=str(getattr(request, "thread_id", "")),
                    agent=str(getattr(request, "agent", "")),
                    error=error,
                )
            )
        except (StaffworkError, ValueError) as exc:
            self.log.warning("failure_report_failed", error=str(exc))
        await msg.term()


async def _first(waiter: asyncio.Future[Any], other: Awaitable[Any], timeout: float | None = None) -> None:
    """Wait until ``waiter`` (kept) or ``other`` (cancelled if unfinished) completes, or ``timeout``."""
    task = asyncio.ensure_future(other)
    try:
        await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- running actors in a process ----------------------------------------------------------------


def install_stop_signals(stop: asyncio.Event, on_second: Callable[[], None] | None = None) -> None:
    """SIGTERM/SIGINT set ``stop`` (graceful); a second one calls ``on_second`` (e.g. cancel all)."""
    loop = asyncio.get_running_loop()

    def handler(signum: int) -> None:
        if stop.is_set():
            if on_second is not None:
                on_second()
            return
        log.info("stop_requested", signal=signal.Signals(signum).name)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows' default loop
            loop.add_signal_handler(sig, handler, sig)


async def run_actors(
    bus: Bus,
    actors: Sequence[Actor[Any]],
    stop: asyncio.Event,
    settings: RuntimeSettings | None = None,
    *,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> list[ActorRuntime[Any]]:
    """Run ``actors`` on ``bus`` until ``stop`` is set, then let each finish gracefully."""
    runtimes = [ActorRuntime(bus, actor, settings) for actor in actors]
    async with asyncio.TaskGroup() as tg:
        for runtime in runtimes:
            tg.create_task(runtime.run(stop), name=f"actor-{runtime.actor.role}")
        if on_ready is not None:
            await asyncio.gather(*(r.ready.wait() for r in runtimes))
            await on_ready()
    return runtimes


async def serve(
    url: str,
    actors: Sequence[Actor[Any]],
    *,
    root: str = "sw",
    name: str = "staffwork-actor",
    settings: RuntimeSettings | None = None,
    on_ready: Callable[[], Awaitable[None]] | None = None,
) -> list[ActorRuntime[Any]]:
    """A whole actor process: connect, run until SIGTERM/SIGINT, finish in-flight work, drain."""
    stop = asyncio.Event()
    main = asyncio.current_task()

    def cancel_everything() -> None:
        if main is not None:
            main.cancel()

    install_stop_signals(stop, on_second=cancel_everything)
    bus = await Bus.connect(url, root=root, name=name)
    try:
        return await run_actors(bus, actors, stop, settings, on_ready=on_ready)
    finally:
        await bus.close()
