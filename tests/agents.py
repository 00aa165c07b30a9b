"""Helpers for agent tests: a team, a scripted lead, submitting a session and waiting for its result."""

from __future__ import annotations

import asyncio

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.scripted import calls, text
from actors.client import Client
from bus.codec import Decoder
from bus.connection import Bus
from schemas import AgentSpec, SessionResult, SessionSubmit, TeamSpec
from schemas.conversation import ToolResultBlock

RESULT = Decoder(SessionResult)


def team(*agents: str, tools: tuple[str, ...] = (), **fields: object) -> TeamSpec:
    return TeamSpec(
        name="testteam",
        lead=AgentSpec(name="lead"),
        agents=[AgentSpec(name=a, description=f"the {a} specialist", tools=list(tools)) for a in agents],
        **fields,  # type: ignore[arg-type]
    )


def tool_results(request: ModelRequest) -> list[ToolResultBlock]:
    last = request.messages[-1]
    return [b for b in last.content if isinstance(b, ToolResultBlock)]


def fan_out_lead(agents: list[str], *, prefix: str = "toolu_") -> list[ModelResponse]:
    """A lead that delegates to every agent in one turn, then reports what came back."""
    first = calls(
        *[
            (f"{prefix}{i}_{a}", "delegate", {"agent": a, "task": f"task for {a}"})
            for i, a in enumerate(agents)
        ]
    )

    def report(request: ModelRequest) -> ModelResponse:
        parts = [r.content for r in tool_results(request)]
        return text("REPORT\n" + "\n".join(parts))

    return [first, report]  # type: ignore[list-item]


async def submit_and_wait(bus: Bus, submit: SessionSubmit, timeout: float = 60.0) -> SessionResult:
    sub = await bus._nc.subscribe(bus.subjects.out(submit.session_id, "result"))
    try:
        await bus.publish(bus.subjects.submit, submit)
        async with asyncio.timeout(timeout):
            msg = await sub.next_msg(timeout=timeout)
        return RESULT.decode(msg.data)
    finally:
        await sub.unsubscribe()


async def wait_result(bus: Bus, session_id: str, timeout: float = 60.0) -> SessionResult:
    """The session's result once it is stored (it may already be)."""
    return await Client(bus).wait(session_id, timeout=timeout)
