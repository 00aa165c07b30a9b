"""Run the incident team on freshly generated data, all on this machine, and print its report.

    python -m examples.incident.run [--seed 7] [--data DIR]

It starts an embedded nats-server in a temporary directory, runs the lead and the four specialists in
this process, uploads the data files into a new session's workspace, submits the task and prints the
report. With ANTHROPIC_API_KEY set Claude plays the agents; without it the offline model runs their
playbooks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
from pathlib import Path

from actors.agent.models import default_model
from actors.agent.tools.catalog import check_team_tools
from actors.client import Client
from actors.roles import running_agents
from bus.connection import Bus
from bus.logs import configure_logging
from bus.provision import provision
from bus.server import EmbeddedServer
from examples.incident import TASK
from examples.incident.generate import FILES, generate
from schemas.ids import new_id
from schemas.team import parse_team

TEAM_FILE = Path(__file__).with_name("team.toml")


async def run(data: Path, *, timeout: float = 600.0) -> str:
    """The report of one session of the incident team over the files in ``data``."""
    team = parse_team(TEAM_FILE.read_text(), source=str(TEAM_FILE))
    os.environ["INCIDENT_DATA"] = str(data)  # the deploy API (the deploys worker's MCP server) reads it
    check_team_tools(team, source=str(TEAM_FILE))
    with tempfile.TemporaryDirectory(prefix="staffwork-incident-") as store:
        server = EmbeddedServer(store)
        url = await server.start()
        try:
            async with await Bus.connect(url, root="sw", name="incident-example") as bus:
                await provision(bus)
                client = Client(bus)
                session_id = new_id("ses")
                for name in FILES:
                    await client.workspace.put(session_id, name, (data / name).read_bytes())
                async with running_agents(bus, default_model(), agents=[a.name for a in team.agents]):
                    await client.submit(TASK, team=team, inputs=list(FILES), session_id=session_id)
                    result = await client.wait(session_id, timeout=timeout)
        finally:
            await server.stop()
    return result.final_text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.incident.run", description=__doc__)
    parser.add_argument("--seed", type=int, default=7, help="the data's random seed (default: 7)")
    parser.add_argument("--data", type=Path, help="keep the generated data here (default: a temporary dir)")
    args = parser.parse_args(argv)
    configure_logging("warning")
    with tempfile.TemporaryDirectory(prefix="incident-data-") as scratch:
        data = args.data or Path(scratch)
        generate(data, seed=args.seed)
        print(asyncio.run(run(data)))


if __name__ == "__main__":
    main()
