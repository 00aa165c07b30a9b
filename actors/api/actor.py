"""The ``api`` role: the HTTP API served by uvicorn inside an actor process, from ``on_start`` to
``on_stop``, on the process's bus connection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import structlog
import uvicorn

from actors.api.app import create_app
from actors.api.auth import ApiKeys
from actors.api.http import ApiState
from actors.api.records import Records
from bus.actor import BaseActor
from bus.connection import Bus
from bus.errors import ConfigError
from bus.subjects import Subjects

log = structlog.get_logger("staffwork.api")


@dataclass(frozen=True)
class ApiSettings:
    """Where the HTTP API listens, and the keys it accepts."""

    keys: ApiKeys
    host: str = "127.0.0.1"
    port: int = 8480  # 0: any free port


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the actor process owns SIGINT and SIGTERM: it stops the server through on_stop


class ApiActor(BaseActor[None]):
    """A service (no consumer): the HTTP API on ``host:port`` (port 0: any free port, see ``port``)."""

    role = "api"

    def __init__(self, keys: ApiKeys, *, host: str = "127.0.0.1", port: int = 8480) -> None:
        self.keys = keys
        self.host = host
        self.requested_port = port
        self.port = 0
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None

    def consumer(self, subjects: Subjects) -> None:
        return None

    async def on_start(self, bus: Bus) -> None:
        app = create_app(ApiState(bus=bus, keys=self.keys, records=Records(bus)))
        config = uvicorn.Config(
            app,
            host=self.host,
            port=self.requested_port,
            log_level="warning",
            lifespan="off",
            access_log=False,
        )
        server = self._server = _Server(config)
        self._task = asyncio.create_task(server.serve(), name="api-server")
        async with asyncio.timeout(10):
            while not server.started:
                if self._task.done():  # it could not bind: say why
                    self._task.result()
                    raise ConfigError(f"the HTTP API could not listen on {self.host}:{self.requested_port}")
                await asyncio.sleep(0.01)
        self.port = server.servers[0].sockets[0].getsockname()[1]
        log.info("api_listening", url=self.url)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def on_stop(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(self._task, timeout=10)
            self._server = self._task = None
