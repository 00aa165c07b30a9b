"""A JetStream cluster on this machine: ``size`` nats-server processes routed to each other.

Each node is an :class:`~bus.server.EmbeddedServer` (the binary, the readiness read from its log, the
store lock, stop) with its own store directory (``<store_root>/n1`` ...), client port and cluster
port, and the cluster flags (``--server_name``, ``--cluster_name``, ``--cluster``, ``--routes`` to
every node). :class:`LocalCluster` is ready when every node said "Server is ready", has heard of a
JetStream metadata leader (read from its log), and a probe stream at the cluster's replica count can
be placed (the leader counts a peer only once it has heard from it). A node can be killed (SIGKILL)
and restarted on the same store and ports; :meth:`LocalCluster.watch` says when one exits. Clients
given any node's URL learn the others from the cluster and reconnect to one of them. Provision with
:meth:`LocalCluster.stream_settings` (R3 on three nodes or more)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import nats
import nats.errors
import nats.js.errors
import structlog
from nats.js.api import StorageType, StreamConfig

from bus.errors import ConfigError, ServerError, ServerFailed
from bus.provision import StreamSettings
from bus.server import EmbeddedServer

log = structlog.get_logger("staffwork.cluster")

_NEW_LEADER = re.compile(r"JetStream cluster new metadata leader: ([^/\s]+)")
_SELF_LEADER = "Self is new JetStream cluster metadata leader"
_NO_LEADER = "JetStream cluster no metadata leader"
_KILL = getattr(signal, "SIGKILL", signal.SIGTERM)
_ROUTE_ERROR_EVERY = 60  # log every 60th failed attempt to reach a lost node (about once a minute)
_PORT_CLASH_TRIES = 3
MAX_REPLICAS = 3  # JetStream allows 5; three survive one lost node, which is what a laptop needs


def cluster_replicas(size: int) -> int:
    """The replica count for streams and buckets on a cluster of ``size`` nodes."""
    return max(1, min(size, MAX_REPLICAS))


def _free_ports(count: int, host: str) -> list[int]:
    """``count`` distinct ports nothing listens on (all bound at once, then released)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def _port_clash(exc: ServerFailed) -> bool:
    """Whether a node failed because a port chosen for it was taken before it could bind it."""
    return any("address already in use" in line for line in [exc.reason, *exc.lines])


@dataclass
class ClusterNode:
    """One node: its name, store, ports (the client port is known once it first started), and what
    it last said about the metadata leader."""

    name: str
    store_dir: Path
    cluster_port: int
    port: int = -1
    server: EmbeddedServer | None = None
    meta_leader: str | None = None
    knows_leader: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def running(self) -> bool:
        return self.server is not None and self.server.returncode is None

    @property
    def url(self) -> str:
        return self.server.url if self.server is not None else ""


class LocalCluster:
    """``size`` nats-server processes with JetStream, clustered, as an async context manager::

        async with LocalCluster(store_root) as cluster:
            bus = await Bus.connect(cluster.urls[0])
            await provision(bus, settings=cluster.stream_settings())

    ``urls`` lists every node's client URL (``url`` joins them with commas). ``kill(i)`` SIGKILLs node
    ``i`` (0-based), ``restart(i)`` starts it again on the same store and ports, ``stop()`` stops all.
    """

    def __init__(
        self,
        store_root: Path | str,
        size: int = 3,
        *,
        host: str = "127.0.0.1",
        name: str = "staffwork",
        binary: Path | None = None,
        ready_timeout: float = 30.0,
        on_log: Callable[[str, str], None] | None = None,
    ) -> None:
        if size < 1:
            raise ConfigError(f"a cluster needs at least one node, not {size}")
        self.store_root = Path(store_root)
        self.size = size
        self.host = host
        self.name = name
        self.binary = binary
        self.ready_timeout = ready_timeout
        self.on_log = on_log
        self.nodes: list[ClusterNode] = []

    # --- what clients need ---------------------------------------------------------------------------

    @property
    def urls(self) -> list[str]:
        """Every node's client URL (known once the cluster started; a killed node keeps its URL)."""
        return [f"nats://{self.host}:{node.port}" for node in self.nodes if node.port > 0]

    @property
    def url(self) -> str:
        """The client URLs, comma-separated."""
        return ",".join(self.urls)

    @property
    def replicas(self) -> int:
        return cluster_replicas(self.size)

    def stream_settings(self, base: StreamSettings | None = None) -> StreamSettings:
        """``base`` (default settings if None) with this cluster's replica count."""
        return dataclasses.replace(base or StreamSettings(), replicas=self.replicas)

    @property
    def meta_leader(self) -> str | None:
        """The metadata leader's node name, as the running nodes last reported it."""
        views = {node.meta_leader for node in self.nodes if node.running}
        return views.pop() if len(views) == 1 else None

    def index(self, node_name: str) -> int:
        """The index of the node called ``node_name`` (as stream info names peers)."""
        for i, node in enumerate(self.nodes):
            if node.name == node_name:
                return i
        raise ConfigError(f"no node {node_name!r} in cluster {self.name!r} (known: {self._names()})")

    def _names(self) -> str:
        return ", ".join(node.name for node in self.nodes)

    # --- lifecycle -----------------------------------------------------------------------------------

    async def start(self) -> list[str]:
        """Start every node; return the client URLs once every node knows the metadata leader.

        The route ports are chosen before any node starts (each node's ``--routes`` names them
        all), so another process can take one in between; a node then fails with "address already
        in use", and the whole cluster is started again on new ports (at most
        ``_PORT_CLASH_TRIES`` times)."""
        self.store_root.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        for attempt in range(1, _PORT_CLASH_TRIES + 1):
            ports = _free_ports(self.size, self.host)
            self.nodes = [
                ClusterNode(name=f"n{i + 1}", store_dir=self.store_root / f"n{i + 1}", cluster_port=port)
                for i, port in enumerate(ports)
            ]
            try:
                launched = await asyncio.gather(
                    *(self._launch(node) for node in self.nodes), return_exceptions=True
                )
                for failure in launched:  # every launch has ended, so stop() leaves no node behind
                    if isinstance(failure, BaseException):
                        raise failure
                await self.wait_ready(every_node=True)
                break
            except ServerFailed as exc:
                await self.stop()
                if attempt == _PORT_CLASH_TRIES or not _port_clash(exc):
                    raise
                log.warning("nats_cluster_port_taken", attempt=attempt, error=str(exc))
            except BaseException:
                await self.stop()
                raise
        log.info(
            "nats_cluster_ready",
            urls=self.urls,
            meta_leader=self.meta_leader,
            took_s=round(time.monotonic() - started, 2),
        )
        return self.urls

    def _args(self, node: ClusterNode) -> tuple[str, ...]:
        routes = ",".join(f"nats://{self.host}:{other.cluster_port}" for other in self.nodes)
        # Options with no command-line flag. A route to a node that is down is dialled every second;
        # logging each failure would grow the server's error lines (kept in memory) without end.
        config = node.store_dir / "cluster.conf"
        config.write_text(f"reconnect_error_reports: {_ROUTE_ERROR_EVERY}\n")
        return (
            "-c",
            str(config),
            "--server_name",
            node.name,
            "--cluster_name",
            self.name,
            "--cluster",
            f"nats://{self.host}:{node.cluster_port}",
            "--routes",
            routes,
        )

    async def _launch(self, node: ClusterNode) -> None:
        node.store_dir.mkdir(parents=True, exist_ok=True)
        node.meta_leader = None
        node.knows_leader.clear()
        server = EmbeddedServer(
            node.store_dir,
            host=self.host,
            port=node.port,
            binary=self.binary,
            ready_timeout=self.ready_timeout,
            extra_args=self._args(node),
            on_log=lambda line: self._on_log(node, line),
        )
        node.server = server
        await server.start()
        node.port = server.port

    def _on_log(self, node: ClusterNode, line: str) -> None:
        if _SELF_LEADER in line:
            self._heard(node, node.name)
        elif match := _NEW_LEADER.search(line):
            self._heard(node, match.group(1))
        elif _NO_LEADER in line:
            node.meta_leader = None
            node.knows_leader.clear()
        if self.on_log is not None:
            self.on_log(node.name, line)

    @staticmethod
    def _heard(node: ClusterNode, leader: str) -> None:
        node.meta_leader = leader
        node.knows_leader.set()

    async def wait_ready(self, timeout: float | None = None, *, every_node: bool = False) -> None:
        """Wait until every running node knows the metadata leader and JetStream can place a stream
        on as many of them as :attr:`replicas` asks (a probe stream, made and deleted: the leader
        counts a peer only once it has heard from it). :class:`ServerFailed` if a node exits first
        or it takes longer than ``timeout`` (default: ``ready_timeout``); with ``every_node``, also
        if one has already exited."""
        timeout = self.ready_timeout if timeout is None else timeout
        # At start every node must join: one that already exited (its route port taken: nats-server
        # binds it after it says it is ready) fails the wait with its log lines.
        waiting = [node for node in self.nodes if every_node or node.running]
        step = "heard of a JetStream metadata leader"
        try:
            async with asyncio.timeout(timeout):
                await asyncio.gather(*(self._node_ready(node) for node in waiting))
                step = "could place a stream"
                await self._placement_ready(min(self.replicas, len(waiting)))
        except TimeoutError:
            lost = [node.name for node in waiting if not node.knows_leader.is_set()] or [
                node.name for node in waiting
            ]
            raise ServerFailed(
                f"cluster {self.name!r}: {', '.join(lost)} never {step} within {timeout:g}s"
            ) from None

    async def _placement_ready(self, replicas: int) -> None:
        async def quiet(exc: Exception) -> None:
            log.debug("nats_cluster_probe_error", error=repr(exc))

        nc = await nats.connect(
            [node.url for node in self.nodes if node.running],
            name="staffwork-cluster-probe",
            error_cb=quiet,
            allow_reconnect=False,
            connect_timeout=2,
        )
        try:
            js = nc.jetstream(timeout=2.0)
            token = os.urandom(6).hex()
            name = f"staffwork_probe_{token}"
            probe = StreamConfig(
                name=name,
                subjects=[f"_staffwork.probe.{token}"],
                storage=StorageType.MEMORY,
                num_replicas=replicas,
            )
            while True:
                try:
                    await js.add_stream(probe)
                    break
                except (
                    nats.js.errors.APIError,
                    nats.errors.TimeoutError,
                    nats.errors.NoRespondersError,
                ) as exc:
                    log.debug("nats_cluster_not_placing_yet", error=repr(exc))
                    await asyncio.sleep(0.05)  # the leader has not heard from every peer: nothing to await
            await js.delete_stream(name)
        finally:
            await nc.close()

    @staticmethod
    async def _node_ready(node: ClusterNode) -> None:
        assert node.server is not None
        exited = asyncio.ensure_future(node.server.wait())
        ready = asyncio.ensure_future(node.knows_leader.wait())
        try:
            await asyncio.wait({exited, ready}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (exited, ready):
                task.cancel()
            await asyncio.wait({exited, ready})
        if exited.done() and not exited.cancelled():
            exited.result()  # ServerFailed with its [FTL]/[ERR] lines, if it failed
            raise ServerFailed(f"node {node.name} exited before it joined the cluster", returncode=0)

    async def kill(self, i: int) -> None:
        """SIGKILL node ``i``: no lame-duck mode, no leadership handed over (a crash)."""
        node = self.nodes[i]
        server = node.server
        if server is None or server.pid is None or server.returncode is not None:
            raise ServerError(f"node {node.name} of cluster {self.name!r} is not running")
        with contextlib.suppress(ProcessLookupError):
            os.kill(server.pid, _KILL)
        await server.stop()  # reaps it, stops reading its log, releases the store lock
        node.meta_leader = None
        node.knows_leader.clear()
        log.info("nats_node_killed", node=node.name, url=node.url)

    async def restart(self, i: int) -> str:
        """Start node ``i`` again on its store and ports; return its URL once it knows the leader."""
        node = self.nodes[i]
        if node.running:
            raise ServerError(f"node {node.name} of cluster {self.name!r} is running; kill or stop it first")
        await self._launch(node)
        try:
            await self.wait_ready()
        except BaseException:
            await self._stop_node(node)
            raise
        log.info("nats_node_restarted", node=node.name, url=node.url)
        return node.url

    def down(self) -> list[int]:
        """The nodes that are not running (killed, stopped, or exited on their own)."""
        return [i for i, node in enumerate(self.nodes) if not node.running]

    async def watch(self) -> int:
        """Wait until a running node exits (crashed, or killed); its index, for a supervisor to
        :meth:`restart` it."""
        exits = {
            asyncio.ensure_future(node.server.wait()): i
            for i, node in enumerate(self.nodes)
            if node.running and node.server is not None
        }
        if not exits:
            raise ServerError(f"no node of cluster {self.name!r} is running")
        try:
            done, _ = await asyncio.wait(exits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in exits:
                task.cancel()
            await asyncio.wait(exits)
        exited = next(iter(done))
        failure = exited.exception()  # ServerFailed for a non-zero exit: a crash is what we report
        code = failure.returncode if isinstance(failure, ServerFailed) else exited.result()
        index = exits[exited]
        log.warning("nats_node_exited", node=self.nodes[index].name, returncode=code)
        return index

    async def stop(self) -> None:
        """Stop every node (terminate, wait, kill): all at once, so none waits for lost peers."""
        await asyncio.gather(*(self._stop_node(node) for node in self.nodes))

    @staticmethod
    async def _stop_node(node: ClusterNode) -> None:
        if node.server is not None:
            await node.server.stop()

    async def __aenter__(self) -> LocalCluster:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
