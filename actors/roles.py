"""The roles a process can run, in one table: :data:`ROLES`.

A role is the list of actors (consumers and services) built for one job from a :class:`RoleConfig`.
``staffwork actor ROLE`` serves one role, ``staffwork up`` starts a process per role (per agent for
``subagent``; the ``pool`` serves any agent), ``staffwork run`` runs in-process the roles a team
needs that nobody serves, and tests use :func:`running`. The actors of one process share a session
directory and a cancel watch.

A process that serves sessions (the lead, subagent, pool or grader role) says with which model it does
(:class:`ModelNotice`: provider and endpoint, in the root's registry), so that ``run`` shares actors
only with processes of its own model.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import structlog

from actors.agent.models import default_model, model_profile
from actors.agent.models.base import Model
from actors.api.actor import ApiActor, ApiSettings
from actors.api.auth import ENV as API_KEYS_ENV
from actors.collector.actor import CollectorActor, TraceStore
from actors.collector.otlp import OtlpExporter
from actors.dreamer.actor import DreamerService, DreamSchedule
from actors.grader.actor import GraderActor
from actors.grader.checks import CHECK_TIMEOUT
from actors.lead.actor import LeadActor, LeadSettings
from actors.lead.gateway import SubmitGateway
from actors.pool import POOL_AGENTS, PoolService
from actors.sessions.cancel import CancelWatch
from actors.sessions.directory import SessionDirectory
from actors.subagent import SubagentActor
from actors.webhooks.actor import WebhookDeliverer, WebhookEvents, WebhookSettings
from bus.actor import Actor, BaseActor
from bus.connection import Bus
from bus.errors import BusError, ConfigError
from bus.health import ProcessIdentity
from bus.lifecycle import run_actors
from bus.paths import data_dir
from bus.runtime import RuntimeSettings
from bus.subjects import Subjects
from schemas.ids import new_id
from schemas.team import AgentSpec, TeamSpec

log = structlog.get_logger("staffwork.roles")


@dataclass(frozen=True)
class AgentSettings:
    lead_ack_wait: float = 30.0
    subagent_ack_wait: float = 30.0
    #: sessions one lead process drives at once. A session mostly waits (on models, threads, the
    #: grader), so this is high: sessions waiting on others never hold back new ones.
    lead_concurrency: int = 256
    subagent_concurrency: int = 20  # threads one worker runs at once, per agent
    grace: float = 30.0
    max_deliver: int = 5
    grade_timeout: float = 900.0  # how long the lead waits for the grader's verdict on an attempt
    claim_timeout: float = 120.0  # a delegation no worker has taken by then fails (no worker serves it)
    session_deadline: float = 3600.0  # a session's deadline when neither its submit nor its team sets one
    #: agents one pool process serves at most (beyond: a warning, and the gateway's no_worker)
    pool_agents: int = POOL_AGENTS


@dataclass(frozen=True)
class RoleConfig:
    """What roles are built from; each role reads the fields it needs."""

    model: Model | None = None  # None: default_model() (Claude with an API key, else offline)
    agents: Sequence[str] = ()  # subagent: the agents this process serves
    agent_settings: AgentSettings = field(default_factory=AgentSettings)
    db: Path | None = None  # collector: the SQLite database (default: <data dir>/trace.db)
    otlp: str | None = None  # collector: an OTLP/HTTP endpoint to export spans to
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    check_timeout: float = CHECK_TIMEOUT  # grader: seconds per machine check
    schedules: Sequence[DreamSchedule] = ()  # dreamer: dreams on a schedule
    team: TeamSpec | None = None  # subagent: the team about to run (its agents' MCP servers start now)
    api: ApiSettings | None = None  # api: where it listens and its keys (it cannot run without keys)


Built = list[tuple[Actor[Any], RuntimeSettings]]


def _spec(team: TeamSpec | None, agent: str) -> AgentSpec | None:
    """``agent`` as ``team`` defines it (None without a team, or if it is not on it)."""
    return next((spec for spec in team.agents if spec.name == agent), None) if team is not None else None


class Process:
    """What the actors of one process share, and how they are built."""

    def __init__(self, bus: Bus, config: RoleConfig) -> None:
        self.bus = bus
        self.config = config
        self.model = config.model or default_model()
        self.directory = SessionDirectory(bus)
        self.cancels = CancelWatch(bus)


def _lead(process: Process) -> Built:
    settings = process.config.agent_settings
    lead = LeadActor(
        model=process.model,
        directory=process.directory,
        cancels=process.cancels,
        settings=LeadSettings(
            ack_wait=settings.lead_ack_wait,
            subagent_ack_wait=settings.subagent_ack_wait,
            grade_timeout=settings.grade_timeout,
            claim_timeout=settings.claim_timeout,
            session_deadline=settings.session_deadline,
        ),
    )
    return [
        (lead, RuntimeSettings(concurrency=settings.lead_concurrency, grace=settings.grace)),
        (SubmitGateway(claim_timeout=settings.claim_timeout), RuntimeSettings()),
    ]


def _subagent(process: Process, name: str, warm: AgentSpec | None = None) -> SubagentActor:
    settings = process.config.agent_settings
    return SubagentActor(
        name,
        model=process.model,
        directory=process.directory,
        cancels=process.cancels,
        ack_wait=settings.subagent_ack_wait,
        max_deliver=settings.max_deliver,
        warm=warm,
    )


def _subagents(process: Process) -> Built:
    settings = process.config.agent_settings
    runtime = RuntimeSettings(concurrency=settings.subagent_concurrency, grace=settings.grace)
    return [
        (_subagent(process, name, warm=_spec(process.config.team, name)), runtime)
        for name in process.config.agents
    ]


def _pool(process: Process) -> Built:
    settings = process.config.agent_settings
    # The pool makes sure of each agent's consumer itself, leaving one that exists as it is.
    runtime = RuntimeSettings(
        concurrency=settings.subagent_concurrency, grace=settings.grace, create_consumer=False
    )
    pool = PoolService(
        lambda name: _subagent(process, name),  # no team known ahead: MCP servers start on first use
        directory=process.directory,
        settings=runtime,
        limit=settings.pool_agents,
    )
    return [(pool, RuntimeSettings())]


def _collector(process: Process) -> Built:
    config = process.config
    exporter = OtlpExporter(config.otlp) if config.otlp else None  # ValueError: a bad URL
    store = TraceStore(config.db or data_dir() / "trace.db")
    collector = CollectorActor(store, exporter=exporter, owns_store=True)
    return [(collector, RuntimeSettings(concurrency=1024, batch_size=256))]  # batches: handle_batch


def _grader(process: Process) -> Built:
    return [(GraderActor(model=process.model, check_timeout=process.config.check_timeout), RuntimeSettings())]


def _webhooks(process: Process) -> Built:
    settings = process.config.webhooks
    runtime = RuntimeSettings(concurrency=settings.concurrency, grace=settings.timeout + 5.0)
    return [(WebhookEvents(settings), runtime), (WebhookDeliverer(settings), runtime)]


def _api(process: Process) -> Built:
    settings = process.config.api
    if settings is None:
        raise ConfigError(f"the api role needs API keys: set {API_KEYS_ENV}=WORKSPACE=KEY[,...]")
    return [(ApiActor(settings.keys, host=settings.host, port=settings.port), RuntimeSettings())]


def _dreamer(process: Process) -> Built:
    return [(DreamerService(process.model, schedules=process.config.schedules), RuntimeSettings())]


def _always(team: TeamSpec) -> bool:
    return True


@dataclass(frozen=True)
class Role:
    name: str
    help: str
    build: Callable[[Process], Built]
    #: the durable consumer whose active pullers mean another process serves this role (None: a
    #: service, which ``run`` does not start)
    consumer: Callable[[Subjects], str] | None = None
    #: whether a team's session needs this role (``run`` starts the ones nobody serves)
    needed: Callable[[TeamSpec], bool] = _always
    #: the ``staffwork actor`` options this role reads (``up`` passes them on)
    options: tuple[str, ...] = ()
    #: ``up`` runs one process per agent (``--agents <one>``)
    per_agent: bool = False


ROLES: dict[str, Role] = {
    role.name: role
    for role in (
        Role(
            "lead",
            "drives sessions from <root>.submit and answers <root>.api.submit",
            _lead,
            consumer=lambda s: s.lead_consumer,
        ),
        Role(
            "subagent",
            "runs delegations and follow-ups for the agents given",
            _subagents,
            options=("agents",),
            per_agent=True,
        ),
        Role(
            "pool",
            "runs delegations and follow-ups for any agent of any session (<root>.api.pool)",
            _pool,
            needed=lambda team: False,
            options=("max_agents",),
        ),
        Role(
            "collector",
            "stores every trace event and answers <root>.api.trace",
            _collector,
            consumer=lambda s: s.collector_consumer,
            needed=lambda team: False,
            options=("db", "otlp"),
        ),
        Role(
            "grader",
            "grades outcome attempts in a fresh context",
            _grader,
            consumer=lambda s: s.grader_consumer,
            needed=lambda team: team.outcome is not None,
        ),
        Role(
            "webhooks",
            "turns lifecycle events into signed, retried deliveries",
            _webhooks,
            consumer=lambda s: s.webhook_deliveries_consumer,
            needed=lambda team: bool(team.webhooks),
            options=("allow_private",),
        ),
        Role(
            "dreamer",
            "curates memory stores from past sessions on request and on a schedule",
            _dreamer,
            needed=lambda team: False,
        ),
        Role(
            "api",
            "the Managed Agents HTTP API (the anthropic SDK's client.beta.*) onto the bus",
            _api,
            needed=lambda team: False,
            options=("api_host", "api_port"),
        ),
    )
}


# --- which model serves a root's sessions ----------------------------------------------------------

#: The registry key (in ``<key>_registry``) of the notice: ``{instance: {"model": profile, "at": t}}``.
NOTICE_KEY = "serving"
NOTICE_EVERY = 5.0  # seconds between renewals of a process's line
NOTICE_FRESH = 3 * NOTICE_EVERY  # a line not renewed for this long is forgotten (its process died)
#: The roles whose actors call a model on a session's behalf.
SESSION_ROLES = frozenset({"lead", "subagent", "pool", "grader"})


class NoticeLine(msgspec.Struct, frozen=True):
    model: str  # the process's model profile (provider and endpoint)
    at: float  # when it was last renewed (Unix time)


_lines = msgspec.json.Decoder(dict[str, NoticeLine])


class ModelNotice:
    """This process's line in its root's notice of which models serve sessions there: written by
    :meth:`start`, renewed every :data:`NOTICE_EVERY` seconds, withdrawn by :meth:`stop`. A process
    that dies without stopping is forgotten :data:`NOTICE_FRESH` seconds after its last renewal."""

    def __init__(self, bus: Bus, profile: str) -> None:
        self.bus = bus
        self.profile = profile
        self.instance = new_id("srv")
        self._renewing: asyncio.Task[None] | None = None

    async def start(self) -> dict[str, str]:
        """Write this process's line; the other processes' lines (instance: model profile)."""
        lines = await self._change(self._mine)
        self._renewing = asyncio.ensure_future(self._renew())
        return {instance: line.model for instance, line in lines.items() if instance != self.instance}

    async def stop(self) -> None:
        if self._renewing is not None:
            self._renewing.cancel()
            await asyncio.wait({self._renewing})  # its end, without swallowing a cancel of our own
            self._renewing = None
        try:
            await self._change(lambda lines: lines.pop(self.instance, None))
        except BusError as exc:  # the line is forgotten once it is stale anyway
            log.warning("model_notice_withdraw_failed", error=str(exc))

    def _mine(self, lines: dict[str, NoticeLine]) -> None:
        lines[self.instance] = NoticeLine(self.profile, time.time())

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(NOTICE_EVERY)
            try:
                await self._change(self._mine)
            except Exception as exc:  # an outage: renewed again at the next turn
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    # stopped while a request timed out: on 3.11 the cancel can arrive as that
                    # TimeoutError, and swallowing it would keep stop() waiting a whole turn
                    raise asyncio.CancelledError from exc
                log.warning("model_notice_renew_failed", error=repr(exc))

    async def _change(self, edit: Callable[[dict[str, NoticeLine]], object]) -> dict[str, NoticeLine]:
        """Apply ``edit`` to the fresh lines (compare-and-set, retried on a conflict); the lines after."""
        kv = await self.bus.kv(self.bus.subjects.registry_bucket)
        for _ in range(50):
            stored = await kv.entry(NOTICE_KEY)
            try:
                lines = _lines.decode(stored[0]) if stored else {}
            except msgspec.DecodeError:
                lines = {}  # a damaged notice: rebuilt from the lines renewed from now on
            oldest = time.time() - NOTICE_FRESH
            lines = {instance: line for instance, line in lines.items() if line.at > oldest}
            edit(lines)
            value = msgspec.json.encode(lines)
            if await (kv.update(NOTICE_KEY, value, stored[1]) if stored else kv.create(NOTICE_KEY, value)):
                return lines
        raise BusError(f"the notice {NOTICE_KEY!r} in {kv.bucket} kept changing under this process")


class ModelNoticeService(BaseActor[None]):
    """A service of every process that serves sessions: its :class:`ModelNotice`, while it runs."""

    role = "model-notice"

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self._notice: ModelNotice | None = None

    def consumer(self, subjects: Subjects) -> None:
        return None

    async def on_start(self, bus: Bus) -> None:
        notice = ModelNotice(bus, self.profile)
        try:
            await notice.start()
        except BusError as exc:  # the notice helps run choose; serving goes on without it
            log.warning("model_notice_failed", error=str(exc))
            return
        self._notice = notice

    async def on_stop(self) -> None:
        if self._notice is not None:
            await self._notice.stop()
            self._notice = None


def build(bus: Bus, roles: Iterable[str], config: RoleConfig) -> Built:
    """The actors of ``roles`` for one process (sharing its directory and cancel watch); with the
    process's :class:`ModelNoticeService` when it serves sessions."""
    process = Process(bus, config)
    built: Built = []
    names = list(roles)
    for name in names:
        built += ROLES[name].build(process)
    if SESSION_ROLES.intersection(names):
        built.append((ModelNoticeService(model_profile(process.model)), RuntimeSettings()))
    return built


async def serve_roles(
    bus: Bus,
    roles: Iterable[str],
    config: RoleConfig,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[], Awaitable[None] | None] | None = None,
    identity: ProcessIdentity | None = None,
) -> None:
    """Run ``roles`` on ``bus`` until ``stop`` is set; ``on_ready`` once every actor consumes. With
    an ``identity``, the process is the ``staffwork`` micro service meanwhile (``staffwork ps``)."""
    await run_actors(bus, build(bus, roles, config), stop, on_ready=on_ready, identity=identity)


@asynccontextmanager
async def running(bus: Bus, roles: Iterable[str], config: RoleConfig | None = None) -> AsyncIterator[None]:
    """Run ``roles`` for the duration of the block, once they are ready; stop them gracefully after."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    serving = asyncio.ensure_future(
        serve_roles(bus, list(roles), config or RoleConfig(), stop, on_ready=ready.set)
    )
    waiting = asyncio.ensure_future(ready.wait())
    try:
        await asyncio.wait({serving, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()  # it failed to start: raise why
        yield
    finally:
        waiting.cancel()
        stop.set()
        await serving


def running_agents(
    bus: Bus,
    model: Model,
    *,
    lead: bool = True,
    agents: Sequence[str] = (),
    pool: bool = False,
    settings: AgentSettings | None = None,
) -> AbstractAsyncContextManager[None]:
    """The lead (with its gateway), subagent workers for ``agents`` and/or a pool, for a block."""
    roles = (["lead"] if lead else []) + (["subagent"] if agents else []) + (["pool"] if pool else [])
    config = RoleConfig(model=model, agents=tuple(agents), agent_settings=settings or AgentSettings())
    return running(bus, roles, config)


__all__ = [
    "NOTICE_FRESH",
    "ROLES",
    "AgentSettings",
    "ModelNotice",
    "ModelNoticeService",
    "Process",
    "Role",
    "RoleConfig",
    "build",
    "running",
    "running_agents",
    "serve_roles",
]
