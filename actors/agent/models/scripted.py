"""A scripted model for tests: answers from a script, records every call, fails on unconsumed steps.

Steps are given per agent (parallel threads of different agents call in any order). A step is a
:class:`ModelResponse`, or a function of the request that returns one (for scripts that must work
whichever thread or process asks). ``latency`` makes every call take that long (or, as a mapping,
each agent's calls), as a stand-in for a real model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from actors.agent.models.base import END_TURN, TOOL_USE, ModelFatal, ModelRequest, ModelResponse
from schemas.base import Usage
from schemas.conversation import ContentBlock, TextBlock, ToolUseBlock

Step = ModelResponse | Callable[[ModelRequest], ModelResponse]


def text(answer: str, *, usage: Usage | None = None) -> ModelResponse:
    """A final answer."""
    return ModelResponse(content=[TextBlock(text=answer)], stop_reason=END_TURN, usage=usage or Usage())


def calls(
    *uses: ToolUseBlock | tuple[str, str, dict[str, object]], say: str = "", usage: Usage | None = None
) -> ModelResponse:
    """A turn of tool calls: ``calls(("toolu_1", "delegate", {"agent": "logs", "task": "..."}))``."""
    blocks: list[ContentBlock] = [TextBlock(text=say)] if say else []
    for use in uses:
        blocks.append(
            use if isinstance(use, ToolUseBlock) else ToolUseBlock(id=use[0], name=use[1], input=dict(use[2]))
        )
    return ModelResponse(content=blocks, stop_reason=TOOL_USE, usage=usage or Usage())


@dataclass
class Call:
    agent: str
    thread_id: str
    request: ModelRequest
    started: float = 0.0
    ended: float = 0.0


class ScriptedModel:
    name = "scripted"

    def __init__(
        self,
        steps: Mapping[str, Iterable[Step]] | None = None,
        *,
        responder: Callable[[ModelRequest], ModelResponse] | None = None,
        latency: float | Mapping[str, float] = 0.0,
    ) -> None:
        self._steps: dict[str, deque[Step]] = defaultdict(deque)
        for agent, agent_steps in (steps or {}).items():
            self._steps[agent].extend(agent_steps)
        self.responder = responder
        self.latency = latency
        self.calls: list[Call] = []
        self._lock = threading.Lock()

    def add(self, agent: str, *steps: Step) -> None:
        self._steps[agent].extend(steps)

    async def complete(self, request: ModelRequest) -> ModelResponse:
        call = Call(
            agent=request.agent, thread_id=request.thread_id, request=request, started=time.monotonic()
        )
        with self._lock:
            self.calls.append(call)
            queue = self._steps.get(request.agent)
            step: Step | None = queue.popleft() if queue else self.responder
        latency = self.latency.get(request.agent, 0.0) if isinstance(self.latency, Mapping) else self.latency
        if latency:
            await asyncio.sleep(latency)
        call.ended = time.monotonic()
        if step is None:
            raise ModelFatal(
                f"scripted model has no step left for agent {request.agent!r} (call {len(self.calls)})"
            )
        return step(request) if callable(step) else step

    def calls_by(self, agent: str) -> list[Call]:
        return [c for c in self.calls if c.agent == agent]

    def assert_done(self) -> None:
        """Fail if any scripted step was never used."""
        left = {agent: len(queue) for agent, queue in self._steps.items() if queue}
        if left:
            raise AssertionError(f"scripted steps never used: {left}")
