"""The actor contract: what an actor is (its behaviour) and what it knows about a message in hand.

An actor names its consumer and handles one decoded message at a time; ``on_start`` and ``on_stop``
start and stop what it runs beside its consumer (a responder, a watch, an exporter). An actor whose
``consumer`` is None is a service: only its hooks run. Everything else (pulling, decoding, acking,
heartbeats, tracing, shutdown) is the runtime's job (``bus/runtime.py``), done once for every actor.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from bus.connection import Bus
from bus.provision import ConsumerSpec
from bus.subjects import Subjects
from bus.tracing import SpanContext
from schemas.base import ErrorInfo, Message

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
    raw: bytes = b""  # the message as it arrived (the JSON the actor's inbox was decoded from)


class Actor(Protocol[In_contra]):
    """An actor's behaviour: which consumer it reads, what it decodes, and how it handles a message."""

    role: str
    inbox: Any

    def consumer(self, subjects: Subjects) -> ConsumerSpec | None: ...

    async def on_start(self, bus: Bus) -> None: ...

    async def on_stop(self) -> None: ...

    async def handle(self, msg: In_contra, ctx: Context) -> Message | None: ...

    def failure(self, msg: In_contra, error: ErrorInfo) -> Message | None: ...

    def reply_subject(self, msg: In_contra, reply: Message, ctx: Context) -> str | None: ...


class BatchActor(Protocol[In_contra]):
    """An actor that can also take its messages many at a time (the trace collector: one SQLite
    transaction per batch). The runtime acks a batch when ``handle_batch`` returns; if it raises,
    the batch's messages go through ``handle`` one by one, with the usual failure semantics."""

    async def handle_batch(self, batch: Sequence[tuple[In_contra, Context]]) -> None: ...


class BaseActor(Generic[In]):
    """Defaults for the optional parts of :class:`Actor`."""

    role: str = "actor"
    inbox: Any = None
    report_failures: bool = True  # a failed message becomes a session.error event (not for the collector)

    def consumer(self, subjects: Subjects) -> ConsumerSpec | None:
        raise NotImplementedError(f"actor {self.role!r} must say which consumer it reads (or None)")

    async def on_start(self, bus: Bus) -> None:
        """Start what runs beside the consumer; called before the first message is pulled."""

    async def on_stop(self) -> None:
        """Stop it; called after in-flight messages have finished (or were given up), and also when
        the actor failed to start after ``on_start`` ran."""

    async def handle(self, msg: In, ctx: Context) -> Message | None:
        raise NotImplementedError(f"actor {self.role!r} has no handler")

    def failure(self, msg: In, error: ErrorInfo) -> Message | None:
        """The typed failure reply for a message whose handler failed for good (None: no reply)."""
        return None

    def reply_subject(self, msg: In, reply: Message, ctx: Context) -> str | None:
        """Where a reply goes: by default the request's ``Sw-Reply-To`` header."""
        return ctx.reply_to
