"""The offline model: deterministic, no network, the default when no API key is configured.

It is not a language model: it lets a team run end to end on a laptop or in CI, with real tool calls
over real data. An agent with a playbook (``[agents.playbook]``) makes its tool calls in one turn,
then answers from the playbook's template over their results; the lead without one delegates the task
to every roster agent, then writes a report from their replies; a subagent without one says so, and
what it was asked. Every answer it writes says it came from the offline model.
"""

from __future__ import annotations

import re
import string
from typing import Any

from actors.agent.models.base import END_TURN, TOOL_USE, ModelRequest, ModelResponse
from schemas.conversation import ContentBlock, TextBlock, ToolResultBlock, ToolUseBlock, Turn
from schemas.team import Playbook

MARK = "[offline model]"


class OfflineModel:
    name = "offline"

    async def complete(self, request: ModelRequest) -> ModelResponse:
        task, steps = _state(request.messages)
        uses = self._calls(request, task, steps)
        if uses:
            return ModelResponse(content=list(uses), stop_reason=TOOL_USE, model="offline")
        return ModelResponse(
            content=[TextBlock(text=self._answer(request, task, steps))],
            stop_reason=END_TURN,
            model="offline",
        )

    def _calls(
        self, request: ModelRequest, task: str, steps: list[list[ToolResultBlock]]
    ) -> list[ContentBlock]:
        """The next turn's calls: the playbook's step after the ``steps`` done, or the lead's delegation
        of the task to its whole roster; none when it is time to answer."""
        prefix = f"toolu_off_{request.thread_id or 'x'}_{len(request.messages)}"
        playbook = request.playbook
        if playbook is not None:
            turns = playbook.turns
            if len(steps) >= len(turns) or _failed(steps):
                return []
            fields = _fields(playbook, task, _slots(steps, turns))
            uses: list[ContentBlock] = []
            for n, call in enumerate(turns[len(steps)]):
                if call.for_each is None:
                    uses.append(
                        ToolUseBlock(id=f"{prefix}_{n}", name=call.tool, input=_fill(call.input, fields))
                    )
                    continue
                for k, row in enumerate(table_rows(fields["result"][call.for_each])):
                    each = _fill(call.input, fields | {"row": row})
                    uses.append(ToolUseBlock(id=f"{prefix}_{n}x{k}", name=call.tool, input=each))
            return uses
        if not steps and request.roster and any(t.name == "delegate" for t in request.tools):
            return [
                ToolUseBlock(id=f"{prefix}_{n}", name="delegate", input={"agent": agent, "task": task})
                for n, agent in enumerate(request.roster)
            ]
        return []

    def _answer(self, request: ModelRequest, task: str, steps: list[list[ToolResultBlock]]) -> str:
        if request.playbook is not None:
            playbook = request.playbook
            if (failed := _failed(steps)) and len(steps) < len(playbook.turns):
                return (
                    f"The playbook stopped after turn {len(steps)} of {len(playbook.turns)}: a call failed, "
                    f"so what the next turns would make of its result is not made.\n\n{failed}\n\n{MARK}"
                )
            fields = _fields(playbook, task, _slots(steps, playbook.turns))
            try:
                body = string.Formatter().vformat(playbook.answer, (), fields)
            except (KeyError, IndexError, ValueError, AttributeError) as exc:
                body = (
                    f"the playbook's answer template failed ({type(exc).__name__}: {exc}); raw results:\n"
                    + fields["results"]
                )
            return f"{body}\n\n{MARK}"
        results = steps[-1] if steps else []
        if request.roster and results:
            sections = "\n\n".join(f"## From {_source(r.content)}\n\n{_body(r.content)}" for r in results)
            note = f"{MARK} The lead compiled its team's answers as they are."
            return f"# Report\n\nTask: {task}\n\n{sections}\n\n{note}"
        return f"{MARK} {request.agent or 'this agent'} has no offline playbook; it was asked: {task}"


def _state(messages: list[Turn]) -> tuple[str, list[list[ToolResultBlock]]]:
    """The latest task (user text) and the results of each turn of calls made for it since."""
    start = 0
    for n in range(len(messages) - 1, -1, -1):
        if messages[n].role == "user" and messages[n].text:
            start = n
            break
    task = messages[start].text if messages else ""
    steps = [
        [b for b in turn.content if isinstance(b, ToolResultBlock)]
        for turn in messages[start + 1 :]
        if turn.role == "user" and not turn.text
    ]
    return task, [results for results in steps if results]


def _failed(steps: list[list[ToolResultBlock]]) -> str:
    """The error results of the latest turn, one per line ("" if none failed)."""
    return "\n".join(r.content for r in (steps[-1] if steps else []) if r.is_error)


def _slots(steps: list[list[ToolResultBlock]], turns: list[list[Any]]) -> list[str]:
    """One text per playbook call of the turns done, in order: its result, or a ``for_each`` call's
    results joined by blank lines (a call's result is found by its id, ``..._<call>`` or
    ``..._<call>x<row>``)."""
    slots: list[str] = []
    for results, calls in zip(steps, turns, strict=False):
        texts: list[list[str]] = [[] for _ in calls]
        for result in results:
            call = result.tool_use_id.rsplit("_", 1)[-1].split("x")[0]
            if call.isdigit() and int(call) < len(texts):
                texts[int(call)].append(result.content)
        slots.extend("\n\n".join(t) for t in texts)
    return slots


def _fields(playbook: Playbook, task: str, results: list[str]) -> dict[str, Any]:
    """The template fields: the task, what ``task_pattern`` reads from it, the results so far."""
    found = re.search(playbook.task_pattern, task) if playbook.task_pattern else None
    named = {k: v for k, v in (found.groupdict() if found else {}).items() if v is not None}
    return {**named, "task": task, "result": results, "results": "\n\n".join(results)}


_FIELD = re.compile(r"\{(task|results|result\[(\d+)\]|row\[([^\]{}]+)\]|[A-Za-z_][A-Za-z0-9_]*)\}")


def _fill(value: Any, fields: dict[str, Any]) -> Any:
    """``value`` with the template fields it names filled in; anything else in braces stays as it is
    (a query's own braces, a field the task did not have)."""
    if isinstance(value, str):

        def one(match: re.Match[str]) -> str:
            whole, index, column = match.group(0), match.group(2), match.group(3)
            if index is not None:
                results = fields["result"]
                return str(results[int(index)]) if int(index) < len(results) else whole
            if column is not None:
                return str(fields.get("row", {}).get(column, whole))
            found = fields.get(match.group(1))
            return whole if found is None or isinstance(found, list | dict) else str(found)

        return _FIELD.sub(one, value)
    if isinstance(value, dict):
        return {k: _fill(v, fields) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, fields) for v in value]
    return value


def table_rows(text: str) -> list[dict[str, str]]:
    """The rows of a ``sql`` result (a header, rows with cells between `` | ``, a blank line, the
    count), each by column name; none for anything else (an error)."""
    lines = text.splitlines()
    if not lines or (" | " not in lines[0] and not lines[0].isidentifier()):
        return []
    header = lines[0].split(" | ")
    rows = []
    for line in lines[1:]:
        if not line:
            break
        cells = line.split(" | ")
        if len(cells) == len(header):
            rows.append(dict(zip(header, cells, strict=True)))
    return rows


def _source(content: str) -> str:
    first = content.splitlines()[0] if content else ""
    return first.strip("[]") if first.startswith("[thread ") else "a specialist"


def _body(content: str) -> str:
    lines = content.splitlines()
    return "\n".join(lines[1:]) if lines and lines[0].startswith("[thread ") else content
