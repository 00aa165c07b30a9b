"""The supervisor of ``staffwork up`` (the Erlang/OTP idea: let it crash, restart it): one task per
actor process and one for the embedded nats-server (or the nodes of ``up --cluster``); a process
that exits is restarted with exponential backoff (reset once it stayed up), a role that keeps
crashing is reported loudly and still retried; SIGINT/SIGTERM stops everything, and nothing is
restarted then."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from actors.cli.common import err, out
from bus.cluster import LocalCluster
from bus.errors import ServerError, ServerFailed
from bus.lifecycle import install_stop_signals
from bus.server import EmbeddedServer, die_with_parent

# --- the supervisor --------------------------------------------------------------------------------

#: Set by ``up`` in the environment of a process it restarted: how often it did (``staffwork ps``).
RESTARTS_ENV = "STAFFWORK_RESTARTS"


@dataclass(frozen=True)
class RestartPolicy:
    """When ``up`` restarts what died: after ``first`` seconds, doubling up to ``longest``, and after
    ``first`` again once it had stayed up ``steady`` seconds. ``limit`` exits within ``window``
    seconds is a crash loop: reported loudly each time and retried every ``longest`` seconds."""

    first: float = 0.5
    longest: float = 30.0
    steady: float = 60.0
    limit: int = 5
    window: float = 60.0


class Backoff:
    """The restart delays of one process under a :class:`RestartPolicy`."""

    def __init__(self, policy: RestartPolicy) -> None:
        self.policy = policy
        self._next = policy.first
        self._exits: deque[float] = deque()

    def after_exit(self, ran: float, now: float) -> tuple[float, int]:
        """The delay before restarting a process that ran ``ran`` seconds and exited at ``now``
        (monotonic seconds), and how often it exited within the policy's window."""
        policy = self.policy
        if ran >= policy.steady:
            self._next = policy.first
        self._exits.append(now)
        while self._exits[0] <= now - policy.window:
            self._exits.popleft()
        if len(self._exits) >= policy.limit:
            return policy.longest, len(self._exits)
        delay = self._next
        self._next = min(self._next * 2, policy.longest)
        return delay, len(self._exits)


class Supervisor:
    """``up``'s processes: one ``staffwork actor`` per role (their output prefixed with its name),
    and the embedded nats-server when ``up`` started it (same store and port, so the actors, which
    reconnect forever, come back by themselves). What dies is restarted with backoff; SIGINT/SIGTERM
    stops everything gracefully, and nothing is restarted then."""

    def __init__(
        self,
        url: str,
        root: str,
        roles: list[tuple[str, list[str]]],
        server: EmbeddedServer | None = None,
        policy: RestartPolicy | None = None,
        cluster: LocalCluster | None = None,
    ) -> None:
        self.url = url
        self.root = root
        self.roles = roles
        self.server = server
        self.cluster = cluster
        self.policy = policy or RestartPolicy()
        self.stop = asyncio.Event()

    async def run(self) -> None:
        """Until SIGINT/SIGTERM; then every process has stopped (SIGTERM, then SIGKILL after 45 s)."""
        install_stop_signals(self.stop)
        async with asyncio.TaskGroup() as tg:
            if self.server is not None:
                tg.create_task(self._keep_server(self.server), name="keep-nats-server")
            if self.cluster is not None:
                tg.create_task(self._keep_cluster(self.cluster), name="keep-nats-cluster")
            for name, args in self.roles:
                tg.create_task(self._keep(name, args), name=f"keep-{name}")

    async def _keep(self, name: str, args: list[str]) -> None:
        """Run one actor process, again and again, until stopped."""
        backoff = Backoff(self.policy)
        restarts = 0
        loop = asyncio.get_running_loop()
        while True:
            proc = await self._spawn(args, restarts)
            started = loop.time()
            assert proc.stdout is not None
            relay = asyncio.ensure_future(_relay(name, proc.stdout))
            try:
                await _first(proc.wait(), self.stop.wait())
                if self.stop.is_set():
                    await _terminate(proc)
                    return
            finally:
                if proc.returncode is None:  # cancelled: never leave it behind
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
                await _finish(relay)
            code, ran = proc.returncode, loop.time() - started
            restarts += 1
            what = f"exited with code {code} after {ran:.1f}s"
            if not await self._restarting(name, what, f"exit code {code}", ran, backoff, restarts):
                return

    async def _keep_server(self, server: EmbeddedServer) -> None:
        """Restart the embedded nats-server when it dies, until stopped."""
        backoff = Backoff(self.policy)
        restarts = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await _first(_server_exit(server), self.stop.wait())
            if self.stop.is_set():
                return  # ``local.serving`` stops it, once the actors are down
            ran = loop.time() - started
            what, cause = (
                f"exited with code {server.returncode} after {ran:.1f}s",
                f"exit code {server.returncode}",
            )
            while True:
                restarts += 1
                if not await self._restarting("nats-server", what, cause, ran, backoff, restarts):
                    return
                await server.stop()  # the process is gone: this releases the store lock
                try:
                    await server.start()
                    break
                except ServerError as exc:
                    what, cause, ran = f"could not restart: {exc}", "could not restart", 0.0
            started = loop.time()
            err.print(
                f"[supervisor] nats-server is back at {server.url} (pid {server.pid})",
                highlight=False,
                markup=False,
            )

    async def _keep_cluster(self, cluster: LocalCluster) -> None:
        """Restart a node of ``up``'s local cluster when it dies (same store and ports), until stopped;
        each node with its own backoff, as an actor process has. Every node found down is restarted,
        so two that die together both come back."""
        loop = asyncio.get_running_loop()
        backoffs: dict[int, Backoff] = {}
        restarts: dict[int, int] = {}
        started = dict.fromkeys(range(cluster.size), loop.time())
        while True:
            down = cluster.down()
            if not down:
                await _first(cluster.watch(), self.stop.wait())  # a node exits, or we stop
                if self.stop.is_set():
                    return  # the cluster's owner stops it, once the actors are down
                continue
            index = down[0]
            name = f"nats-server node {index + 1}"
            ran = loop.time() - started[index]
            what, cause = f"exited after {ran:.1f}s", "exited"
            while True:
                restarts[index] = restarts.get(index, 0) + 1
                backoff = backoffs.setdefault(index, Backoff(self.policy))
                if not await self._restarting(name, what, cause, ran, backoff, restarts[index]):
                    return
                try:
                    url = await cluster.restart(index)
                    break
                except ServerError as exc:
                    what, cause, ran = f"could not restart: {exc}", "could not restart", 0.0
            started[index] = loop.time()
            err.print(f"[supervisor] {name} is back at {url}", highlight=False, markup=False)

    async def _restarting(
        self, name: str, what: str, cause: str, ran: float, backoff: Backoff, restart: int
    ) -> bool:
        """Say what happened to ``name`` and when it restarts (loudly in a crash loop), then wait that
        long: False if stopped meanwhile."""
        delay, exits = backoff.after_exit(ran, asyncio.get_running_loop().time())
        err.print(
            f"[supervisor] {name} {what}; restarting in {delay:g}s (restart {restart})",
            highlight=False,
            markup=False,
        )
        if exits >= self.policy.limit:
            err.print(
                f"[supervisor] {name} crashed {exits} times in {self.policy.window:g} s ({cause}); "
                f"restarting in {delay:g} s",
                style="bold red",
                highlight=False,
                markup=False,
            )
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(delay):
                await self.stop.wait()
        return not self.stop.is_set()

    async def _spawn(self, args: list[str], restarts: int) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "actors.cli",
            "--log-console",
            "actor",
            *args,
            "--nats",
            self.url,
            "--root",
            self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", RESTARTS_ENV: str(restarts)},
            start_new_session=True,
            preexec_fn=die_with_parent if sys.platform.startswith("linux") else None,
        )


_GRACE = 45.0  # seconds an actor process gets to stop after SIGTERM before it is killed
_RELAY_TAIL = 2.0  # seconds to read what a dead process still had in its pipe


async def _relay(name: str, stream: asyncio.StreamReader) -> None:
    while line := await stream.readline():
        out.print(
            f"[cyan]\\[{name}][/] {line.decode(errors='replace').rstrip()}", highlight=False, markup=True
        )


async def _finish(relay: asyncio.Future[None]) -> None:
    """Let the relay print what is left (bounded: a child's child may hold the pipe open)."""
    _, pending = await asyncio.wait({relay}, timeout=_RELAY_TAIL)
    for task in pending:
        task.cancel()
        await asyncio.wait({task})


async def _terminate(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (a graceful stop), then SIGKILL after :data:`_GRACE` seconds."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        async with asyncio.timeout(_GRACE):
            await proc.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


async def _server_exit(server: EmbeddedServer) -> None:
    """Until the embedded server's process has exited (its code is then ``server.returncode``)."""
    with contextlib.suppress(ServerFailed):
        await server.wait()


async def _first(*waits: Awaitable[Any]) -> None:
    """Until the first of ``waits`` is done; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.wait(tasks)
