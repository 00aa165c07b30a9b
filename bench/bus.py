"""Benchmark: the actor runtime and the workspace against raw nats-py, side by side in one run.

1. Round-trip latency of one message through the actor runtime (durable publish with ack → pull →
   decode → handle → reply to an inbox → ack), against a raw nats-py core request/reply of the same
   payload on the same server (on a plain nats-py connection of the benchmark's own, which also
   receives the runtime's replies). Goal: runtime p50 <= 3x raw p50.
2. A 50 MiB file: our workspace put/get (pipelined chunk publishes, batched direct gets, digest check)
   against nats-py's stock ObjectStore put/get of the same bytes. Goal: our get >= 5x the stock get.

Run: ``python bench/bus.py [--requests 2000] [--rounds 3] [--mib 50]``. Both sides run in this process
on one event loop, against an embedded nats-server with file storage in a temporary directory.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory comes first on sys.path and "bus" would be this file, not
# the package. Drop it (the package is installed, or the repository root is the working directory).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import nats  # noqa: E402
from nats.aio.client import Client as NATS  # noqa: E402
from nats.aio.msg import Msg  # noqa: E402

from bus.codec import encode  # noqa: E402
from bus.connection import REPLY_TO, Bus  # noqa: E402
from bus.logs import configure_logging  # noqa: E402
from bus.provision import ConsumerSpec, provision  # noqa: E402
from bus.runtime import ActorRuntime, BaseActor, Context, RuntimeSettings  # noqa: E402
from bus.server import EmbeddedServer  # noqa: E402
from bus.subjects import Subjects  # noqa: E402
from bus.workspace import Workspace  # noqa: E402
from schemas.base import Message  # noqa: E402


class Ping(Message, frozen=True, kw_only=True, tag="bench.ping.v1"):
    n: int
    body: str = ""


class Pong(Message, frozen=True, kw_only=True, tag="bench.pong.v1"):
    n: int


class Echo(BaseActor[Ping]):
    role = "echo"
    inbox = Ping

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        return ConsumerSpec(durable="echo", filter_subjects=(subjects.tasks_for("echo"),))

    async def handle(self, msg: Ping, ctx: Context) -> Message | None:
        return Pong(session_id=msg.session_id, n=msg.n)


@dataclass
class Latency:
    p50_ms: float
    p99_ms: float

    @classmethod
    def of(cls, samples: list[float]) -> Latency:
        ordered = sorted(samples)
        return cls(statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000)


async def raw_request_reply(nc: NATS, requests: int, payload: bytes) -> Latency:
    async def respond(msg: Msg) -> None:
        await nc.publish(msg.reply, msg.data)

    sub = await nc.subscribe("bench_raw.echo", cb=respond)
    samples = []
    for i in range(requests + 200):
        started = time.perf_counter()
        await nc.request("bench_raw.echo", payload, timeout=5)
        if i >= 200:  # warm-up excluded
            samples.append(time.perf_counter() - started)
    await sub.unsubscribe()
    return Latency.of(samples)


async def runtime_round_trip(bus: Bus, nc: NATS, requests: int) -> Latency:
    stop = asyncio.Event()
    runtime = ActorRuntime(bus, Echo(), RuntimeSettings(concurrency=8))
    inbox = nc.new_inbox()
    replies = await nc.subscribe(inbox)
    await nc.flush()  # subscribed at the server before the first reply is sent
    subject = bus.subjects.task("ses_bench", "echo")
    samples = []
    async with asyncio.TaskGroup() as tg:
        tg.create_task(runtime.run(stop))
        await runtime.ready.wait()
        for i in range(requests + 200):
            started = time.perf_counter()
            await bus.publish(subject, Ping(session_id="ses_bench", n=i), headers={REPLY_TO: inbox})
            await replies.next_msg(timeout=5)
            if i >= 200:
                samples.append(time.perf_counter() - started)
        stop.set()
    await replies.unsubscribe()
    return Latency.of(samples)


async def workspace_throughput(bus: Bus, data: bytes) -> tuple[float, float]:
    ws = Workspace(bus)
    started = time.perf_counter()
    await ws.put("ses_bench", "blob.bin", data)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    back = await ws.get("ses_bench", "blob.bin")
    get_s = time.perf_counter() - started
    assert back == data
    await ws.delete("ses_bench", "blob.bin")
    mb = len(data) / 1e6
    return mb / put_s, mb / get_s


async def stock_throughput(nc: NATS, data: bytes) -> tuple[float, float]:
    store = await nc.jetstream().create_object_store("bench_stock")
    started = time.perf_counter()
    await store.put("blob.bin", data)
    put_s = time.perf_counter() - started
    started = time.perf_counter()
    back = await store.get("blob.bin")
    get_s = time.perf_counter() - started
    assert back.data == data
    await store.delete("blob.bin")
    mb = len(data) / 1e6
    return mb / put_s, mb / get_s


async def main(requests: int, rounds: int, mib: int) -> None:
    with tempfile.TemporaryDirectory(prefix="staffwork-bench-") as tmp:
        async with EmbeddedServer(tmp) as server:
            bus = await Bus.connect(server.url, root="bench")
            nc = await nats.connect(server.url, name="bench-raw")
            try:
                await provision(bus)
                payload = encode(Ping(session_id="ses_bench", n=0))
                raw = [await raw_request_reply(nc, requests, payload) for _ in range(rounds)]
                ours = [await runtime_round_trip(bus, nc, requests) for _ in range(rounds)]
                data = os.urandom(mib * 1024 * 1024)
                ws = [await workspace_throughput(bus, data) for _ in range(rounds)]
                stock = [await stock_throughput(nc, data) for _ in range(rounds)]
            finally:
                await nc.close()
                await bus.close()

    raw_p50 = statistics.median(r.p50_ms for r in raw)
    raw_p99 = statistics.median(r.p99_ms for r in raw)
    our_p50 = statistics.median(r.p50_ms for r in ours)
    our_p99 = statistics.median(r.p99_ms for r in ours)
    ws_put, ws_get = statistics.median(p for p, _ in ws), statistics.median(g for _, g in ws)
    st_put, st_get = statistics.median(p for p, _ in stock), statistics.median(g for _, g in stock)
    latency_ratio = our_p50 / raw_p50
    get_ratio = ws_get / st_get

    print(f"# staffwork bench/bus.py: {requests} sequential requests x {rounds} rounds; {mib} MiB x {rounds}")
    print("## round trip (median of rounds)")
    print(f"raw nats-py request/reply      p50 {raw_p50:7.3f} ms   p99 {raw_p99:7.3f} ms")
    print(f"actor runtime (durable)        p50 {our_p50:7.3f} ms   p99 {our_p99:7.3f} ms")
    verdict = "met" if latency_ratio <= 3 else "MISSED"
    print(
        f"ratio runtime/raw              p50 {latency_ratio:5.2f}x  p99 {our_p99 / raw_p99:5.2f}x"
        f"   (goal p50 <= 3x: {verdict})"
    )
    print(f"## workspace, {mib} MiB (median of rounds)")
    print(f"stock nats-py object store     put {st_put:7.1f} MB/s   get {st_get:7.1f} MB/s")
    print(f"staffwork workspace            put {ws_put:7.1f} MB/s   get {ws_get:7.1f} MB/s")
    verdict = "met" if get_ratio >= 5 else "MISSED"
    print(
        f"ratio workspace/stock          put {ws_put / st_put:5.2f}x      get {get_ratio:5.2f}x"
        f"   (goal get >= 5x: {verdict})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--mib", type=int, default=50)
    args = parser.parse_args()
    configure_logging("warning")
    asyncio.run(main(args.requests, args.rounds, args.mib))
