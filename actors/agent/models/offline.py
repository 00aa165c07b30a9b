"""The offline model: deterministic, no network, the default when no API key is configured.

It is not a language model: it lets a team run end to end on a laptop or in CI, with real tool calls
over real data. An agent with a playbook (``[agents.playbook]``) makes its tool calls in one turn,
then answers from the playbook's template over their results; the lead without one delegates the task
to every roster agent, then writes a report from their replies; a subagent without one says so, and
what it was asked. Every answer it writes says it came from the offline model.
"""

from __future__ import annotations

import string
from typing import Any

from actors.agent.models.base import END_TURN, TOOL_USE, ModelRequest, ModelResponse
from schemas.conversation import ContentBlock, TextBlock, ToolResultBlock, ToolUseBlock, Turn

MARK = "[offline model]"


class OfflineModel:
    name = "offline"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        task, results = _state(request.messages)
        if results is None:  # a new task or follow-up: make the calls
            uses = self._calls(request, task)
            if uses:
                return ModelResponse(content=list(uses), stop_reason=TOOL_USE, model="offline")
            results = []
        return ModelResponse(
            content=[TextBlock(text=self._answer(request, task, results))],
            stop_reason=END_TURN,
            model="offline",
        )

    def _calls(self, request: ModelRequest, task: str) -> list[ContentBlock]:
        prefix = f"toolu_off_{request.thread_id or 'x'}_{len(request.messages)}"
        if request.playbook is not None:
            return [
                ToolUseBlock(id=f"{prefix}_{n}", name=call.tool, input=_fill_all(call.input, task))
                for n, call in enumerate(request.playbook.calls)
            ]
        if request.roster and any(t.name == "delegate" for t in request.tools):
            return [
                ToolUseBlock(id=f"{prefix}_{n}", name="delegate", input={"agent": agent, "task": task})
                for n, agent in enumerate(request.roster)
            ]
        return []

    def _answer(self, request: ModelRequest, task: str, results: list[ToolResultBlock]) -> str:
        texts = [r.content for r in results]
        if request.playbook is not None:
            try:
                body = string.Formatter().vformat(
                    request.playbook.answer,
                    (),
                    {"task": task, "results": "\n\n".join(texts), "result": texts},
                )
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                body = (
                    f"the playbook's answer template failed ({type(exc).__name__}: {exc}); raw results:\n"
                    + ("\n\n".join(texts))
                )
            return f"{body}\n\n{MARK}"
        if request.roster and results:
            sections = "\n\n".join(f"## From {_source(r.content)}\n\n{_body(r.content)}" for r in results)
            note = f"{MARK} The lead compiled its team's answers as they are."
            return f"# Report\n\nTask: {task}\n\n{sections}\n\n{note}"
        return f"{MARK} {request.agent or 'this agent'} has no offline playbook; it was asked: {task}"


def _state(messages: list[Turn]) -> tuple[str, list[ToolResultBlock] | None]:
    """The latest task (user text) and, if the last turn answers tool calls, their results."""
    task = ""
    for turn in reversed(messages):
        if turn.role == "user" and turn.text:
            task = turn.text
            break
    last = messages[-1] if messages else None
    if last is not None and last.role == "user" and not last.text:
        results = [b for b in last.content if isinstance(b, ToolResultBlock)]
        if results:
            return task, results
    return task, None


def _fill_all(inputs: dict[str, Any], task: str) -> dict[str, Any]:
    return {key: _fill(value, task) for key, value in inputs.items()}


def _fill(value: Any, task: str) -> Any:
    if isinstance(value, str):
        return value.replace("{task}", task)
    if isinstance(value, dict):
        return {k: _fill(v, task) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, task) for v in value]
    return value


def _source(content: str) -> str:
    first = content.splitlines()[0] if content else ""
    return first.strip("[]") if first.startswith("[thread ") else "a specialist"


def _body(content: str) -> str:
    lines = content.splitlines()
    return "\n".join(lines[1:]) if lines and lines[0].startswith("[thread ") else content
