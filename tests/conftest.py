"""Fixtures: a real nats-server (random port, readiness read from its log), a unique subject root per
test, a connected, provisioned bus on that root, and a plain nats client beside it. The helpers
behind them are in ``tests/helpers.py``."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anthropic
import pytest
import structlog
from nats.aio.client import Client as NATS

from actors.api.actor import ApiActor
from actors.api.auth import ApiKeys
from bus.connection import Bus
from bus.provision import StreamSettings, provision
from tests.helpers import (
    API_KEY,
    JS_DIR,
    OTHER_API_KEY,
    NatsServer,
    api_client,
    nats_client,
    npm_ci,
    start_nats_server,
    stop_nats_server,
)


def pytest_configure(config: pytest.Config) -> None:
    """structlog keeps its defaults (every level; tests capture what they check), marked configured
    so that ``Client.connect`` does not set up logging for a calling program as it does elsewhere."""
    structlog.configure()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    try:
        yield server
    finally:
        stop_nats_server(server)


@pytest.fixture
def plain_nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A server without JetStream."""
    server = start_nats_server(tmp_path, jetstream=False)
    try:
        yield server
    finally:
        stop_nats_server(server)


@pytest.fixture
def root() -> str:
    """A subject root no other test uses (so no stream, consumer or bucket is shared)."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def bus(nats_server: NatsServer, root: str) -> AsyncIterator[Bus]:
    bus = await Bus.connect(nats_server.url, root=root, name="test")
    await provision(bus, settings=StreamSettings(max_age=3600))
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    """A plain nats-py client on the test server: raw publishes and subscriptions, JetStream state."""
    async with nats_client(nats_server.url) as client:
        yield client


@pytest.fixture
def no_server_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make nats-server impossible to find (no override, empty scripts dir, empty PATH)."""
    monkeypatch.delenv("STAFFWORK_NATS_SERVER", raising=False)
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("nats-server") is None
    assert os.environ["PATH"] == str(tmp_path)


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """``npm ci`` in ``examples/tools/js`` once per test session (skipped without node, unless CI)."""
    return npm_ci(JS_DIR, "the JavaScript example service needs them")


@pytest.fixture
async def api(bus: Bus) -> AsyncIterator[ApiActor]:
    """The HTTP API on a random port, on the test's bus; keys: ``API_KEY`` (workspace acme) and
    ``OTHER_API_KEY`` (globex)."""
    actor = ApiActor(ApiKeys.parse(f"acme={API_KEY},globex={OTHER_API_KEY}"), port=0)
    await actor.on_start(bus)
    try:
        yield actor
    finally:
        await actor.on_stop()


@pytest.fixture
async def sdk(api: ApiActor) -> AsyncIterator[anthropic.AsyncAnthropic]:
    """The official SDK's async client on ``api``, with ``API_KEY``."""
    async with api_client(api) as client:
        yield client
