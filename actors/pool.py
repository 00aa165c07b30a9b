"""The pool: one process that serves every agent of every session, whatever its name.

:class:`PoolService` is a service (no consumer of its own). For each agent it learns of, it makes sure
the agent's consumer exists (``agent_<name>``; one that exists is left as its owner made it) and runs
a :class:`~actors.subagent.SubagentActor` for it on an :class:`~bus.runtime.ActorRuntime` of its own.
The pullers of one durable consumer share its messages, so the pool, the agent's dedicated workers
and other pools serve it together, each message once. It learns agents from the gateway's request on
``<root>.api.pool`` (answered once they are served), from every session's ``out.accepted``, and at
start from the records of the sessions pending or running. It serves at most ``limit`` agents and
never stops serving one before it stops. The narrative: docs/architecture.md, "The pool".
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog

from actors.sessions.directory import SessionDirectory
from actors.subagent import SubagentActor
from bus.actor import BaseActor
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.errors import BusError, MessageRejected
from bus.provision import ensure_consumer
from bus.runtime import ActorRuntime, RuntimeSettings
from bus.state import Listener, Responder
from bus.subjects import Subjects, is_token
from schemas.pool import PoolServe, PoolServed
from schemas.session import SessionAccepted

log = structlog.get_logger("staffwork.pool")

#: The default bound on the agents one pool serves (``AgentSettings.pool_agents``).
POOL_AGENTS = 200
#: The session states whose agents a pool serves when it starts.
OPEN: frozenset[str] = frozenset({"pending", "running"})


class _Agent(msgspec.Struct):
    name: str


class _Team(msgspec.Struct):
    agents: list[_Agent] = msgspec.field(default_factory=list)


class _OpenRecord(msgspec.Struct):
    """What the pool reads of a session record: its status and its agents' names."""

    team: _Team
    status: str = "running"


_records = msgspec.json.Decoder(_OpenRecord)


@dataclass
class _Worker:
    runtime: ActorRuntime[Any]
    task: asyncio.Task[None]


class PoolService(BaseActor[None]):
    """Serves every agent it learns of, from ``on_start`` to ``on_stop``; see the module docstring.

    ``worker(name)`` makes the actor of one agent; each runs on a runtime with ``settings``.
    """

    role = "pool"

    def __init__(
        self,
        worker: Callable[[str], SubagentActor],
        *,
        directory: SessionDirectory,
        settings: RuntimeSettings,
        limit: int = POOL_AGENTS,
        ready_timeout: float = 10.0,
    ) -> None:
        self.worker = worker
        self.directory = directory
        self.settings = settings
        self.limit = limit
        self.ready_timeout = ready_timeout  # how long a request waits for a worker to pull
        self._requests: Decoder[PoolServe] = Decoder(PoolServe)
        self._workers: dict[str, _Worker] = {}
        self._stop = asyncio.Event()  # the inner runtimes'
        self._stopping = False
        self._responder: Responder | None = None
        self._accepted: Listener[SessionAccepted] | None = None

    def consumer(self, subjects: Subjects) -> None:
        return None

    @property
    def serving(self) -> list[str]:
        """The agents this pool serves now."""
        return sorted(self._workers)

    async def on_start(self, bus: Bus) -> None:
        self.bus = bus
        try:
            # Listen before reading the records: a session accepted in between is seen either way.
            self._accepted = await bus.listen(
                bus.subjects.all_out("accepted"), SessionAccepted, self._on_accepted
            )
            self._responder = await bus.respond(bus.subjects.api_pool, self._answer, queue="pool")
            await self._serve_open_sessions()
        except BaseException:
            await self.on_stop()
            raise

    async def on_stop(self) -> None:
        self._stopping = True
        for intake in (self._responder, self._accepted):
            if intake is not None:
                await intake.close()
        self._responder = self._accepted = None
        self._stop.set()
        # Each runtime lets its in-flight threads finish within its grace, then stops.
        await asyncio.gather(*(worker.task for worker in list(self._workers.values())))

    async def serve(self, agents: Iterable[str], session_id: str = "") -> tuple[list[str], list[str]]:
        """Serve ``agents``; once each pulls (or ``ready_timeout`` passed): (served, refused)."""
        started, refused = self._start(agents, session_id)
        ready = await asyncio.gather(*(self._ready(worker) for _, worker in started))
        served = [name for (name, _), ok in zip(started, ready, strict=True) if ok]
        refused += [name for (name, _), ok in zip(started, ready, strict=True) if not ok]
        return served, refused

    def _start(self, agents: Iterable[str], session_id: str) -> tuple[list[tuple[str, _Worker]], list[str]]:
        """Start a worker for each of ``agents`` not served yet, up to the bound: (workers, refused)."""
        started: list[tuple[str, _Worker]] = []
        refused: list[str] = []
        for name in dict.fromkeys(agents):
            worker = self._workers.get(name)
            if worker is None:
                if self._stopping or not is_token(name):
                    refused.append(name)
                    continue
                if len(self._workers) >= self.limit:
                    log.warning("pool_full", agent=name, session_id=session_id, limit=self.limit)
                    refused.append(name)
                    continue
                runtime: ActorRuntime[Any] = ActorRuntime(self.bus, self.worker(name), self.settings)
                worker = _Worker(runtime, asyncio.ensure_future(self._run(name, runtime)))
                self._workers[name] = worker
                log.info("pool_serves", agent=name, session_id=session_id, agents=len(self._workers))
            started.append((name, worker))
        return started, refused

    async def _run(self, name: str, runtime: ActorRuntime[Any]) -> None:
        """One agent's worker until the pool stops; if it fails, the agent is served again when the
        pool next learns of it."""
        try:
            await ensure_consumer(self.bus, runtime.spec, update=False)  # a dedicated worker's settings win
            await runtime.run(self._stop)
        except Exception:
            log.exception("pool_worker_failed", agent=name)
        finally:
            worker = self._workers.get(name)
            if worker is not None and worker.runtime is runtime:
                del self._workers[name]

    async def _ready(self, worker: _Worker) -> bool:
        """Whether ``worker`` pulls from its consumer, within ``ready_timeout``."""
        pulling = asyncio.ensure_future(worker.runtime.ready.wait())
        try:
            await asyncio.wait(
                {pulling, worker.task}, timeout=self.ready_timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            pulling.cancel()
        return worker.runtime.ready.is_set() and not worker.task.done()

    async def _answer(self, data: bytes) -> bytes:
        try:
            request = self._requests.decode(data, subject=self.bus.subjects.api_pool)
        except MessageRejected as exc:
            return encode(PoolServed(session_id="", error=f"not a valid pool.serve.v1: {exc.reason}"))
        served, refused = await self.serve(request.agents, request.session_id)
        return encode(PoolServed(session_id=request.session_id, agents=served, refused=refused))

    async def _on_accepted(self, accepted: SessionAccepted) -> None:
        """A session that may have bypassed the gateway: serve its team's agents (not waiting)."""
        team = await self.directory.team(accepted.session_id)
        if team is None:
            log.warning("pool_session_unrecorded", session_id=accepted.session_id)
            return
        self._start((agent.name for agent in team.agents), accepted.session_id)

    async def _serve_open_sessions(self) -> None:
        """Serve the agents of every session pending or running (one read of the session records)."""
        try:
            kv = await self.bus.kv(self.bus.subjects.sessions_bucket)
            values = await kv.values()
        except BusError as exc:  # requests and accepted sessions still reach the pool
            log.warning("pool_sessions_unread", error=str(exc))
            return
        started: list[tuple[str, _Worker]] = []
        refused: list[str] = []
        for session_id, value in values:
            try:
                record = _records.decode(value)
            except msgspec.DecodeError:
                log.warning("pool_session_undecodable", session_id=session_id)
                continue
            if record.status in OPEN:
                more, over = self._start((agent.name for agent in record.team.agents), session_id)
                started += more
                refused += over
        ready = await asyncio.gather(*(self._ready(worker) for worker in dict(started).values()))
        log.info("pool_started", agents=sum(ready), refused=len(set(refused)))


__all__ = ["OPEN", "POOL_AGENTS", "PoolService"]
