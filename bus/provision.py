"""Idempotent provisioning of everything staffwork keeps in JetStream, for one subject root.

:func:`provision` makes sure the log stream, the work consumers (lead, grader, webhooks, and the
agents given), the KV buckets, the object store and the memory stream exist. Running it again changes
nothing; a stream whose settings drifted is updated in place. Work consumers start at new messages,
so they are created before anything is published to them. :class:`ConsumerSpec` and
:class:`StreamSettings` describe what is made; the list: docs/architecture.md, "Subjects and
resources".
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats.errors
import nats.js.errors
import structlog
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from bus.connection import Bus
from bus.errors import ProvisionError, ProvisionRefused
from bus.subjects import JetStreamApi, Subjects
from bus.workspace import Workspace

T = TypeVar("T")

log = structlog.get_logger("staffwork.provision")

_DAY = 86_400.0
_STREAM_IN_USE = 10058  # stream name already in use with a different configuration


@dataclass(frozen=True)
class StreamSettings:
    """Retention and placement of everything provisioned; the defaults suit one machine."""

    replicas: int = 1
    max_age: float = 30 * _DAY
    max_bytes: int = -1
    duplicate_window: float = 120.0
    memory: bool = False

    @property
    def storage(self) -> StorageType:
        return StorageType.MEMORY if self.memory else StorageType.FILE


@dataclass(frozen=True)
class ConsumerSpec:
    """A durable pull consumer on the log stream.

    ``ack_wait`` bounds how long a message may go without an ack or an ``in_progress`` heartbeat before
    it is redelivered; ``max_deliver`` how often it is tried in all.
    """

    durable: str
    filter_subjects: tuple[str, ...]
    ack_wait: float = 30.0
    max_deliver: int = 5
    max_ack_pending: int = 1000
    deliver_new: bool = True
    description: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def config(self) -> ConsumerConfig:
        filters = list(self.filter_subjects)
        return ConsumerConfig(
            durable_name=self.durable,
            description=self.description or None,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW if self.deliver_new else DeliverPolicy.ALL,
            ack_wait=self.ack_wait,
            max_deliver=self.max_deliver,
            max_ack_pending=self.max_ack_pending,
            max_waiting=512,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
            **self.extra,  # type: ignore[arg-type]
        )


def lead_consumer(subjects: Subjects, *, ack_wait: float = 30.0) -> ConsumerSpec:
    return ConsumerSpec(
        durable=subjects.lead_consumer,
        filter_subjects=(subjects.submit,),
        ack_wait=ack_wait,
        description="lead pool",
    )


def agent_consumer(subjects: Subjects, agent: str, *, ack_wait: float = 30.0) -> ConsumerSpec:
    return ConsumerSpec(
        durable=subjects.agent_consumer(agent),
        filter_subjects=(subjects.tasks_for(agent),),
        ack_wait=ack_wait,
        description=f"tasks of agent {agent}",
    )


def grader_consumer(subjects: Subjects, *, ack_wait: float = 30.0) -> ConsumerSpec:
    return ConsumerSpec(
        durable=subjects.grader_consumer,
        filter_subjects=(subjects.all_grades,),
        ack_wait=ack_wait,
        description="grading requests",
    )


#: The trace events that webhooks can announce (the rest never reach the webhooks actor). The
#: webhooks actor updates its consumer to these filters when it starts; :func:`provision` only
#: creates it.
WEBHOOK_SOURCES = (
    "session.status_running",
    "session.status_idle",
    "session.status_terminated",
    "session.thread_created",
    "session.thread_status_idle",
    "span.outcome_evaluation_end",
    "agent.custom_tool_use",
    "agent.tool_confirmation_requested",
)


def webhook_events_consumer(subjects: Subjects, *, ack_wait: float = 30.0) -> ConsumerSpec:
    return ConsumerSpec(
        durable=subjects.webhook_events_consumer,
        filter_subjects=tuple(subjects.events("*", kind) for kind in WEBHOOK_SOURCES),
        ack_wait=ack_wait,
        max_deliver=-1,
        description="trace events that may become webhook deliveries",
    )


def webhook_deliveries_consumer(subjects: Subjects, *, ack_wait: float = 30.0) -> ConsumerSpec:
    return ConsumerSpec(
        durable=subjects.webhook_deliveries_consumer,
        filter_subjects=(subjects.all_hooks,),
        ack_wait=ack_wait,
        max_deliver=-1,  # the webhooks actor counts attempts and gives up itself
        description="pending webhook deliveries",
    )


def log_stream_config(bus: Bus, settings: StreamSettings) -> StreamConfig:
    return StreamConfig(
        name=bus.subjects.log_stream,
        description=f"staffwork traffic under {bus.subjects.root}",
        subjects=bus.subjects.logged,
        retention=RetentionPolicy.LIMITS,
        storage=settings.storage,
        num_replicas=settings.replicas,
        max_age=settings.max_age,
        max_bytes=settings.max_bytes,
        discard=DiscardPolicy.OLD,
        duplicate_window=settings.duplicate_window,
        allow_direct=True,
    )


def memory_stream_config(bus: Bus, settings: StreamSettings) -> StreamConfig:
    """Memory is permanent: no max age and no size limit, whatever the log's retention."""
    return StreamConfig(
        name=bus.subjects.memory_stream,
        description=f"staffwork memory stores under {bus.subjects.root}",
        subjects=[bus.subjects.all_memory],
        retention=RetentionPolicy.LIMITS,
        storage=settings.storage,
        num_replicas=settings.replicas,
        discard=DiscardPolicy.NEW,
        allow_direct=True,
    )


def _unavailable(exc: BaseException) -> ProvisionError:
    return ProvisionError(f"JetStream is not available on this server (start nats-server with -js): {exc!r}")


_PLACEMENT_WAIT = 10.0  # seconds a new cluster may take to count every peer in (see _placed)


async def _placed(create: Callable[[], Awaitable[T]]) -> T:
    """``create()``, asked again while the cluster answers "no suitable peers for placement": just
    after a cluster starts (or a node returns) its metadata leader may count a peer offline for a
    moment, and an R3 stream cannot be placed yet. Bounded by ``_PLACEMENT_WAIT``."""
    deadline = asyncio.get_running_loop().time() + _PLACEMENT_WAIT
    while True:
        try:
            return await create()
        except nats.js.errors.APIError as exc:
            if "no suitable peers" not in str(exc.description or "") or (
                asyncio.get_running_loop().time() >= deadline
            ):
                raise
        await asyncio.sleep(0.2)  # the leader's view of its peers: nothing to await on


async def ensure_stream(bus: Bus, config: StreamConfig) -> None:
    """Create the stream, or update it when it exists with other settings."""
    try:
        await _placed(lambda: bus._js.add_stream(config))
        return
    except nats.js.errors.BadRequestError as exc:
        if exc.err_code != _STREAM_IN_USE:
            raise ProvisionError(f"cannot create stream {config.name!r}: {exc.description}") from exc
    except (nats.js.errors.ServiceUnavailableError, nats.errors.NoRespondersError) as exc:
        raise _unavailable(exc) from exc
    except nats.js.errors.APIError as exc:
        raise ProvisionError(f"cannot create stream {config.name!r}: {exc.description}") from exc
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise ProvisionError(f"creating stream {config.name!r} timed out (is JetStream enabled?)") from exc
    try:
        # Never lower a stream's replicas: an actor starting with the defaults (R1) must not undo
        # a cluster's R3 (raising them is applied).
        current = (await bus._js.stream_info(str(config.name))).config.num_replicas or 1
        if (config.num_replicas or 1) < current:
            config = dataclasses.replace(config, num_replicas=current)
        await _placed(lambda: bus._js.update_stream(config))
        log.info("stream_updated", stream=config.name)
    except nats.js.errors.APIError as exc:
        raise ProvisionError(
            f"stream {config.name!r} exists with settings that cannot be changed: {exc.description}"
        ) from exc


async def ensure_consumer(
    bus: Bus, spec: ConsumerSpec, stream: str | None = None, *, update: bool = True
) -> None:
    """Create the durable consumer, or update it in place (create-or-update is idempotent).

    With ``update=False`` an existing consumer is left as it is (its owner's settings win).
    """
    stream = stream or bus.subjects.log_stream
    if not update:
        try:
            await bus._js.consumer_info(stream, spec.durable)
            return
        except nats.js.errors.NotFoundError:
            pass
    try:
        await bus._js.add_consumer(stream, spec.config())
    except nats.errors.NoRespondersError as exc:
        raise _unavailable(exc) from exc
    except nats.js.errors.APIError as exc:
        raise ProvisionError(
            f"cannot create consumer {spec.durable!r} on {stream!r}: {exc.description}"
        ) from exc
    except (nats.errors.TimeoutError, TimeoutError) as exc:
        raise ProvisionError(f"creating consumer {spec.durable!r} on {stream!r} timed out") from exc


async def ensure_kv(bus: Bus, bucket: str, *, history: int, settings: StreamSettings) -> None:
    try:
        await bus._js.key_value(bucket)
        return
    except nats.js.errors.BucketNotFoundError:
        pass
    config = KeyValueConfig(
        bucket=bucket, history=history, storage=settings.storage, replicas=settings.replicas, direct=True
    )
    try:
        await _placed(lambda: bus._js.create_key_value(config))
    except nats.js.errors.APIError as exc:
        raise ProvisionError(f"cannot create KV bucket {bucket!r}: {exc.description}") from exc


async def ensure_object_store(bus: Bus, bucket: str, *, settings: StreamSettings) -> None:
    try:
        await bus._js.object_store(bucket)
        return
    except nats.js.errors.BucketNotFoundError:
        pass
    config = ObjectStoreConfig(
        bucket=bucket,
        description="staffwork shared filesystem",
        storage=settings.storage,
        replicas=settings.replicas,
    )
    try:
        await _placed(lambda: bus._js.create_object_store(bucket, config))
    except nats.js.errors.APIError as exc:
        raise ProvisionError(f"cannot create object store {bucket!r}: {exc.description}") from exc


def covers(wide: str, narrow: str) -> bool:
    """Whether every subject ``narrow`` matches is matched by ``wide`` too (NATS wildcards: ``*`` one
    token, ``>`` one or more at the end)."""
    outer, inner = wide.split("."), narrow.split(".")
    for n, token in enumerate(outer):
        if token == ">":
            return len(inner) > n
        if n >= len(inner) or inner[n] == ">" or (token != "*" and token != inner[n]):
            return False
    return len(outer) == len(inner)


async def ensure_session_index(bus: Bus, bucket: str) -> None:
    """Add the session index subjects to the object store's stream; a store made before the index
    existed gets every file's entry written from its metadata."""
    stream = JetStreamApi.object_stream(bucket)
    index = JetStreamApi.object_index(bucket)
    config = (await bus._js.stream_info(stream)).config
    subjects = list(config.subjects or [])
    if any(covers(subject, index) for subject in subjects):
        return  # the index subjects, or a wider subject that holds them too
    try:
        await _placed(lambda: bus._js.update_stream(dataclasses.replace(config, subjects=[*subjects, index])))
    except nats.js.errors.APIError as exc:
        raise ProvisionError(f"cannot add the session index to {stream!r}: {exc.description}") from exc
    indexed = await Workspace(bus, bucket).reindex()
    if indexed:
        log.info("workspace_index_added", bucket=bucket, files=indexed)


async def _unless_refused(bus: Bus, first: Coroutine[Any, Any, None]) -> None:
    """Run the first step of provisioning, unless the server says this user may not: a refused
    request reaches only the error callback and would otherwise wait out its deadline."""
    mark = bus.permission_errors.count
    step = asyncio.ensure_future(first)
    refused = asyncio.ensure_future(bus.permission_errors.after(mark))
    try:
        await asyncio.wait({step, refused}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        denied = refused.result() if refused.done() and not step.done() else None
        for task in (step, refused):
            task.cancel()
        await asyncio.gather(step, refused, return_exceptions=True)
    if denied is not None:
        raise ProvisionRefused(
            f"this NATS user may not provision root {bus.subjects.root!r} ({denied}): the admin user "
            "provisions (any staffwork command run as the admin), then the actors go on"
        )
    step.result()  # done: its own error, if it failed


async def provision(
    bus: Bus, *, settings: StreamSettings | None = None, agents: tuple[str, ...] = ()
) -> None:
    """Make sure every stream, consumer and bucket the design needs exists for ``bus``'s root."""
    settings = settings or StreamSettings()
    await _unless_refused(bus, ensure_stream(bus, log_stream_config(bus, settings)))
    await ensure_consumer(bus, lead_consumer(bus.subjects))
    await ensure_consumer(bus, grader_consumer(bus.subjects), update=False)
    await ensure_consumer(bus, webhook_events_consumer(bus.subjects), update=False)
    await ensure_consumer(bus, webhook_deliveries_consumer(bus.subjects), update=False)
    for agent in agents:
        await ensure_consumer(bus, agent_consumer(bus.subjects, agent))
    await ensure_kv(bus, bus.subjects.sessions_bucket, history=16, settings=settings)
    await ensure_kv(bus, bus.subjects.registry_bucket, history=8, settings=settings)
    await ensure_kv(bus, bus.subjects.webhooks_bucket, history=1, settings=settings)
    await ensure_kv(bus, bus.subjects.api_bucket, history=1, settings=settings)
    await ensure_kv(bus, bus.subjects.dreams_bucket, history=8, settings=settings)
    await ensure_object_store(bus, bus.subjects.files_bucket, settings=settings)
    await ensure_session_index(bus, bus.subjects.files_bucket)
    await ensure_stream(bus, memory_stream_config(bus, settings))
    await ensure_kv(bus, bus.subjects.memory_stores_bucket, history=1, settings=settings)
    log.debug("provisioned", root=bus.subjects.root, agents=list(agents))
