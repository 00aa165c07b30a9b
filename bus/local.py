"""The per-user embedded server: one at a time, found by every command through a state file.

``up``, ``server`` and ``run`` write ``<data dir>/server.json`` (pid, URL, mode) when they start the
embedded server; ``run``, ``submit``, ``status``, ``fs``... read it and attach instead of starting a
second server (the store lock in ``bus.server`` makes a second server on the same store impossible
anyway). Commands attached to a server register themselves under ``<data dir>/clients/<pid>``, and
the process that owns the server waits for them to finish before stopping it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bus.paths import data_dir
from bus.server import EmbeddedServer


@dataclass(frozen=True)
class LocalServer:
    url: str
    pid: int
    mode: str  # "up", "server" or "run"
    store: str


def _state_file() -> Path:
    return data_dir() / "server.json"


def _clients_dir() -> Path:
    return data_dir() / "clients"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_server() -> LocalServer | None:
    """The server another staffwork command runs for this user: its process is alive and its port
    accepts connections (a pid alone can be reused by an unrelated process)."""
    try:
        state = json.loads(_state_file().read_text())
        server = LocalServer(**state)
    except (OSError, ValueError, TypeError):
        return None
    if not _alive(server.pid) or not _listening(server.url):
        return None
    return server


def _listening(url: str) -> bool:
    host, _, port = url.removeprefix("nats://").rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=1.0):
            return True
    except (OSError, ValueError):
        return False


async def announced(timeout: float, poll: float = 0.1) -> LocalServer | None:
    """Wait for another process (which holds the store) to announce its server."""
    deadline = time.monotonic() + timeout
    while (server := running_server()) is None and time.monotonic() < deadline:  # noqa: ASYNC110 - a file written by another process
        await asyncio.sleep(poll)
    return server


def announce(server: LocalServer) -> None:
    path = _state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(server)))
    temporary.replace(path)


def withdraw(pid: int) -> None:
    """Remove the state file if it is ``pid``'s."""
    current = running_server()
    if current is None or current.pid == pid:
        with contextlib.suppress(OSError):
            _state_file().unlink()


@contextlib.contextmanager
def attached() -> Iterator[Path]:
    """Register this process as using the running server (the owner waits for it). The marker is
    locked for as long as this process lives, so a marker nobody holds is stale, whatever its pid."""
    directory = _clients_dir()
    directory.mkdir(parents=True, exist_ok=True)
    marker = directory / str(os.getpid())
    with marker.open("a") as handle:
        _lock(handle, blocking=True)
        try:
            yield marker
        finally:
            with contextlib.suppress(OSError):
                marker.unlink()


def _lock(handle: Any, *, blocking: bool) -> bool:
    """Lock an open file; False if ``blocking`` is off and another process holds it."""
    if sys.platform == "win32":  # pragma: no cover
        return True
    import fcntl

    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
    except OSError:
        return False
    return True


def other_clients() -> list[int]:
    """Live processes attached to the server (stale markers of dead ones are removed)."""
    alive = []
    for marker in _clients_dir().glob("*") if _clients_dir().exists() else []:
        try:
            pid = int(marker.name)
        except ValueError:
            continue
        if pid == os.getpid():
            continue
        try:
            with marker.open("a") as handle:
                held = not _lock(handle, blocking=False)
        except OSError:
            continue
        if held:
            alive.append(pid)
        else:  # nobody holds it: its process is gone (even if the pid now belongs to another)
            with contextlib.suppress(OSError):
                marker.unlink()
    return alive


@contextlib.asynccontextmanager
async def serving(
    server: EmbeddedServer, mode: str, *, on_wait: Callable[[int], None] | None = None
) -> AsyncIterator[LocalServer]:
    """Own an embedded server as this user's: announce it; on the way out, withdraw the announcement
    first (no new command attaches), wait for the commands still attached, then stop the server."""
    entry = LocalServer(url=server.url, pid=os.getpid(), mode=mode, store=str(server.store_dir))
    announce(entry)
    try:
        yield entry
    finally:
        withdraw(entry.pid)
        if (others := other_clients()) and on_wait is not None:
            on_wait(len(others))
        await wait_for_clients()
        await server.stop()


async def wait_for_clients(timeout: float = 3600.0, poll: float = 0.5) -> list[int]:
    """Wait until no other process uses the server (or ``timeout``); return those still there."""
    deadline = time.monotonic() + timeout
    while (others := other_clients()) and time.monotonic() < deadline:  # noqa: ASYNC110 - other processes can only be polled
        await asyncio.sleep(poll)
    return others
