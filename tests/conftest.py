"""Fixtures: a real nats-server (random port, readiness read from its log), a unique subject root per
test, and a connected, provisioned bus on that root."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bus.connection import Bus
from bus.provision import StreamSettings, provision
from bus.server import find_server_binary

READY_TIMEOUT = 20.0


@dataclass
class NatsServer:
    url: str
    port: int
    store_dir: Path
    process: subprocess.Popen[bytes]
    log: list[str]
    reader: threading.Thread


def start_nats_server(store_dir: Path, *, jetstream: bool = True) -> NatsServer:
    """Start ``nats-server -p -1 -js -sd <dir>`` and block until it logs "Server is ready"."""
    binary = find_server_binary()
    js = ["-js", "-sd", str(store_dir)] if jetstream else []
    proc = subprocess.Popen(
        [str(binary), "-a", "127.0.0.1", "-p", "-1", *js],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None
    lines: list[str] = []
    port = 0
    ready = threading.Event()

    def reader() -> None:
        nonlocal port
        assert proc.stderr is not None
        for raw in proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            if match := re.search(r"Listening for client connections on \S+:(\d+)", line):
                port = int(match.group(1))
            if "Server is ready" in line:
                ready.set()
        ready.set()  # exited: let the waiter see it

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    if not ready.wait(READY_TIMEOUT) or not port:
        proc.kill()
        raise RuntimeError("nats-server did not become ready:\n" + "\n".join(lines[-20:]))
    return NatsServer(
        url=f"nats://127.0.0.1:{port}", port=port, store_dir=store_dir, process=proc, log=lines, reader=thread
    )


def stop_nats_server(server: NatsServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()
    server.reader.join(10)
    assert server.process.stderr is not None
    server.process.stderr.close()


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
def no_server_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Make nats-server impossible to find (no override, empty scripts dir, empty PATH)."""
    monkeypatch.delenv("STAFFWORK_NATS_SERVER", raising=False)
    monkeypatch.setattr("sysconfig.get_path", lambda name: str(tmp_path))
    monkeypatch.setattr("sys.executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    assert shutil.which("nats-server") is None
    assert os.environ["PATH"] == str(tmp_path)
