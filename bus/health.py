"""An actor process as a NATS micro service: who it is, how it is doing, and finding every one.

A process that runs actors with a :class:`ProcessIdentity` (``run_actors(..., identity=)``) registers
one micro service named ``staffwork`` (:data:`SERVICE`, nats-py's ``nats.micro``) for as long as its
actors run. Its metadata says which roles and agents it serves, under which root, on which host,
with which pid, since when and how often its supervisor restarted it; ``$SRV.PING|INFO|STATS.
staffwork`` answer as for any micro service, and STATS carries the process's :class:`HealthRecord` as
the data of its one endpoint, ``health``. That endpoint listens on ``<root>.api.health`` in a queue
group of its own, so one request there reaches every process of the root and each answers its record.

:func:`gather` publishes one request and collects every answer until a deadline (``Bus.request``
returns only the first); :func:`discover` (every process on the bus, from STATS) and :func:`probe`
(the processes of one root, from their health endpoint) are built on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import os
import re
import socket
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, EndpointStats, Service, ServiceConfig

from bus.connection import Bus, translated
from bus.errors import BusError
from bus.runtime import ActorRuntime
from bus.subjects import Subjects

log = structlog.get_logger("staffwork.health")

#: The micro service every staffwork actor process registers.
SERVICE = "staffwork"
#: Its endpoint answering the process's health record.
ENDPOINT = "health"
_SEMVER = re.compile(r"\d+\.\d+\.\d+")
_STOP_TIMEOUT = 5.0


@dataclass(frozen=True)
class ProcessIdentity:
    """What a process says about itself beyond what it can find out (host, pid, start)."""

    roles: tuple[str, ...]
    agents: tuple[str, ...] = ()
    restarts: int = 0  # how often a supervisor restarted this process (``up`` counts them)


class ActorHealth(msgspec.Struct, frozen=True, kw_only=True):
    """One actor of the process: its consumer (empty for a service) and its counters so far."""

    actor: str
    consumer: str = ""
    ready: bool = False
    in_flight: int = 0
    handled: int = 0
    failed: int = 0
    rejected: int = 0


class HealthRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What a process answers about itself. ``status`` is ``ok`` (every actor consumes, connected),
    ``starting``, ``disconnected`` or ``stopping``. Fields are only added, with defaults."""

    status: str
    roles: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()
    root: str = ""
    host: str = ""
    pid: int = 0
    instance: str = ""  # the micro service's id
    version: str = ""  # staffwork's
    started_at: str = ""  # ISO 8601, UTC
    uptime_s: float = 0.0
    restarts: int = 0
    in_flight: int = 0
    handled: int = 0
    failed: int = 0
    rejected: int = 0
    last_error: str | None = None
    connected: bool = False
    actors: tuple[ActorHealth, ...] = ()


class _EndpointStats(msgspec.Struct):
    name: str = ""
    data: HealthRecord | None = None


class _ServiceStats(msgspec.Struct):
    """A ``$SRV.STATS`` answer, as much of it as :func:`discover` reads (unknown fields ignored)."""

    name: str = ""
    endpoints: list[_EndpointStats] = []


_stats_answer = msgspec.json.Decoder(_ServiceStats)
_record = msgspec.json.Decoder(HealthRecord)


def package_version() -> str:
    try:
        return importlib.metadata.version("staffwork")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


class ProcessService:
    """The process's micro service while its actors run: :meth:`start`, then :meth:`stop`."""

    def __init__(
        self, bus: Bus, identity: ProcessIdentity, runtimes: Sequence[ActorRuntime[Any]], stop: asyncio.Event
    ) -> None:
        self.bus = bus
        self.identity = identity
        self.runtimes = runtimes
        self.stopping = stop
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.version = package_version()
        self.started_at = datetime.now(UTC)
        self._started = time.monotonic()
        self._service: Service | None = None

    @property
    def metadata(self) -> dict[str, str]:
        return {
            "roles": ",".join(self.identity.roles),
            "agents": ",".join(self.identity.agents),
            "root": self.bus.subjects.root,
            "host": self.host,
            "pid": str(self.pid),
            "started_at": self._iso_start,
            "restarts": str(self.identity.restarts),
        }

    @property
    def _iso_start(self) -> str:
        return self.started_at.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    @property
    def instance(self) -> str:
        return self._service.id if self._service is not None else ""

    async def start(self) -> None:
        """Register the service and its health endpoint (:class:`BusError` if the server refuses)."""
        version = self.version if _SEMVER.fullmatch(self.version) else "0.0.0"  # micro wants semver
        config = ServiceConfig(
            name=SERVICE,
            version=version,
            description="a staffwork actor process",
            metadata=self.metadata,
            stats_handler=self._stats,
        )
        with translated("register the micro service", SERVICE, self.bus.url), warnings.catch_warnings():
            # nats.micro stamps its start with datetime.utcnow(), deprecated from Python 3.12 on
            warnings.simplefilter("ignore", DeprecationWarning)
            service = Service(self.bus._nc, config)
            self._service = service
            await service.start()
            await service.add_endpoint(
                EndpointConfig(
                    name=ENDPOINT,
                    handler=self._answer,
                    subject=self.bus.subjects.api_health,
                    queue_group=f"{ENDPOINT}-{service.id}",  # a group of its own: every process answers
                )
            )
        log.debug("process_service_started", instance=service.id, **self.metadata)

    async def stop(self) -> None:
        """Withdraw the service (bounded: a connection that is down cannot unsubscribe anyway)."""
        service, self._service = self._service, None
        if service is None:
            return
        try:
            async with asyncio.timeout(_STOP_TIMEOUT):
                await service.stop()
        except (nats.errors.Error, TimeoutError) as exc:
            log.warning("process_service_stop_failed", error=repr(exc))

    def record(self) -> HealthRecord:
        """The process's health now."""
        actors = tuple(
            ActorHealth(
                actor=runtime.actor.role,
                consumer=runtime.spec.durable,
                ready=runtime.ready.is_set(),
                in_flight=runtime.in_flight,
                handled=runtime.stats.handled,
                failed=runtime.stats.failed,
                rejected=runtime.stats.rejected,
            )
            for runtime in self.runtimes
        )
        connected = self.bus.online.is_set()
        if self.stopping.is_set():
            status = "stopping"
        elif not connected:
            status = "disconnected"
        elif not all(actor.ready for actor in actors):
            status = "starting"
        else:
            status = "ok"
        return HealthRecord(
            status=status,
            roles=self.identity.roles,
            agents=self.identity.agents,
            root=self.bus.subjects.root,
            host=self.host,
            pid=self.pid,
            instance=self.instance,
            version=self.version,
            started_at=self._iso_start,
            uptime_s=round(time.monotonic() - self._started, 3),
            restarts=self.identity.restarts,
            in_flight=sum(actor.in_flight for actor in actors),
            handled=sum(actor.handled for actor in actors),
            failed=sum(actor.failed for actor in actors),
            rejected=sum(actor.rejected for actor in actors),
            connected=connected,
            actors=actors,
            last_error=next((r.stats.last_error for r in self.runtimes if r.stats.last_error), None),
        )

    def _stats(self, endpoint: EndpointStats) -> Any:
        """The data of the endpoint's entry in a STATS answer: the health record."""
        return msgspec.to_builtins(self.record())

    async def _answer(self, request: Request) -> None:
        await request.respond(msgspec.json.encode(self.record()))


async def start_service(
    bus: Bus, identity: ProcessIdentity, runtimes: Sequence[ActorRuntime[Any]], stop: asyncio.Event
) -> ProcessService | None:
    """The process's service, started; None (logged) if it could not be: the actors serve anyway."""
    service = ProcessService(bus, identity, runtimes, stop)
    try:
        await service.start()
    except BusError as exc:
        log.warning("process_service_failed", error=str(exc))
        await service.stop()
        return None
    return service


# --- asking every process ---------------------------------------------------------------------------


async def gather(
    bus: Bus,
    subject: str,
    payload: bytes = b"",
    *,
    timeout: float,
    stall: float | None = None,
    enough: Callable[[bytes], bool] | None = None,
) -> list[bytes]:
    """Publish one request on ``subject`` and collect every answer: until ``timeout`` seconds have
    passed, or ``stall`` seconds without a new answer once one came, or an answer of which
    ``enough`` is true. When nobody listens the server says so and no answers come back at once."""
    answers: list[bytes] = []
    arrived = asyncio.Event()
    finished = False

    async def collect(msg: Msg) -> None:
        nonlocal finished
        if not msg.data and (msg.headers or {}).get("Status") == "503":  # no responders
            finished = True
        else:
            answers.append(bytes(msg.data))
            finished = finished or (enough is not None and enough(answers[-1]))
        arrived.set()

    async def until_done() -> None:
        while not finished:
            arrived.clear()
            if stall is None or not answers:
                await arrived.wait()
                continue
            try:
                async with asyncio.timeout(stall):
                    await arrived.wait()
            except TimeoutError:
                return

    nc = bus._nc
    inbox = nc.new_inbox()
    with translated("gather answers", subject, bus.url, timeout=timeout):
        sub = await nc.subscribe(inbox, cb=collect)
    try:
        with translated("gather answers", subject, bus.url, timeout=timeout):
            await nc.publish(subject, payload, reply=inbox)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await until_done()
    finally:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()
    return answers


async def discover(bus: Bus, *, timeout: float = 1.0) -> list[HealthRecord]:
    """Every staffwork process on the bus (any root) that answers ``$SRV.STATS.staffwork`` within
    ``timeout`` seconds: its health record. Answers that are not a staffwork record are skipped."""
    records: list[HealthRecord] = []
    for raw in await gather(bus, Subjects.service_stats(SERVICE), timeout=timeout):
        try:
            stats = _stats_answer.decode(raw)
        except msgspec.DecodeError as exc:
            log.debug("stats_answer_skipped", error=str(exc))
            continue
        records += [e.data for e in stats.endpoints if e.name == ENDPOINT and e.data is not None]
    return records


async def probe(
    bus: Bus, *, timeout: float, enough: Callable[[HealthRecord], bool] | None = None
) -> list[HealthRecord]:
    """The health records the processes of the bus's root answer on ``<root>.api.health`` within
    ``timeout`` seconds; done at the first record of which ``enough`` is true."""
    records: list[HealthRecord] = []

    def took(raw: bytes) -> bool:
        try:
            record = _record.decode(raw)
        except msgspec.DecodeError as exc:
            log.debug("health_answer_skipped", error=str(exc))
            return False
        records.append(record)
        return enough is not None and enough(record)

    await gather(bus, bus.subjects.api_health, timeout=timeout, enough=took)
    return records


__all__ = [
    "ENDPOINT",
    "SERVICE",
    "ActorHealth",
    "HealthRecord",
    "ProcessIdentity",
    "ProcessService",
    "discover",
    "gather",
    "package_version",
    "probe",
    "start_service",
]
