"""Benchmark: the incident example's session time, cold and warm, and the whole
``staffwork run --example incident`` from cold. The offline model plays the agents throughout (no API
key is passed on), so the figures are staffwork's own time: the bus, the tools, the actors.

1. Session time (submit -> result, through the gateway, as ``staffwork run`` does it). Each round is
   a fresh process with a fresh embedded nats-server on a fresh store, running the roles the team
   needs (lead, grader, one worker serving the four agents) in that process, as ``staffwork run``
   does. Its first session is cold (the deploy API's MCP server starts, the first sql loads...);
   the next ``--warm`` sessions, on the same running system, are warm. Every session uploads the same
   generated data as its inputs (the upload is timed apart). Goal: a session <= 1.0 s.
2. The whole ``staffwork run --example incident --json``, a subprocess with a fresh STAFFWORK_HOME each
   time: interpreter start, imports, data generation, server start, provisioning, the session and the
   shutdown. Goal: <= 2.5 s.

Baselines from the same run, to read the figures as ratios: ``python -c pass``, importing the CLI
(``python -c "import actors.cli"``), generating the incident data, and an embedded nats-server's
start (fresh store, until "Server is ready").

Run: ``python bench/example.py [--rounds 3] [--warm 4] [--runs 3]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's directory would come first on sys.path (bench/bus.py would shadow
# the bus package); drop it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]

import argparse  # noqa: E402
import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from actors.agent.models import default_model, model_profile  # noqa: E402
from actors.client import Client  # noqa: E402
from actors.roles import ROLES, RoleConfig, running  # noqa: E402
from bench._proc import CommandFailed, clean_env, mib, run_watched  # noqa: E402
from bus.connection import Bus  # noqa: E402
from bus.logs import configure_logging  # noqa: E402
from bus.provision import provision  # noqa: E402
from bus.server import EmbeddedServer  # noqa: E402
from examples.incident.generate import FILES, generate  # noqa: E402
from schemas.ids import new_id  # noqa: E402
from schemas.team import TeamSpec, parse_team  # noqa: E402

ROOT_DIR = _HERE.parent
TEAM_FILE = ROOT_DIR / "examples" / "incident" / "team.toml"
TASK = "Payments are failing since this afternoon. Find out what happened and write the incident report."
SESSION_GOAL = 1.0
RUN_GOAL = 2.5


# --- one round, in a fresh process (``--round DATA``) ---------------------------------------------


def roles_for(team: TeamSpec) -> list[str]:
    """The roles ``staffwork run`` starts for ``team`` when nothing else serves it."""
    return [r.name for r in ROLES.values() if not r.per_agent and r.consumer and r.needed(team)] + [
        "subagent"
    ]


async def one_round(data: Path, warm: int, timeout: float) -> dict[str, Any]:
    """A fresh server and actors, a cold session, then ``warm`` more: the times, as JSON."""
    team = parse_team(TEAM_FILE.read_bytes(), source=str(TEAM_FILE))
    os.environ["INCIDENT_DATA"] = str(data)  # the deploys worker's MCP server reads the data there
    files = {name: (data / name).read_bytes() for name in FILES}
    model = default_model()
    times: dict[str, Any] = {"model": model_profile(model), "sessions": [], "uploads": []}
    with tempfile.TemporaryDirectory(prefix="staffwork-bench-store-") as store:
        started = time.perf_counter()
        server = EmbeddedServer(store)
        url = await server.start()
        times["server_start"] = time.perf_counter() - started
        try:
            async with await Bus.connect(url, root="sw", name="bench-example") as bus:
                mark = time.perf_counter()
                await provision(bus)
                times["provision"] = time.perf_counter() - mark
                mark = time.perf_counter()
                # as `staffwork run` does: given the team, the workers start its MCP servers at once
                config = RoleConfig(model=model, agents=[a.name for a in team.agents], team=team)
                async with running(bus, roles_for(team), config):
                    times["actors_ready"] = time.perf_counter() - mark
                    client = Client(bus)
                    for _ in range(1 + warm):
                        session_id = new_id("ses")
                        mark = time.perf_counter()
                        for name, content in files.items():
                            await client.workspace.put(session_id, name, content)
                        times["uploads"].append(time.perf_counter() - mark)
                        times["sessions"].append(await timed_session(client, team, session_id, timeout))
        finally:
            await server.stop()
    return times


async def timed_session(client: Client, team: TeamSpec, session_id: str, timeout: float) -> float:
    """Seconds from the submit to the result of one session; it must end idle, its outcome met."""
    started = time.perf_counter()
    waiting = asyncio.ensure_future(client.wait(session_id, timeout=timeout))  # follows from the start
    try:
        await client.submit(TASK, team=team, inputs=list(FILES), session_id=session_id)
        result = await waiting
    finally:
        waiting.cancel()
    elapsed = time.perf_counter() - started
    verdict = result.outcome.result if result.outcome else "no outcome"
    if result.status != "idle" or verdict != "satisfied":
        error = result.error.message if result.error else result.final_text[:200]
        raise RuntimeError(f"session {session_id} ended {result.status}, outcome {verdict}: {error}")
    return elapsed


# --- the benchmark ---------------------------------------------------------------------------------


def staffwork_command() -> list[str]:
    script = Path(sys.executable).parent / "staffwork"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "actors.cli"]


def wall_times(args: list[str], times: int, timeout: float = 60.0) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="staffwork-bench-home-") as home:
        env = clean_env(Path(home))
        ran = [run_watched(args, env=env, timeout=timeout) for _ in range(times)]
    for r in ran:
        if r.returncode != 0:
            raise CommandFailed(f"{' '.join(args)} exited with {r.returncode}: {r.stderr[-2000:]}")
    return [r.wall for r in ran]


async def server_starts(times: int) -> list[float]:
    starts = []
    for _ in range(times):
        with tempfile.TemporaryDirectory(prefix="staffwork-bench-store-") as store:
            started = time.perf_counter()
            server = EmbeddedServer(store)
            await server.start()
            starts.append(time.perf_counter() - started)
            await server.stop()
    return starts


def main(rounds: int, warm: int, runs: int, timeout: float) -> None:
    print(f"# staffwork bench/example.py: the incident example, offline model; {os.cpu_count()} CPUs")

    # Baselines
    python = wall_times([sys.executable, "-c", "pass"], 5)
    imports = wall_times([sys.executable, "-c", "import actors.cli"], 3)
    nats = asyncio.run(server_starts(3))
    with tempfile.TemporaryDirectory(prefix="incident-data-") as scratch:
        data = Path(scratch)
        started = time.perf_counter()
        generate(data)
        generating = time.perf_counter() - started
        size = sum((data / name).stat().st_size for name in FILES)
        print("## baselines (median)")
        print(f"python -c pass                    {statistics.median(python) * 1000:7.0f} ms")
        print(f"python -c 'import actors.cli'     {statistics.median(imports) * 1000:7.0f} ms")
        print(f"nats-server start (fresh store)   {statistics.median(nats) * 1000:7.0f} ms")
        print(
            f"generate the incident data        {generating * 1000:7.0f} ms   "
            f"({mib(size)}, {len(FILES)} files)"
        )

        # 1. Sessions, cold and warm
        cold: list[float] = []
        warm_times: list[float] = []
        uploads: list[float] = []
        setup: dict[str, list[float]] = {"server_start": [], "provision": [], "actors_ready": []}
        peaks: list[int] = []
        bound = 60.0 + (1 + warm) * timeout
        args = [
            sys.executable,
            __file__,
            "--round",
            str(data),
            "--warm",
            str(warm),
            "--timeout",
            str(timeout),
        ]
        for _ in range(rounds):
            with tempfile.TemporaryDirectory(prefix="staffwork-bench-home-") as home:
                ran = run_watched(args, env=clean_env(Path(home)), timeout=bound)
            if ran.returncode != 0:
                raise CommandFailed(f"a round failed (exit code {ran.returncode}):\n{ran.stderr[-3000:]}")
            times = json.loads(ran.stdout.splitlines()[-1])
            cold.append(times["sessions"][0])
            warm_times += times["sessions"][1:]
            uploads += times["uploads"]
            for key, values in setup.items():
                values.append(times[key])
            peaks.append(ran.peak_rss)
        print(f"## session time, submit -> result ({rounds} fresh processes; model: {times['model']})")
        print(
            "setup of each round (median): "
            + ", ".join(
                f"{k.replace('_', ' ')} {statistics.median(v) * 1000:.0f} ms" for k, v in setup.items()
            )
            + f"; upload of the inputs {statistics.median(uploads) * 1000:.0f} ms; "
            f"peak RSS of the round's process tree {mib(max(peaks))}"
        )
        print("cold (first session of a fresh process):  " + "  ".join(f"{t:6.2f} s" for t in cold))
        print(f"cold median                                {statistics.median(cold):6.2f} s")
        print(
            f"warm ({len(warm_times)} sessions)  p50 {statistics.median(warm_times):6.2f} s   "
            f"min {min(warm_times):6.2f} s   max {max(warm_times):6.2f} s"
        )
        warm_p50, cold_p50 = statistics.median(warm_times), statistics.median(cold)
        print(
            f"goal session <= {SESSION_GOAL:.1f} s: "
            f"warm p50 {warm_p50:.2f} s {_verdict(warm_p50 <= SESSION_GOAL)}, "
            f"cold {cold_p50:.2f} s {_verdict(cold_p50 <= SESSION_GOAL)}"
        )

    # 2. The whole command, from cold
    command = [*staffwork_command(), "run", "--example", "incident", "--json"]
    print(f"## whole run from cold: {' '.join(['staffwork', *command[-4:]])}, fresh STAFFWORK_HOME each")
    walls: list[float] = []
    sessions: list[float] = []
    for i in range(runs):
        with tempfile.TemporaryDirectory(prefix="staffwork-bench-home-") as home:
            ran = run_watched(command, env=clean_env(Path(home)), timeout=timeout + 60)
        if ran.returncode != 0:
            raise CommandFailed(f"staffwork run exited with {ran.returncode}:\n{ran.stderr[-3000:]}")
        report = json.loads(ran.stdout)
        walls.append(ran.wall)
        sessions.append(report["wall_s"])
        print(
            f"run {i + 1}: {ran.wall:6.2f} s wall   (its session {report['wall_s']:.2f} s, status "
            f"{report['status']}, outcome {(report['outcome'] or {}).get('result')}; "
            f"peak RSS {mib(ran.peak_rss)})"
        )
    median = statistics.median(walls)
    rest = median - statistics.median(sessions) - statistics.median(imports) - generating
    print(
        f"median {median:.2f} s = importing the CLI ~{statistics.median(imports):.2f} s "
        f"+ generating the data ~{generating:.2f} s "
        f"+ its session (run's wall_s) {statistics.median(sessions):.2f} s + the rest "
        f"(server, provisioning, shutdown) ~{rest:.2f} s"
    )
    print(
        f"goal whole run <= {RUN_GOAL:.1f} s: median {median:.2f} s {_verdict(median <= RUN_GOAL)}  "
        f"(= {median / statistics.median(python):.0f}x python -c pass, "
        f"{median / statistics.median(imports):.1f}x importing the CLI)"
    )


def _verdict(met: bool) -> str:
    return "met" if met else "MISSED"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="fresh processes, each with a cold session")
    parser.add_argument("--warm", type=int, default=4, help="warm sessions after each cold one")
    parser.add_argument("--runs", type=int, default=3, help="whole staffwork run commands")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one session may take")
    parser.add_argument("--round", metavar="DATA", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("warning")
    if args.round:
        print(json.dumps(asyncio.run(one_round(args.round, args.warm, args.timeout))))
    else:
        try:
            main(args.rounds, args.warm, args.runs, args.timeout)
        except CommandFailed as exc:
            sys.exit(f"error: {exc}")
