"""The roles a process can run, in one table: :data:`ROLES`.

A role is the list of actors (consumers and services) built for one job from a :class:`RoleConfig`.
``staffwork actor ROLE`` serves one role, ``staffwork up`` starts a process per role (per agent for
``subagent``), ``staffwork run`` runs in-process the roles a team needs that nobody serves, and
tests use :func:`running`. The actors of one process share a session directory and a cancel watch.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.agent.models import default_model
from actors.agent.models.base import Model
from actors.collector.actor import CollectorActor, TraceStore
from actors.collector.otlp import OtlpExporter
from actors.dreamer.actor import DreamerService, DreamSchedule
from actors.grader.actor import GraderActor
from actors.grader.checks import CHECK_TIMEOUT
from actors.lead.actor import LeadActor, LeadSettings
from actors.lead.gateway import SubmitGateway
from actors.sessions.cancel import CancelWatch
from actors.sessions.directory import SessionDirectory
from actors.subagent import SubagentActor
from actors.webhooks.actor import WebhookDeliverer, WebhookEvents, WebhookSettings
from bus.actor import Actor
from bus.connection import Bus
from bus.lifecycle import run_actors
from bus.paths import data_dir
from bus.runtime import RuntimeSettings
from bus.subjects import Subjects
from schemas.team import TeamSpec


@dataclass(frozen=True)
class AgentSettings:
    lead_ack_wait: float = 30.0
    subagent_ack_wait: float = 30.0
    lead_concurrency: int = 16  # sessions one lead process drives at once
    subagent_concurrency: int = 20  # threads one worker runs at once, per agent
    grace: float = 30.0
    max_deliver: int = 5
    grade_timeout: float = 900.0  # how long the lead waits for the grader's verdict on an attempt


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


Built = list[tuple[Actor[Any], RuntimeSettings]]


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
        ),
    )
    return [
        (lead, RuntimeSettings(concurrency=settings.lead_concurrency, grace=settings.grace)),
        (SubmitGateway(), RuntimeSettings()),
    ]


def _subagents(process: Process) -> Built:
    settings = process.config.agent_settings
    runtime = RuntimeSettings(concurrency=settings.subagent_concurrency, grace=settings.grace)
    return [
        (
            SubagentActor(
                name,
                model=process.model,
                directory=process.directory,
                cancels=process.cancels,
                ack_wait=settings.subagent_ack_wait,
                max_deliver=settings.max_deliver,
            ),
            runtime,
        )
        for name in process.config.agents
    ]


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
    )
}


def build(bus: Bus, roles: Iterable[str], config: RoleConfig) -> Built:
    """The actors of ``roles`` for one process (sharing its directory and cancel watch)."""
    process = Process(bus, config)
    built: Built = []
    for name in roles:
        built += ROLES[name].build(process)
    return built


async def serve_roles(
    bus: Bus,
    roles: Iterable[str],
    config: RoleConfig,
    stop: asyncio.Event,
    *,
    on_ready: Callable[[], Awaitable[None] | None] | None = None,
) -> None:
    """Run ``roles`` on ``bus`` until ``stop`` is set; ``on_ready`` once every actor consumes."""
    await run_actors(bus, build(bus, roles, config), stop, on_ready=on_ready)


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
    settings: AgentSettings | None = None,
) -> AbstractAsyncContextManager[None]:
    """The lead (with its gateway) and/or subagent workers for ``agents``, for a block."""
    roles = (["lead"] if lead else []) + (["subagent"] if agents else [])
    config = RoleConfig(model=model, agents=tuple(agents), agent_settings=settings or AgentSettings())
    return running(bus, roles, config)


__all__ = [
    "ROLES",
    "AgentSettings",
    "Process",
    "Role",
    "RoleConfig",
    "build",
    "running",
    "running_agents",
    "serve_roles",
]
