"""Running actors as a process: signals, graceful stop, and the connection's drain.

SIGTERM or SIGINT asks every actor to stop gracefully (finish in-flight work within its grace
period); a second signal cancels everything. The connection is drained last. A process that says who
it is (a :class:`~bus.health.ProcessIdentity`) is a NATS micro service while its actors run
(``bus/health.py``): ``staffwork ps`` and ``staffwork health`` find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from bus.actor import Actor
from bus.connection import Bus
from bus.health import ProcessIdentity, start_service
from bus.runtime import ActorRuntime, RuntimeSettings

log = structlog.get_logger("staffwork.lifecycle")


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
    actors: Sequence[Actor[Any] | tuple[Actor[Any], RuntimeSettings]],
    stop: asyncio.Event,
    settings: RuntimeSettings | None = None,
    *,
    on_ready: Callable[[], Awaitable[None] | None] | None = None,
    identity: ProcessIdentity | None = None,
) -> list[ActorRuntime[Any]]:
    """Run ``actors`` on ``bus`` until ``stop`` is set, then let each finish gracefully. An actor
    may come with its own settings (``(actor, settings)``); the others get ``settings``. With an
    ``identity``, the process is the ``staffwork`` micro service meanwhile (``bus/health.py``).

    If an actor cannot start (its consumer cannot be created, say), the others are stopped and that
    error is raised as itself, not wrapped in an exception group.
    """
    runtimes = [
        ActorRuntime(bus, *item) if isinstance(item, tuple) else ActorRuntime(bus, item, settings)
        for item in actors
    ]
    service = await start_service(bus, identity, runtimes, stop) if identity is not None else None
    try:
        async with asyncio.TaskGroup() as tg:
            for runtime in runtimes:
                tg.create_task(runtime.run(stop), name=f"actor-{runtime.actor.role}")
            if on_ready is not None:
                await asyncio.gather(*(r.ready.wait() for r in runtimes))
                if (result := on_ready()) is not None:
                    await result
    except* Exception as group:
        first = group.exceptions[0]
        raise first from (group if len(group.exceptions) > 1 else None)
    finally:
        if service is not None:
            await service.stop()
    return runtimes


async def serve(
    url: str,
    actors: Sequence[Actor[Any]],
    *,
    root: str = "sw",
    name: str = "staffwork-actor",
    settings: RuntimeSettings | None = None,
    on_ready: Callable[[], Awaitable[None] | None] | None = None,
    identity: ProcessIdentity | None = None,
) -> list[ActorRuntime[Any]]:
    """A whole actor process: connect, run until SIGTERM/SIGINT, finish in-flight work, drain. With
    an ``identity``, a ``staffwork`` micro service while it runs."""
    stop = asyncio.Event()
    main = asyncio.current_task()

    def cancel_everything() -> None:
        if main is not None:
            main.cancel()

    install_stop_signals(stop, on_second=cancel_everything)
    bus = await Bus.connect(url, root=root, name=name)
    try:
        return await run_actors(bus, actors, stop, settings, on_ready=on_ready, identity=identity)
    finally:
        await bus.close()
