"""Running agent actors: the lead and the subagent workers, with what they share in a process.

``agent_actors`` builds the actors a process runs: the lead (``lead=True``) and one subagent worker
per agent name in ``agents`` (all of a team's agents, or only named ones). ``running_agents`` runs
them on a bus until the block ends (tests, ``staffwork run``); ``staffwork actor`` serves them as a
process until SIGTERM.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from actors.agent.models.base import Model
from actors.lead.gateway import SubmitGateway
from actors.lead.run import LeadActor, LeadSettings
from actors.sessions.directory import CancelWatch, SessionDirectory
from actors.subagent import SubagentActor
from bus.actor import Actor
from bus.connection import Bus
from bus.runtime import ActorRuntime, RuntimeSettings


@dataclass(frozen=True)
class AgentSettings:
    lead_ack_wait: float = 30.0
    subagent_ack_wait: float = 30.0
    lead_concurrency: int = 16  # sessions one lead process drives at once
    subagent_concurrency: int = 20  # threads one worker runs at once, per agent
    grace: float = 30.0
    max_deliver: int = 5
    grade_timeout: float = 900.0  # how long the lead waits for the grader's verdict on an attempt
    extra: dict[str, Any] = field(default_factory=dict)


def agent_actors(
    *,
    model: Model,
    directory: SessionDirectory,
    cancels: CancelWatch,
    lead: bool,
    agents: Sequence[str],
    settings: AgentSettings,
) -> list[tuple[Actor[Any], RuntimeSettings]]:
    actors: list[tuple[Actor[Any], RuntimeSettings]] = []
    if lead:
        lead_actor = LeadActor(
            model=model,
            directory=directory,
            cancels=cancels,
            settings=LeadSettings(
                ack_wait=settings.lead_ack_wait,
                subagent_ack_wait=settings.subagent_ack_wait,
                grade_timeout=settings.grade_timeout,
            ),
        )
        actors.append(
            (lead_actor, RuntimeSettings(concurrency=settings.lead_concurrency, grace=settings.grace))
        )
    for name in agents:
        worker = SubagentActor(
            name,
            model=model,
            directory=directory,
            cancels=cancels,
            ack_wait=settings.subagent_ack_wait,
            max_deliver=settings.max_deliver,
        )
        actors.append(
            (worker, RuntimeSettings(concurrency=settings.subagent_concurrency, grace=settings.grace))
        )
    return actors


@asynccontextmanager
async def running_agents(
    bus: Bus,
    model: Model,
    *,
    lead: bool = True,
    agents: Sequence[str] = (),
    settings: AgentSettings | None = None,
) -> AsyncIterator[None]:
    """Run a lead and/or subagent workers on ``bus`` for the duration of the block."""
    async with running_service(
        lambda stop, ready: serve_agents(
            bus, model, stop, lead=lead, agents=agents, settings=settings, on_ready=ready
        )
    ):
        yield


@asynccontextmanager
async def running_service(
    serve: Callable[[asyncio.Event, Callable[[], None]], Awaitable[None]],
) -> AsyncIterator[None]:
    """Run ``serve(stop, on_ready)`` (a ``serve_*`` function: the grader, the webhooks actor) for the
    duration of the block, once it is ready; stop it after."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    serving = asyncio.ensure_future(serve(stop, ready.set))
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


async def serve_agents(
    bus: Bus,
    model: Model,
    stop: asyncio.Event,
    *,
    lead: bool,
    agents: Sequence[str],
    settings: AgentSettings | None = None,
    on_ready: Callable[[], Awaitable[None] | None] | None = None,
) -> None:
    """Run the actors until ``stop`` is set (a process's main loop); ``on_ready`` once all consume."""
    settings = settings or AgentSettings()
    cancels = CancelWatch(bus)
    await cancels.start()
    gateway = SubmitGateway(bus) if lead else None
    if gateway is not None:
        await gateway.start()
    try:
        built = agent_actors(
            model=model,
            directory=SessionDirectory(bus),
            cancels=cancels,
            lead=lead,
            agents=agents,
            settings=settings,
        )
        runtimes = [ActorRuntime(bus, actor, runtime_settings) for actor, runtime_settings in built]
        async with asyncio.TaskGroup() as tg:
            for runtime in runtimes:
                tg.create_task(runtime.run(stop))
            await asyncio.gather(*(r.ready.wait() for r in runtimes))
            if on_ready is not None:
                result = on_ready()
                if result is not None:
                    await result
    finally:
        if gateway is not None:
            await gateway.stop()
        await cancels.stop()


__all__ = ["AgentSettings", "agent_actors", "running_agents", "running_service", "serve_agents"]
