"""A lead and/or subagent worker as a separate process, on a deterministic scripted model.

``python -m tests.agents_proc URL ROOT [--lead] [--agents a,b] [--slow agent=seconds] [--offline]``.
With ``--offline`` the agents run the offline model (the team's playbooks); otherwise a script that
is a pure function of the request (so any process can continue any thread):

- lead: with no tool results yet, delegate to every agent in ``AGENTS`` in one turn (tool use ids
  ``toolu_<agent>``); with results, answer ``REPORT`` and the results;
- subagents: answer ``<agent> found <task>`` after ``--slow`` seconds (default 0.05).
"""

from __future__ import annotations

import argparse
import asyncio

from actors.agent.models.base import Model, ModelRequest, ModelResponse
from actors.agent.models.offline import OfflineModel
from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.roles import AgentSettings, RoleConfig, serve_roles
from bus.connection import Bus
from bus.lifecycle import install_stop_signals
from bus.logs import configure_logging
from schemas.conversation import ToolResultBlock

AGENTS = ["fast", "slow"]


def respond(request: ModelRequest) -> ModelResponse:
    if request.agent == "lead":
        results = [b for b in request.messages[-1].content if isinstance(b, ToolResultBlock)]
        if not results:
            delegations: list[tuple[str, str, dict[str, object]]] = [
                (f"toolu_{a}", "delegate", {"agent": a, "task": f"look at {a}"}) for a in AGENTS
            ]
            return calls(*delegations)
        return text("REPORT\n" + "\n".join(r.content for r in results))
    return text(f"{request.agent} found {request.messages[0].text}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("root")
    parser.add_argument("--lead", action="store_true")
    parser.add_argument("--agents", default="")
    parser.add_argument("--slow", action="append", default=[])
    parser.add_argument("--ack-wait", type=float, default=2.0)
    parser.add_argument("--offline", action="store_true")
    args = parser.parse_args()
    configure_logging("info", json=True)
    latency = {"lead": 0.05} | {a: 0.05 for a in AGENTS}
    for item in args.slow:
        agent, seconds = item.split("=")
        latency[agent] = float(seconds)
    model: Model = OfflineModel() if args.offline else ScriptedModel(responder=respond, latency=latency)
    settings = AgentSettings(lead_ack_wait=args.ack_wait, subagent_ack_wait=args.ack_wait, grace=5.0)

    async def run() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        bus = await Bus.connect(args.url, root=args.root, name="agents-proc")
        try:
            agents = [a for a in args.agents.split(",") if a]
            roles = (["lead"] if args.lead else []) + (["subagent"] if agents else [])
            config = RoleConfig(model=model, agents=agents, agent_settings=settings)
            await serve_roles(bus, roles, config, stop, on_ready=lambda: print("READY", flush=True))
        finally:
            await bus.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
