"""The agent loop of the lead and the subagents, driven by the thread's history log.

Its last entry says the next step, whose result is appended before the step after it: a user turn
→ a model call (:func:`~actors.agent.calls.call_model`); an assistant turn with tool calls → run
them concurrently (a call the agent's permission policy asks for waits for a person's answer first:
:mod:`actors.agent.approvals`), one user turn of results in call order; without tool calls → the answer
(``pause_turn`` continues, ``max_tokens`` keeps the cut answer, ``refusal`` fails). So whoever picks
the thread up (a follow-up, another worker after a crash) continues where it stopped. A retryable
model failure raises :class:`bus.errors.Retryable` (redelivered, resumed from the log); a fatal one
ends the thread as ``failed`` with the model's message.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from actors.agent.approvals import confirm
from actors.agent.calls import call_model
from actors.agent.models.base import MAX_TOKENS, PAUSE_TURN, REFUSAL, Model, ModelFatal, ModelRequest
from actors.agent.tools.base import Toolbox, ToolContext
from bus.connection import Bus
from bus.errors import HistoryConflict
from bus.history import ThreadHistory, ThreadLog
from schemas.base import ErrorInfo, Usage
from schemas.conversation import TextBlock, ThinkingBlock, ThreadTurn, ToolResultBlock, ToolUseBlock, Turn
from schemas.prices import ModelPrice
from schemas.team import AgentSpec
from schemas.thread import ThreadOutcome
from schemas.trace import (
    AgentMessage,
    AgentThinking,
    AgentToolResult,
    AgentToolUse,
    ThreadInterrupted,
    ToolDenied,
)

TRACE_TEXT_LIMIT = 20_000
#: stop reasons of the note turns the loop records when a request stops without an answer
INTERRUPTED = "interrupted"
STOPPED = frozenset({"max_turns", "error", INTERRUPTED})


def turns_since_trigger(history: ThreadHistory) -> int:
    count = 0
    for entry in reversed(history.entries):
        if entry.trigger:
            break
        if entry.turn.role == "assistant" and entry.stop_reason not in STOPPED:
            count += 1
    return count


def answer_for(history: ThreadHistory, trigger: str) -> ThreadTurn | None:
    """The turn that ended the request ``trigger`` (its answer, or a stop note), if it has ended."""
    start = next((i for i, e in enumerate(history.entries) if e.trigger == trigger), None)
    if start is None:
        return None
    answer = None
    for entry in history.entries[start + 1 :]:
        if entry.trigger:
            break  # the next request starts here
        if entry.turn.role == "assistant" and not entry.turn.tool_uses and entry.stop_reason != PAUSE_TURN:
            answer = entry
    return answer


@dataclass
class LoopResult:
    status: ThreadOutcome
    text: str
    stop_reason: str
    usage: Usage
    model_turns: int
    error: ErrorInfo | None = None


class AgentLoop:
    def __init__(
        self,
        *,
        bus: Bus,
        model: Model,
        log: ThreadLog,
        history: ThreadHistory,
        spec: AgentSpec,
        model_name: str,
        system: str,
        toolbox: Toolbox,
        tool_context: Callable[[str], ToolContext],
        on_usage: Callable[[Usage], None] | None = None,
        roster: list[str] | None = None,
        prices: list[ModelPrice] | None = None,
    ) -> None:
        self.bus = bus
        self.model = model
        self.log = log
        self.history = history
        self.spec = spec
        self.model_name = model_name
        self.system = system
        self.toolbox = toolbox
        self.tool_context = tool_context
        self.on_usage = on_usage
        self.roster = roster or []
        self.prices = prices or []  # the team's, for the cost of each model call
        self.usage = Usage()
        self._fresh: set[str] = set()  # tool use ids of the model turns made in this run

    @property
    def model_turns(self) -> int:
        """Model turns spent on the current request (since its task or follow-up): each request of a
        thread gets ``max_turns`` of its own."""
        return turns_since_trigger(self.history)

    async def run(self) -> LoopResult:
        while True:
            last = self.history.last
            if last is None:
                raise ValueError(f"thread {self.history.thread_id!r} has no history to continue")
            if last.stop_reason in STOPPED:  # the request already ended (a resumed, finished run)
                return self._stopped(last)
            if last.turn.role == "user" or last.stop_reason == PAUSE_TURN:
                if self.model_turns >= self.spec.max_turns:
                    text = self._last_text()
                    limit = self.spec.max_turns
                    await self._note(
                        f"[stopped: this request reached its limit of {limit} model turns]", "max_turns"
                    )
                    return self._result("max_turns_reached", text, "max_turns")
                try:
                    await self._model_turn()
                except ModelFatal as exc:
                    await self._note(f"[stopped: the model call failed: {exc}]", "error")
                    error = ErrorInfo(kind="model", message=str(exc))
                    return self._result("failed", str(exc), "error", error)
                continue
            uses = last.turn.tool_uses
            if uses:
                async with asyncio.TaskGroup() as tg:  # one failing call cancels its siblings
                    tasks = [tg.create_task(self._run_tool(use)) for use in uses]
                await self._append(Turn(role="user", content=[task.result() for task in tasks]))
                continue
            if last.stop_reason == REFUSAL:
                error = ErrorInfo(kind="refusal", message="the model refused to continue")
                return self._result("failed", last.turn.text, REFUSAL, error)
            text = last.turn.text
            if last.stop_reason == MAX_TOKENS:
                text += f"\n\n[answer cut short: the model reached max_tokens ({self.spec.max_tokens})]"
            return self._result("completed", text, last.stop_reason)

    async def _note(self, text: str, stop: str) -> None:
        """Record that the request stopped (an assistant turn, so a follow-up can continue the thread)."""
        await self._append(Turn(role="assistant", content=[TextBlock(text=text)]), stop_reason=stop)

    def _stopped(self, last: ThreadTurn) -> LoopResult:
        if last.stop_reason == "max_turns":
            return self._result("max_turns_reached", self._last_text(), "max_turns")
        if last.stop_reason == INTERRUPTED:
            return self._result("interrupted", last.turn.text, INTERRUPTED)
        error = ErrorInfo(kind="model", message=last.turn.text)
        return self._result("failed", last.turn.text, last.stop_reason, error)

    def _result(
        self, status: ThreadOutcome, text: str, stop: str, error: ErrorInfo | None = None
    ) -> LoopResult:
        return LoopResult(
            status=status,
            text=text,
            stop_reason=stop,
            usage=self.usage,
            model_turns=self.model_turns,
            error=error,
        )

    def _last_text(self) -> str:
        for entry in reversed(self.history.entries):
            if entry.turn.role == "assistant" and entry.turn.text and entry.stop_reason not in STOPPED:
                return entry.turn.text
        return ""

    async def _append(self, turn: Turn, **fields: object) -> ThreadTurn:
        entry = ThreadTurn(
            session_id=self.history.session_id,
            thread_id=self.history.thread_id,
            agent=self.spec.name,
            index=len(self.history.entries),
            turn=turn,
            **fields,  # type: ignore[arg-type]
        )
        await self.log.append(self.history, entry)
        return entry

    def _event_fields(self) -> dict[str, Any]:
        return {
            "session_id": self.history.session_id,
            "thread_id": self.history.thread_id,
            "agent": self.spec.name,
        }

    async def _model_turn(self) -> None:
        note = self.toolbox.note
        request = ModelRequest(
            model=self.model_name,
            system=f"{self.system}\n\n{note}" if note else self.system,
            messages=self.history.turns,
            tools=self.toolbox.specs,
            max_tokens=self.spec.max_tokens,
            agent=self.spec.name,
            thread_id=self.history.thread_id,
            session_id=self.history.session_id,
            prices=self.prices,
            roster=self.roster,
            playbook=self.spec.playbook,
        )
        response = await call_model(self.bus, self.model, request)
        self.usage = self.usage + response.usage
        if self.on_usage is not None:
            self.on_usage(response.usage)
        content = response.content or [TextBlock(text="(no answer)")]  # the API refuses empty turns later
        self._fresh.update(block.id for block in content if isinstance(block, ToolUseBlock))
        await self._append(
            Turn(role="assistant", content=content),
            usage=response.usage,
            model=response.model or self.model_name,
            stop_reason=response.stop_reason,
        )
        fields = self._event_fields()
        for block in response.content:
            if isinstance(block, TextBlock) and block.text:
                await self.bus.emit(AgentMessage(text=block.text[:TRACE_TEXT_LIMIT], **fields))
            elif isinstance(block, ThinkingBlock) and block.thinking:
                await self.bus.emit(AgentThinking(text=block.thinking[:TRACE_TEXT_LIMIT], **fields))
            elif isinstance(block, ToolUseBlock):
                tool = self.toolbox.get(block.name)
                served: dict[str, Any] = {"kind": tool.kind, "source": tool.source} if tool else {}
                permission: Literal["allow", "ask"] = "ask" if self._asks(block.name) else "allow"
                use = AgentToolUse(
                    tool_use_id=block.id,
                    name=block.name,
                    input=block.input,
                    evaluated_permission=permission,
                    **served,
                    **fields,
                )
                await self.bus.emit(use)

    def _asks(self, name: str) -> bool:
        """Whether a call of ``name`` waits for a person's confirmation (a tool the agent cannot call
        now is refused without asking)."""
        return self.toolbox.get(name) is not None and self.spec.permissions.asks(name)

    async def _run_tool(self, use: ToolUseBlock) -> ToolResultBlock:
        fields = self._event_fields()
        tool = self.toolbox.get(use.name)
        served: dict[str, Any] = {}
        started = time.monotonic()
        if tool is not None:
            served = {"kind": tool.kind, "source": tool.source}
            context = self.tool_context(use.id)
            context.replayed = use.id not in self._fresh
            denied = None
            if self._asks(use.name):
                denied = await confirm(context, use, tool.kind, self.spec.permissions)
                started = time.monotonic()  # the call's duration, not the wait for its answer
            result = denied or await tool.run(context, use.input)
        elif why := self.toolbox.why_unavailable(use.name):
            # allowed, but its source cannot serve it now: the reason, not a refusal
            result = ToolResultBlock(tool_use_id=use.id, content=why, is_error=True)
        else:
            allowed = sorted(self.toolbox.tools)
            await self.bus.emit(ToolDenied(tool_use_id=use.id, name=use.name, allowed=allowed, **fields))
            result = ToolResultBlock(
                tool_use_id=use.id,
                content=f"tool {use.name!r} is not available to agent {self.spec.name!r} "
                f"(its tools: {', '.join(allowed) or 'none'})",
                is_error=True,
            )
        await self.bus.emit(
            AgentToolResult(
                tool_use_id=use.id,
                name=use.name,
                is_error=result.is_error,
                content=result.content[:TRACE_TEXT_LIMIT],
                duration_ms=round((time.monotonic() - started) * 1000, 3),
                **served,
                **fields,
            )
        )
        return result


async def record_interrupt(
    bus: Bus, log: ThreadLog, history: ThreadHistory, reason: str, *, by: str = "", tries: int = 3
) -> ThreadHistory:
    """Record in a thread's log that its request was interrupted (its loop task already cancelled).

    Tool calls the model made and that have no result yet get an error result (in the trace too),
    then a note turn with stop reason ``interrupted`` ends the request, so the thread's history stays
    a valid conversation that a follow-up continues, and a replay sees the request as ended. A request
    that had already ended is left as it is; one that was cut gets a ``session.thread_interrupted``
    event (why, and ``by`` whom). Returns the thread's history as stored now.

    An append the cut loop had in flight may land meanwhile: the log is read afresh and the record
    tried again (``tries`` in all); a real other writer still wins (``HistoryConflict``)."""
    for _ in range(tries - 1):
        with contextlib.suppress(HistoryConflict):
            return await _record_interrupt(bus, log, history, reason, by)
    return await _record_interrupt(bus, log, history, reason, by)


async def _record_interrupt(
    bus: Bus, log: ThreadLog, history: ThreadHistory, reason: str, by: str
) -> ThreadHistory:
    fresh = await log.load(history.session_id, history.thread_id)
    last = fresh.last
    if last is None or last.stop_reason in STOPPED:
        return fresh
    uses = last.turn.tool_uses if last.turn.role == "assistant" else []
    if last.turn.role == "assistant" and not uses and last.stop_reason != PAUSE_TURN:
        return fresh  # it had answered: nothing was cut short
    why = f"interrupted by the user{f': {reason}' if reason else ''}"
    if uses:
        text = f"[{why}]"
        results = [ToolResultBlock(tool_use_id=use.id, content=text, is_error=True) for use in uses]
        for use in uses:
            sid, thread = fresh.session_id, fresh.thread_id
            await bus.emit(
                AgentToolResult(
                    session_id=sid,
                    thread_id=thread,
                    agent=last.agent,
                    tool_use_id=use.id,
                    name=use.name,
                    is_error=True,
                    content=text,
                )
            )
        await _append_to(log, fresh, last.agent, Turn(role="user", content=list(results)))
    note = Turn(role="assistant", content=[TextBlock(text=f"[stopped: {why}]")])
    await _append_to(log, fresh, last.agent, note, stop_reason=INTERRUPTED)
    thread = fresh.thread_id
    await bus.emit(
        ThreadInterrupted(
            session_id=fresh.session_id, thread_id=thread, agent=last.agent, reason=reason, by=by
        )
    )
    return fresh


async def _append_to(log: ThreadLog, history: ThreadHistory, agent: str, turn: Turn, **fields: Any) -> None:
    entry = ThreadTurn(
        session_id=history.session_id,
        thread_id=history.thread_id,
        agent=agent,
        index=len(history.entries),
        turn=turn,
        **fields,
    )
    await log.append(history, entry)
