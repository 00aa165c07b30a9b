"""The workload of bench/fanout.py on AutoGen Core's distributed gRPC runtime, for comparison in one run.

A ``GrpcWorkerAgentRuntimeHost`` and the lead agent's ``GrpcWorkerAgentRuntime`` run in the calling
process, the subagents a00..a19 in ``processes`` worker processes. (The host in a process of its own,
as nats-server is for staffwork, measured slower here: about 1.1 ms instead of 0.7 ms p50 one at a
time, on 2 cores.) AutoGen's host routes an agent type to exactly one worker (a second registration
of the type is refused), so the agents are dealt round-robin to the workers instead of every worker
serving every agent. Messages live in memory only: no durability, no trace.

1. Efficiency: a ``Session`` to the lead, which sleeps L (its first turn), sends N ``Work`` messages at
   once (``send_message`` under ``asyncio.gather``) to N subagents that each sleep L and reply, then
   sleeps L (its last turn) and replies, so the ideal is 3L as staffwork's. Timed from this process
   sending the ``Session`` (through the host, to the lead) to its reply.
2. Overhead per delegation, L = 0: inside the lead's handler, the time from ``send_message`` to the
   subagent's reply, one at a time and twenty at once.

``measure()`` returns the raw figures; bench/fanout.py runs it after staffwork's (``--autogen``, on
when ``autogen-ext[grpc]`` is installed: ``pip install -e '.[bench]'``) and prints both. Run as a
script, this file is a worker process (``--serve-worker ADDRESS AGENTS``).
"""

# AutoGen is an optional extra ('.[bench]'): where it is not installed (CI installs '.[dev]'), mypy
# checks this file with AutoGen's names as Any (the import ignores and these two options).
# mypy: allow-subclassing-any, allow-untyped-decorators

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory would come first on sys.path (bench/trace.py would shadow
# the standard library's trace); drop it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import AbstractAsyncContextManager, asynccontextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from importlib.metadata import version  # noqa: E402

from autogen_core import (  # type: ignore[import-not-found, unused-ignore]  # noqa: E402
    AgentId,
    MessageContext,
    RoutedAgent,
    message_handler,
    try_get_known_serializers_for_type,
)
from autogen_ext.runtimes.grpc import (  # type: ignore[import-not-found, unused-ignore]  # noqa: E402
    GrpcWorkerAgentRuntime,
    GrpcWorkerAgentRuntimeHost,
)

from bench._proc import ready_processes  # noqa: E402

AGENTS = [f"a{i:02d}" for i in range(20)]
LEAD = AgentId("lead", "default")


@dataclass
class Session:
    n: int
    latency: float


@dataclass
class SessionDone:
    replies: int


@dataclass
class Work:
    latency: float


@dataclass
class Done:
    agent: str


@dataclass
class Measure:
    """Send ``batches`` times ``n`` Work messages at once with L = 0; reply with each one's round trip."""

    n: int
    batches: int


@dataclass
class Timings:
    seconds: list[float]


MESSAGES = (Session, SessionDone, Work, Done, Measure, Timings)


@dataclass(frozen=True, kw_only=True)
class Figures:
    version: str
    efficiency: dict[int, list[float]] = field(default_factory=dict)  # N -> ideal / measured per round
    alone: list[float] = field(default_factory=list)  # seconds per delegation, one at a time
    concurrent: list[float] = field(default_factory=list)  # seconds per delegation, twenty at once


class Lead(RoutedAgent):
    def __init__(self) -> None:
        super().__init__("lead")

    @message_handler
    async def on_session(self, message: Session, ctx: MessageContext) -> SessionDone:
        await asyncio.sleep(message.latency)
        replies = await asyncio.gather(
            *(self.send_message(Work(message.latency), AgentId(a, "default")) for a in AGENTS[: message.n])
        )
        await asyncio.sleep(message.latency)
        return SessionDone(len(replies))

    @message_handler
    async def on_measure(self, message: Measure, ctx: MessageContext) -> Timings:
        async def delegate(agent: str) -> float:
            started = time.perf_counter()
            await self.send_message(Work(0.0), AgentId(agent, "default"))
            return time.perf_counter() - started

        seconds: list[float] = []
        for _ in range(message.batches):
            seconds.extend(await asyncio.gather(*(delegate(a) for a in AGENTS[: message.n])))
        return Timings(seconds)


class Subagent(RoutedAgent):
    def __init__(self) -> None:
        super().__init__("subagent")

    @message_handler
    async def on_work(self, message: Work, ctx: MessageContext) -> Done:
        if message.latency:
            await asyncio.sleep(message.latency)
        return Done(self.id.type)


def _with_serializers(runtime: GrpcWorkerAgentRuntime) -> GrpcWorkerAgentRuntime:
    for message in MESSAGES:
        runtime.add_message_serializer(try_get_known_serializers_for_type(message))
    return runtime


async def measure(latency: float, rounds: int, overhead_sessions: int, processes: int) -> Figures:
    """The figures of bench/fanout.py's workload on AutoGen's gRPC runtime, as raw samples."""
    figures = Figures(version=version("autogen-core"))
    async with host() as address, workers(address, processes), lead(address) as runtime:

        async def ask(message: Session | Measure) -> object:
            async with asyncio.timeout(120):
                return await runtime.send_message(message, LEAD)

        for n in (1, 5, 10, 20):
            await ask(Session(n, latency))  # warm-up (agent instances, channels)
            figures.efficiency[n] = []
            for _ in range(rounds):
                started = time.perf_counter()
                done = await ask(Session(n, latency))
                elapsed = time.perf_counter() - started
                assert isinstance(done, SessionDone), done
                assert done.replies == n, done
                figures.efficiency[n].append(3 * latency / elapsed)
        for n, batches, samples in (
            (1, overhead_sessions * 20, figures.alone),
            (20, overhead_sessions, figures.concurrent),
        ):
            timings = await ask(Measure(n, batches))
            assert isinstance(timings, Timings), timings
            samples.extend(timings.seconds)
    return figures


@asynccontextmanager
async def lead(address: str) -> AsyncIterator[GrpcWorkerAgentRuntime]:
    runtime = _with_serializers(GrpcWorkerAgentRuntime(host_address=address))
    async with asyncio.timeout(30):
        await runtime.start()
        await Lead.register(runtime, LEAD.type, Lead)
    try:
        yield runtime
    finally:
        await runtime.stop()


@asynccontextmanager
async def host() -> AsyncIterator[str]:
    """The host, in this process on a free port; yields its address."""
    with socket.socket() as probe:  # grpc's own choice of port (":0") is not exposed by the host
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    runtime_host = GrpcWorkerAgentRuntimeHost(address=f"127.0.0.1:{port}")
    runtime_host.start()
    try:
        async with asyncio.timeout(30):
            while True:  # start() serves in a task of its own: wait until the port takes connections
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.01)
                    continue
                writer.close()
                await writer.wait_closed()
                break
        yield f"127.0.0.1:{port}"
    finally:
        await runtime_host.stop(grace=1)


def workers(address: str, processes: int) -> AbstractAsyncContextManager[None]:
    """``processes`` worker processes, the agents dealt round-robin (a type lives in one worker)."""
    commands = [
        [sys.executable, __file__, "--serve-worker", address, ",".join(AGENTS[i::processes])]
        for i in range(processes)
    ]
    return ready_processes(commands, "an AutoGen worker process")


async def serve_worker(address: str, agents: list[str]) -> None:
    runtime = _with_serializers(GrpcWorkerAgentRuntime(host_address=address))
    async with asyncio.timeout(30):
        await runtime.start()
        for agent in agents:
            await Subagent.register(runtime, agent, Subagent)
    print("READY", flush=True)
    await _stopped()
    await runtime.stop()


async def _stopped() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--serve-worker", nargs=2, required=True, metavar=("ADDRESS", "AGENTS"), help="a worker process"
    )
    args = parser.parse_args()
    asyncio.run(serve_worker(args.serve_worker[0], args.serve_worker[1].split(",")))
