"""A session as a tree, from its trace events: who did what, in what order, at what cost.

The root is the session with its totals; the lead's thread is under it, and each delegation shows the
subagent thread it started, with that thread's model calls and tool calls (a call that waited for a
person's confirmation says how it was answered, and by whom; an interrupt says who); every node
carries its duration, tokens and cost. Built from the events alone, so it works from the stream (no collector
needed) and after the run has ended.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime

from rich.text import Text
from rich.tree import Tree

from schemas.trace import (
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    CustomToolUse,
    FileWritten,
    ModelRequestEnd,
    OutcomeEvaluationEnd,
    OutcomeEvaluationStart,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadInterrupted,
    ThreadMessageSent,
    ThreadStatusIdle,
    ThreadStatusRunning,
    ThreadStatusTerminated,
    ToolConfirmationAnswered,
    ToolConfirmationRequested,
    ToolSourceFailed,
    WebhookDelivered,
    WebhookEndpointDisabled,
    WebhookFailed,
)


@dataclass
class ThreadNode:
    thread_id: str
    agent: str
    started: datetime | None = None
    ended: datetime | None = None
    turns: int = 0
    tokens: int = 0
    cost: float = 0.0
    status: str = "running"
    steps: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)


#: the grader's and the webhooks actor's events: their nodes are shown, but they are not the session's threads
SERVICES = ("grader", "webhooks")


def _seconds(start: datetime | None, end: datetime | None) -> str:
    return f"{(end - start).total_seconds():.2f}s" if start and end else "-"


def _closed_by_interrupts(events: list[AnyTraceEvent]) -> set[str]:
    """The tool calls an interrupt closed: the error results a thread's log got right before its
    ``session.thread_interrupted`` (the runtime writes them, then the event, with nothing between)."""
    closed: set[str] = set()
    trailing: dict[str, list[str]] = defaultdict(list)
    for event in events:
        thread = event.thread_id or "lead"
        if isinstance(event, AgentToolResult) and event.is_error:
            trailing[thread].append(event.tool_use_id)
        elif isinstance(event, ThreadInterrupted):
            closed.update(trailing.pop(thread, []))
        else:
            trailing.pop(thread, None)
    return closed


def _confirmation(
    request: ToolConfirmationRequested,
    answer: ToolConfirmationAnswered | None,
    result: AgentToolResult | None,
    closed: set[str],
) -> str:
    """A confirmation request's step: waiting, its answer (and who gave it), a timeout, or closed."""
    call = request.tool_use_id
    if answer is None:
        if result is not None:  # no answer came: an interrupt (or a crash) closed the call
            why = "closed by an interrupt" if call in closed else "closed without an answer"
            return f"✗ {request.name} asked for confirmation, {why} · {call}"
        return f"⏸ {request.name} waits for confirmation (denied after {request.timeout_s:g}s) · {call}"
    after = _seconds(request.time, answer.time)
    if answer.result == "allow":
        return f"✓ {request.name} allowed by {answer.by or '-'} after {after} · {call}"
    if answer.result == "deny":
        why = f": {answer.deny_message}" if answer.deny_message else ""
        return f"✗ {request.name} denied by {answer.by or '-'} after {after}{why} · {call}"
    return f"✗ {request.name} not confirmed within {request.timeout_s:g}s: denied · {call}"


def build(events: list[AnyTraceEvent]) -> tuple[dict[str, ThreadNode], dict[str, float | int | str]]:
    """Threads (keyed by id, ``lead`` first) with their steps, and the session's totals."""
    threads: dict[str, ThreadNode] = {}
    tool_names: dict[str, str] = {}
    results: dict[str, AgentToolResult] = {}
    answers: dict[str, ToolConfirmationAnswered] = {}
    asked: set[str] = set()
    closed = _closed_by_interrupts(events)
    delegated: dict[str, str] = defaultdict(str)  # child thread -> parent thread
    totals: dict[str, float | int | str] = {"tokens": 0, "cost": 0.0, "status": "running", "errors": 0}
    first: datetime | None = None
    last: datetime | None = None

    def node(event: AnyTraceEvent) -> ThreadNode:
        thread = event.thread_id or "lead"
        if thread not in threads:
            threads[thread] = ThreadNode(thread, event.agent)
        found = threads[thread]
        found.started = found.started or event.time
        return found

    for event in events:
        first = first or event.time
        last = event.time
        if isinstance(event, AgentToolResult):
            results[event.tool_use_id] = event
        elif isinstance(event, ToolConfirmationAnswered):
            answers.setdefault(event.tool_use_id, event)  # the first answer counts
        elif isinstance(event, ToolConfirmationRequested):
            asked.add(event.tool_use_id)
    for event in events:
        current = node(event)
        if isinstance(event, ThreadCreated):
            delegated[event.thread_id] = event.parent_thread_id or "lead"
        elif isinstance(event, ModelRequestEnd):
            current.turns += 1
            tokens = event.usage.input_tokens + event.usage.output_tokens
            current.tokens += tokens
            current.cost += event.usage.cost_usd
            totals["tokens"] = int(totals["tokens"]) + tokens
            totals["cost"] = float(totals["cost"]) + event.usage.cost_usd
            failure = f" ✗ {event.error.message}" if event.error else ""
            current.steps.append(
                f"model call {current.turns} · {event.model} · {event.duration_ms / 1000:.2f}s · "
                f"{tokens:,} tokens · ${event.usage.cost_usd:.4f} · {event.stop_reason or '-'}{failure}"
            )
        elif isinstance(event, AgentToolUse):
            tool_names[event.tool_use_id] = event.name
            result = results.get(event.tool_use_id)
            mark = "?" if result is None else ("✗" if result.is_error else "✓")
            duration = _seconds(event.time, result.time if result else None)
            arguments = ", ".join(f"{k}={' '.join(repr(v).split())}"[:60] for k, v in event.input.items())
            served = f" · {event.kind} {event.source}".rstrip() if event.kind != "builtin" else ""
            current.steps.append(
                f"{mark} {event.name}({arguments}) · {duration}{served} · {event.tool_use_id}"
            )
        elif isinstance(event, CustomToolUse):
            result = results.get(event.tool_use_id)
            if result is None:
                step = f"⏸ {event.name} waits for the caller's answer"
            elif event.tool_use_id in closed:
                step = f"✗ {event.name} closed by an interrupt before the caller answered"
            else:
                mark = "✗" if result.is_error else "✓"
                step = f"{mark} {event.name} answered by the caller after {_seconds(event.time, result.time)}"
            current.steps.append(f"{step} · {event.tool_use_id}")
        elif isinstance(event, ToolConfirmationRequested):
            result = results.get(event.tool_use_id)
            answer = answers.get(event.tool_use_id)
            current.steps.append(_confirmation(event, answer, result, closed))
        elif isinstance(event, ToolConfirmationAnswered):
            if event.tool_use_id not in asked:  # its request is not in the trace: the answer alone
                by = f" by {event.by}" if event.by else ""
                why = f": {event.deny_message}" if event.deny_message else ""
                current.steps.append(f"{event.result}{by} · {event.name}{why} · {event.tool_use_id}")
        elif isinstance(event, ThreadInterrupted):
            by = f" by {event.by}" if event.by else ""
            current.steps.append(f"⏹ interrupted{by}" + (f": {event.reason}" if event.reason else ""))
        elif isinstance(event, ToolSourceFailed):
            current.steps.append(f"⚠ {event.kind} {event.source}: {event.message}")
        elif isinstance(event, ThreadMessageSent):
            current.children.append(event.to_thread_id)
            current.steps.append(f"→ thread {event.to_thread_id} ({event.to_agent})")
        elif isinstance(event, FileWritten):
            current.steps.append(f"wrote {event.path} ({event.size:,} bytes)")
        elif isinstance(event, OutcomeEvaluationStart):
            current.status, current.ended = f"grading {event.iteration}", None
        elif isinstance(event, OutcomeEvaluationEnd):
            current.status, current.ended = event.result, event.time
            passed = sum(1 for c in event.criteria if c.status == "passed")
            graded = sum(1 for c in event.criteria if c.status != "not_graded")
            current.steps.append(
                f"⚖ outcome attempt {event.iteration}: {event.result} · {passed}/{graded} graded criteria "
                f"passed · {event.duration_ms / 1000:.2f}s · ${event.usage.cost_usd:.4f}"
            )
            totals["outcome"] = event.result  # its usage is in the grader's own model calls
        elif isinstance(event, WebhookDelivered):
            current.steps.append(f"↗ webhook {event.event_type} → {event.url} · {event.status_code}")
            current.status, current.ended = "delivered", event.time
        elif isinstance(event, WebhookFailed):
            final = event.retry_in_s is None
            again = "given up" if event.retry_in_s is None else f"retry in {event.retry_in_s:.1f}s"
            step = f"✗ webhook {event.event_type} → {event.url} · attempt {event.attempt}: {event.error}"
            current.steps.append(f"{step} · {again}")
            current.status, current.ended = ("given up" if final else "retrying"), event.time
        elif isinstance(event, WebhookEndpointDisabled):
            current.steps.append(f"✗ webhook endpoint {event.url} disabled: {event.reason}")
            current.status, current.ended = "disabled", event.time
        elif isinstance(event, ThreadStatusRunning | SessionStatusRunning):  # a (new) run starts
            current.ended = None
            current.status = "running"
            if isinstance(event, SessionStatusRunning):
                totals["status"] = "running"
        elif isinstance(event, ThreadStatusIdle):
            current.ended = event.time
            current.status = "idle" if event.stop_reason == "end_turn" else event.stop_reason
        elif isinstance(event, SessionStatusIdle):
            current.ended = event.time
            stop = event.stop_reason
            current.status = totals["status"] = "idle" if stop in ("end_turn", "") else stop
        elif isinstance(event, ThreadStatusTerminated | SessionStatusTerminated):
            current.ended = event.time
            current.status = event.reason or "terminated"  # why: canceled, failed, budget_reached...
            if isinstance(event, SessionStatusTerminated):
                totals["status"] = current.status
        elif isinstance(event, SessionErrorEvent):
            totals["errors"] = int(totals["errors"]) + 1
            current.steps.append(f"✗ error: {event.error.message}")
            if current.status == "running":  # the run failed for good (the runtime ends it with this)
                current.ended = event.time
                current.status = "failed"
                if current.thread_id == "lead":
                    totals["status"] = "failed"
    totals["duration"] = _seconds(first, last)
    if "lead" in threads:
        ordered = {"lead": threads["lead"], **{k: v for k, v in threads.items() if k != "lead"}}
        threads = ordered
    return threads, totals


def render(session_id: str, events: list[AnyTraceEvent]) -> Tree:
    threads, totals = build(events)
    tree = Tree(
        Text.assemble(
            (f"session {session_id}", "bold"),
            f" · {totals['status']} · {totals['duration']} · {int(totals['tokens']):,} tokens · "
            f"${float(totals['cost']):.4f} · {sum(1 for t in threads if t not in SERVICES)} threads"
            + (f" · outcome {totals['outcome']}" if "outcome" in totals else ""),
        )
    )

    def add(parent: Tree, thread_id: str, seen: set[str]) -> None:
        thread = threads.get(thread_id)
        if thread is None or thread_id in seen:
            return
        seen.add(thread_id)
        branch = parent.add(
            Text.assemble(
                (thread.agent, "bold"),
                f" ({thread.thread_id}) · {thread.status} · {_seconds(thread.started, thread.ended)} · "
                f"{thread.turns} turns · {thread.tokens:,} tokens · ${thread.cost:.4f}",
            )
        )
        for step in thread.steps:  # model output and tool arguments: plain text, never markup
            leaf = branch.add(Text(step), highlight=False)
            if step.startswith("→ thread "):
                add(leaf, step.split()[2], seen)

    seen: set[str] = set()
    if "lead" in threads:
        add(tree, "lead", seen)
    for thread_id in threads:  # threads whose delegation is not in the trace (still shown)
        add(tree, thread_id, seen)
    return tree
