"""The actor runtime: everything an actor does that is not its behaviour.

:class:`ActorRuntime` runs one actor (``bus/actor.py``) on one connection: its ``on_start``, then its
durable pull consumer with bounded concurrency (a service, without a consumer, only waits for
``stop``), then its ``on_stop``. Per message it decodes (a bad payload becomes a
``bus.message_rejected`` event and is never redelivered), binds the log context and the sender's
span, heartbeats until the message is settled, publishes the reply deduplicated and acks; it naks a
:class:`Retryable` with backoff and turns any other failure into the typed failure reply and a
``session.error``. On stop it lets in-flight work finish within ``grace``. Batch actors get their
messages in batches. The details: docs/architecture.md, "The actor runtime".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus.actor import Actor, BaseActor, BatchActor, Context, In
from bus.codec import DEFAULT_MAX_BYTES, Decoder, peek_session
from bus.connection import REPLY_TO, TRACEPARENT, Bus
from bus.errors import MessageRejected, Retryable
from bus.provision import ConsumerSpec, ensure_consumer
from bus.subjects import JetStreamApi
from bus.tracing import SpanContext, current_span
from schemas.base import ErrorInfo, Message
from schemas.trace import SessionErrorEvent

__all__ = ["Actor", "ActorRuntime", "BaseActor", "Context", "RuntimeSettings"]

log = structlog.get_logger("staffwork.runtime")

_ABANDON_AFTER = 10.0  # seconds to wait for cancelled handlers before giving up on them
_MAX_BACKOFF = 5.0
_UNTRACED = SpanContext(trace_id="0" * 32, span_id="0" * 16)
_MAX_BATCH = re.compile(r"Exceeded MaxRequestBatch of (\d+)")


@dataclass(frozen=True)
class RuntimeSettings:
    concurrency: int = 8
    max_bytes: int = DEFAULT_MAX_BYTES
    grace: float = 30.0
    pull_expires: float = 5.0
    heartbeat: float | None = None  # default: a third of the consumer's ack_wait
    retry_delays: tuple[float, ...] = (1.0, 5.0, 15.0, 60.0)
    create_consumer: bool = True
    batch_size: int = 256  # messages per handle_batch call (actors that have one)


@dataclass
class _Stats:
    handled: int = 0
    rejected: int = 0
    failed: int = 0
    retried: int = 0
    returned: int = 0
    last_error: str = ""  # the latest failure for good, "kind: message" (what health reports)


class ActorRuntime(Generic[In]):
    """Runs one actor on one connection until ``stop`` is set. See the module docstring."""

    def __init__(self, bus: Bus, actor: Actor[In], settings: RuntimeSettings | None = None) -> None:
        self.bus = bus
        self.actor = actor
        self.settings = settings or RuntimeSettings()
        spec = actor.consumer(bus.subjects)
        self.spec = spec or ConsumerSpec(durable="", filter_subjects=())  # a service reads nothing
        self.service = spec is None
        self.decoder: Decoder[In] = Decoder(actor.inbox, max_bytes=self.settings.max_bytes)
        self.stats = _Stats()
        self.log = log.bind(actor=actor.role, consumer=self.spec.durable or None)
        self._actor_log = structlog.get_logger("staffwork.actor").bind(actor=actor.role)
        self.ready = asyncio.Event()
        self._inflight: dict[asyncio.Task[None], Msg] = {}
        self._slot_free = asyncio.Event()
        self._credits: dict[str, int] = {}  # pull request id -> messages it may still deliver
        self._current = ""
        self._current_done = asyncio.Event()
        self._errors = 0  # consecutive error statuses, for backoff
        self._max_batch = self.settings.concurrency  # lowered if the consumer caps request batches
        self._stopping = False
        self._tg: asyncio.TaskGroup | None = None
        self._batcher: BatchActor[In] | None = actor if hasattr(actor, "handle_batch") else None  # type: ignore[assignment]
        self._arrived: list[Msg] = []  # batch mode: delivered, not yet taken
        self._batch: list[Msg] = []  # batch mode: the batch being handled
        self._arrival = asyncio.Event()

    # --- intake ---

    async def run(self, stop: asyncio.Event) -> None:
        """Start the actor (its ``on_start``, then intake), run until ``stop``, stop it gracefully."""
        await self.actor.on_start(self.bus)
        try:
            if self.service:
                self.ready.set()
                self.log.info("actor_started", service=True)
                await stop.wait()
            else:
                await self._consume(stop)
        finally:
            await self.actor.on_stop()

    async def _consume(self, stop: asyncio.Event) -> None:
        if self.settings.create_consumer:
            await ensure_consumer(self.bus, self.spec)
        prefix = self.bus._nc.new_inbox()
        stop_waiter = asyncio.ensure_future(stop.wait())
        try:
            async with asyncio.TaskGroup() as tg:
                self._tg = tg
                sub = await self.bus._nc.subscribe(
                    f"{prefix}.*", cb=self._on_delivery, pending_msgs_limit=4 * self.settings.concurrency + 64
                )
                batches = tg.create_task(self._batch_loop()) if self._batcher is not None else None
                # One heartbeat for every message in flight (a task per message cost more than the
                # rest of the runtime's work on it); batch mode has its own in the batch loop.
                beats = tg.create_task(self._heartbeat(self._held)) if self._batcher is None else None
                self.ready.set()
                self.log.info(
                    "actor_started",
                    concurrency=self.settings.concurrency,
                    filters=list(self.spec.filter_subjects),
                    batches=self._batcher is not None,
                )
                try:
                    await self._pull_loop(prefix, stop_waiter)
                finally:
                    self._stopping = True
                    await self._close_intake(sub)
                    self._arrival.set()  # the batch loop finishes what has arrived, then ends
                    await self._finish_inflight(*([batches] if batches is not None else []))
                    if beats is not None:
                        beats.cancel()
        finally:
            stop_waiter.cancel()
            self._tg = None
        self.log.info(
            "actor_stopped",
            handled=self.stats.handled,
            rejected=self.stats.rejected,
            failed=self.stats.failed,
            returned=self.stats.returned,
        )

    async def _pull_loop(self, prefix: str, stop_waiter: asyncio.Future[Any]) -> None:
        settings = self.settings
        pull_subject = JetStreamApi.msg_next(self.bus.subjects.log_stream, self.spec.durable)
        expires_ns = int(settings.pull_expires * 1e9)
        number = 0
        while not stop_waiter.done():
            if not self.bus.online.is_set():  # a pull sent now would be buffered, then go live late
                await _first(stop_waiter, self.bus.online.wait())
                continue
            free = min(settings.concurrency - self._load(), self._max_batch)
            if free <= 0:
                self._slot_free.clear()
                await _first(stop_waiter, self._slot_free.wait())
                continue
            if self._errors:
                await _first(stop_waiter, asyncio.sleep(min(0.1 * 2 ** (self._errors - 1), _MAX_BACKOFF)))
                if stop_waiter.done():
                    break
            number += 1
            request_id = str(number)
            self._credits[request_id] = free
            self._current = request_id
            self._current_done.clear()
            request = json.dumps({"batch": free, "expires": expires_ns}).encode()
            try:
                await self.bus._nc.publish(pull_subject, request, reply=f"{prefix}.{request_id}")
            except nats.errors.Error as exc:
                self.log.warning("pull_failed", error=repr(exc))
                self._errors += 1
                continue
            # A request lost to a reconnect never ends by itself: give up on it after its expiry.
            await _first(stop_waiter, self._current_done.wait(), timeout=settings.pull_expires + 2.0)
            self._credits.pop(request_id, None)

    async def _on_delivery(self, msg: Msg) -> None:
        """Subscription callback: account a status, or dispatch a message to a handler. Never blocks.

        A status arrives on its request's own reply subject, so it ends exactly that request. A message
        arrives with its stream subject, so it is counted against the current request; one from an
        older request that outlived a reconnect can only end the current one early, and the bound on
        in-flight messages below still holds.
        """
        headers = msg.headers or {}
        status = headers.get("Status")
        if status and not msg.data:
            request_id = msg.subject.rsplit(".", 1)[-1]
            if status == "100":
                return  # idle heartbeat
            self._credits.pop(request_id, None)
            if status in ("404", "408"):
                self._errors = 0
            else:
                self._errors += 1
                description = headers.get("Description", "")
                if cap := _MAX_BATCH.search(description):
                    self._max_batch = max(1, int(cap.group(1)))
                    self._errors = 0  # not an error to back off from: ask for less next time
                if status == "503":
                    stream = self.bus.subjects.log_stream
                    description = f"no consumer {self.spec.durable!r} on stream {stream!r}, or no JetStream"
                self.log.warning(
                    "pull_status", status=status, description=description, consecutive=self._errors
                )
            if request_id == self._current:
                self._current_done.set()
            return
        credits = self._credits.get(self._current)
        if credits is not None:
            if credits <= 1:
                del self._credits[self._current]
                self._current_done.set()
            else:
                self._credits[self._current] = credits - 1
        self._errors = 0
        if self._stopping or self._tg is None or self._load() >= self.settings.concurrency:
            await msg.nak()  # after stop, or beyond the bound: hand it straight to another worker
            self.stats.returned += 1
            return
        if self._batcher is not None:
            self._arrived.append(msg)
            self._arrival.set()
            return
        task = self._tg.create_task(self._process(msg))
        self._inflight[task] = msg

    @property
    def in_flight(self) -> int:
        """Messages delivered and not yet settled (what health reports)."""
        return self._load()

    def _load(self) -> int:
        """Messages delivered and not yet settled."""
        return len(self._inflight) + len(self._arrived) + len(self._batch)

    async def _close_intake(self, sub: Subscription) -> None:
        """Unsubscribe, and nak whatever the server had already sent (the callback sees ``_stopping``)."""
        try:
            async with asyncio.timeout(5.0):
                await sub.drain()  # type: ignore[no-untyped-call]
        except (nats.errors.Error, TimeoutError) as exc:
            self.log.warning("intake_drain_failed", error=repr(exc))
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def _finish_inflight(self, *more: asyncio.Task[None]) -> None:
        tasks = set(self._inflight) | set(more)
        if not tasks:
            return
        self.log.info("actor_draining", in_flight=len(tasks), grace_s=self.settings.grace)
        _, pending = await asyncio.wait(tasks, timeout=self.settings.grace)
        if not pending:
            return
        self.log.warning("actor_grace_expired", cancelled=len(pending))
        for task in pending:
            task.cancel()
        _, stuck = await asyncio.wait(pending, timeout=_ABANDON_AFTER)
        if stuck:
            self.log.error("actor_handlers_abandoned", count=len(stuck))

    # --- batches ---

    async def _batch_loop(self) -> None:
        """Batch mode: hand over whatever has arrived, up to ``batch_size`` at a time, until stopped
        and nothing is left. One heartbeat covers every message delivered and not yet settled, the
        waiting ones included (a slow batch must not get those redelivered)."""
        heartbeat = asyncio.create_task(self._heartbeat(self._unsettled))
        try:
            while True:
                if not self._arrived:
                    if self._stopping:
                        return
                    self._arrival.clear()
                    await self._arrival.wait()
                    continue
                batch = self._arrived[: self.settings.batch_size]
                del self._arrived[: len(batch)]
                self._batch = batch
                try:
                    await self._process_batch(batch)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug, or the bus failing under us: the loop must go on
                    self.log.exception("batch_processing_failed", size=len(batch))
                finally:
                    self._batch = []
                    self._slot_free.set()
        except asyncio.CancelledError:
            returned = self._arrived  # stopped past its grace: hand the waiting ones back at once
            self._arrived = []
            for msg in returned:
                with contextlib.suppress(Exception):
                    await msg.nak()
            self.stats.returned += len(returned)
            raise
        finally:
            heartbeat.cancel()
            await asyncio.wait({heartbeat})

    def _held(self) -> list[Msg]:
        return list(self._inflight.values())

    def _unsettled(self) -> list[Msg]:
        return [*self._batch, *self._arrived]

    async def _process_batch(self, msgs: list[Msg]) -> None:
        assert self._batcher is not None
        items: list[tuple[Msg, In, Context]] = []
        settled: set[int] = set()  # ids of the messages already acked, naked or terminated
        try:
            positions: dict[int, int] = {}  # stream seq -> index in items (a redelivery racing the first)
            stale: list[Msg] = []
            for msg in msgs:
                try:
                    decoded = self.decoder.decode(msg.data, subject=msg.subject)
                except MessageRejected as exc:
                    await self._reject(msg, exc)
                    settled.add(id(msg))
                    continue
                ctx = self._context(msg, decoded, bind=False)
                if ctx.stream_seq in positions:  # the same message twice: keep the later delivery
                    index = positions[ctx.stream_seq]
                    stale.append(items[index][0])
                    items[index] = (msg, decoded, ctx)
                    continue
                positions[ctx.stream_seq] = len(items)
                items.append((msg, decoded, ctx))
            if not items:
                return
            try:
                await self._batcher.handle_batch([(decoded, ctx) for _, decoded, ctx in items])
            except Retryable as exc:  # the whole batch, later (a locked database, say)
                delivery = max(ctx.delivery for _, _, ctx in items)
                delays = self.settings.retry_delays
                delay = exc.delay if exc.delay is not None else delays[min(delivery - 1, len(delays) - 1)]
                self.log.warning("batch_retry", size=len(items), delay_s=delay, error=str(exc))
                for msg in [*(m for m, _, _ in items), *stale]:
                    settled.add(id(msg))
                    await msg.nak(delay=delay)
                self.stats.retried += len(items)
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                self.log.exception("batch_failed", size=len(items))
                for msg, decoded, ctx in items:  # one at a time: only the bad ones fail
                    settled.add(id(msg))
                    await self._settle_guarded(msg, decoded, ctx)
                for msg in stale:
                    settled.add(id(msg))
                    await msg.ack()
                return
            for msg in [*(m for m, _, _ in items), *stale]:
                settled.add(id(msg))
                await msg.ack()
            self.stats.handled += len(items)
        except asyncio.CancelledError:
            unsettled = [msg for msg in msgs if id(msg) not in settled]
            for msg in unsettled:
                with contextlib.suppress(Exception):
                    await msg.nak()
            self.stats.returned += len(unsettled)
            raise
        except Exception:
            self.log.exception("batch_settle_failed", size=len(msgs))
            for msg in msgs:
                if id(msg) not in settled:
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=self.settings.retry_delays[0])

    # --- one message ---

    async def _process(self, msg: Msg) -> None:
        task = asyncio.current_task()
        structlog.contextvars.clear_contextvars()
        try:
            try:
                decoded = self.decoder.decode(msg.data, subject=msg.subject)
            except MessageRejected as exc:
                await self._reject(msg, exc)
                return
            ctx = self._context(msg, decoded)
            await self._settle_guarded(msg, decoded, ctx)  # the runtime's heartbeat covers it meanwhile
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await msg.nak()
            self.stats.returned += 1
            raise
        except Exception:  # rejecting it failed (is the bus down?): the actor carries on
            self.log.exception("message_intake_failed", subject=msg.subject)
            with contextlib.suppress(Exception):
                await msg.nak(delay=self.settings.retry_delays[0])
        finally:
            if task is not None:
                self._inflight.pop(task, None)
            self._slot_free.set()

    async def _settle_guarded(self, msg: Msg, decoded: In, ctx: Context) -> None:
        try:
            await self._settle(msg, decoded, ctx)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Publishing the reply, the ack or the failure report failed (is the bus down?).
            self.log.exception("message_settle_failed", subject=msg.subject, delivery=ctx.delivery)
            with contextlib.suppress(Exception):
                if 0 < self.spec.max_deliver <= ctx.delivery:
                    await msg.term()
                else:
                    await msg.nak(delay=self.settings.retry_delays[0])

    def _context(self, msg: Msg, decoded: In, *, bind: bool = True) -> Context:
        """The handler's context. With ``bind`` (one handler per task) its span is a child of the
        sender's and becomes the task's current span and log context; a batch's messages get none."""
        headers = msg.headers or {}
        span = _UNTRACED  # a batch is no one message's work: it gets no span of its own
        if bind:
            parent = SpanContext.from_traceparent(headers.get(TRACEPARENT))
            span = parent.child() if parent else SpanContext.new_root()
            structlog.contextvars.bind_contextvars(
                session_id=str(getattr(decoded, "session_id", "")),
                thread_id=str(getattr(decoded, "thread_id", "")),
                agent=str(getattr(decoded, "agent", "")),
            )
            current_span.set(span)
        stream_seq, delivery = _position(msg)
        return Context(
            bus=self.bus,
            subject=msg.subject,
            headers=headers,
            delivery=delivery,
            stream_seq=stream_seq,
            span=span,
            log=self._actor_log,
            reply_to=headers.get(REPLY_TO),
            raw=msg.data,
        )

    async def _settle(self, msg: Msg, decoded: In, ctx: Context) -> None:
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
        if reply is not None:
            await self._send_reply(decoded, reply, ctx)
        await msg.ack()
        self.stats.handled += 1

    async def _heartbeat(self, held: Callable[[], list[Msg]]) -> None:
        """``in_progress`` for every message ``held()`` names, every third of ``ack_wait``."""
        interval = self.settings.heartbeat or max(self.spec.ack_wait / 3, 0.05)
        while True:
            await asyncio.sleep(interval)
            for msg in held():
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
        fits = len(msg.data) <= self.settings.max_bytes
        session_id = peek_session(msg.data) if fits else ""
        await self.bus.emit_rejected(
            msg.subject, msg.data, exc.reason, actor=self.actor.role, session_id=session_id
        )

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
        """Report a failure for good (typed reply, error event), then terminate: never retried."""
        self.stats.failed += 1
        self.stats.last_error = f"{error.kind}: {error.message}"[:500]
        try:
            reply = self.actor.failure(request, error)
            if reply is not None:
                await self._send_reply(request, reply, ctx)
        except Exception:
            self.log.exception("failure_reply_failed")
        if getattr(self.actor, "report_failures", True):  # the collector must not feed on its own failures
            try:
                await self.bus.emit(
                    SessionErrorEvent(
                        session_id=str(getattr(request, "session_id", "")),
                        thread_id=str(getattr(request, "thread_id", "")),
                        agent=str(getattr(request, "agent", "")),
                        error=error,
                    )
                )
            except Exception as exc:
                self.log.warning("error_event_failed", error=repr(exc))
        await msg.term()


def _position(msg: Msg) -> tuple[int, int]:
    """(stream sequence, delivery count) from the ack subject ``$JS.ACK.<stream>.<consumer>.
    <delivered>.<stream seq>.<consumer seq>.<time>.<pending>``; nats-py's ``metadata`` parses the
    same and also converts the time, which costs more than the rest of the batch path per message."""
    tokens = (msg.reply or "").split(".")
    if len(tokens) == 9 and tokens[0] == "$JS" and tokens[1] == "ACK":
        return int(tokens[5]), int(tokens[4])
    meta = msg.metadata  # the longer form with a domain and an account hash
    return meta.sequence.stream, meta.num_delivered


async def _first(waiter: asyncio.Future[Any], other: Awaitable[Any], timeout: float | None = None) -> None:
    """Wait until ``waiter`` (kept) or ``other`` (cancelled if unfinished) completes, or ``timeout``."""
    task = asyncio.ensure_future(other)
    try:
        await asyncio.wait({waiter, task}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
            await asyncio.wait({task})
