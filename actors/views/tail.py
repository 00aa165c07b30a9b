"""``staffwork tail``: trace events as they happen, one readable line each (or one JSON object).

Read from the log stream itself (an ordered consumer), so it works without the collector, and the
filters that map to subjects (session, kind) are applied by the server.
"""

from __future__ import annotations

import re
import zlib
from datetime import timedelta
from typing import get_args

from rich.text import Text

from bus.errors import StaffworkError
from bus.subjects import Subjects
from schemas.trace import (
    AgentMessage,
    AgentThinking,
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    CustomToolUse,
    FileWritten,
    MessageRejected,
    ModelRequestEnd,
    ModelRequestStart,
    OutcomeEvaluationEnd,
    OutcomeEvaluationStart,
    SessionErrorEvent,
    SessionStatusIdle,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadInterrupted,
    ThreadMessageReceived,
    ThreadMessageSent,
    ThreadStatusIdle,
    ThreadStatusTerminated,
    ToolConfirmationAnswered,
    ToolConfirmationRequested,
    ToolDenied,
    ToolSourceFailed,
    TraceEvent,
    WebhookDelivered,
    WebhookDeliverySkipped,
    WebhookEndpointDisabled,
    WebhookFailed,
    event_kind,
)

KINDS: tuple[str, ...] = tuple(sorted(event_kind(cls) for cls in get_args(AnyTraceEvent)))
FAMILIES: tuple[str, ...] = tuple(sorted({kind.split(".")[0] for kind in KINDS}))

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
_PALETTE = ("cyan", "magenta", "green", "yellow", "blue", "bright_red", "bright_cyan", "bright_magenta")


def parse_duration(text: str) -> timedelta:
    """``90s``, ``10m``, ``1h30m``, ``2d``, ``500ms`` as a timedelta; one clear error otherwise."""
    compact = text.strip().lower().replace(" ", "")
    if compact and _DURATION.sub("", compact) == "":
        return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in _DURATION.findall(compact)))
    raise StaffworkError(f"--since: expected a duration like 30s, 10m, 1h30m or 2d, got {text!r}")


def event_subjects(subjects: Subjects, session: str | None, kind: str | None) -> list[str]:
    """The subjects that carry the events asked for: a session's (or every session's, plus the events
    that belong to no session), of one kind (``agent.tool_use``) or family (``agent``)."""
    if kind and kind not in KINDS and kind not in FAMILIES:
        known = ", ".join(FAMILIES + KINDS)
        raise StaffworkError(f"--kind: unknown event kind {kind!r} (kinds: {known})")
    suffix = (kind if kind in KINDS else f"{kind}.>") if kind else ">"
    if session:
        return [subjects.events(session, suffix)]
    # and the events of no session: undecodable traffic, the dreamer's model calls
    return [subjects.events("*", suffix), subjects.system_events(suffix)]


def agent_style(agent: str) -> str:
    return "bold white" if agent in ("", "lead") else _PALETTE[zlib.crc32(agent.encode()) % len(_PALETTE)]


def _clip(text: str, width: int = 100) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def summary(event: TraceEvent) -> str:
    """What happened, in a few words."""
    match event:
        case AgentToolUse(name=name, input=arguments):
            shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
            return _clip(f"{name}({shown})")
        case AgentToolResult(name=name, is_error=failed, content=content):
            return _clip(f"{'✗' if failed else '✓'} {name}: {content}")
        case AgentMessage(text=text) | AgentThinking(text=text):
            return _clip(text)
        case ModelRequestStart(model=model):
            return model
        case ModelRequestEnd(model=model, usage=usage, duration_ms=ms, stop_reason=stop, error=error):
            tokens = usage.input_tokens + usage.output_tokens
            failure = f" ✗ {error.message}" if error else ""
            return f"{model} {ms / 1000:.2f}s {tokens:,} tokens ${usage.cost_usd:.4f} {stop}{failure}"
        case ThreadCreated(parent_thread_id=parent, task=task):
            return _clip(f"from {parent or 'lead'}: {task}")
        case ThreadMessageSent(to_agent=agent, to_thread_id=thread, content=content):
            return _clip(f"→ {agent} ({thread}): {content}")
        case ThreadMessageReceived(from_agent=agent, from_thread_id=thread, content=content):
            return _clip(f"← {agent} ({thread}): {content}")
        case FileWritten(path=path, size=size, provenance=provenance):
            by = f" by {provenance.tool_call_id}" if provenance.tool_call_id else ""
            return f"{path} ({size:,} bytes){by}"
        case SessionStatusIdle(stop_reason=stop, usage=usage):
            return f"{stop} · {usage.input_tokens + usage.output_tokens:,} tokens · ${usage.cost_usd:.4f}"
        case ThreadStatusIdle(stop_reason=stop):
            return stop
        case SessionStatusTerminated(reason=reason) | ThreadStatusTerminated(reason=reason):
            return reason
        case SessionErrorEvent(error=error):
            return _clip(f"{error.kind}: {error.message}")
        case CustomToolUse(name=name, input=arguments, tool_use_id=call):
            shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
            return _clip(f"⏸ {name}({shown}) waits for the caller: staffwork answer SESSION {call} TEXT")
        case ToolConfirmationRequested(name=name, input=arguments, tool_use_id=call, timeout_s=timeout):
            shown = ", ".join(f"{k}={v!r}" for k, v in arguments.items())
            return _clip(
                f"⏸ {name}({shown}) waits for confirmation, denied after {timeout:g}s: "
                f"staffwork approve|deny {event.session_id} {call}",
                160,
            )
        case ToolConfirmationAnswered(name=name, result="allow", by=by):
            return f"✓ {name} allowed by {by or '-'}"
        case ToolConfirmationAnswered(name=name, result="deny", by=by, deny_message=message):
            return _clip(f"✗ {name} denied by {by or '-'}" + (f": {message}" if message else ""))
        case ToolConfirmationAnswered(name=name):
            return f"✗ {name} not confirmed in time: denied"
        case ThreadInterrupted(reason=reason, by=by):
            return _clip(f"interrupted by {by or '-'}" + (f": {reason}" if reason else ""))
        case ToolSourceFailed(kind=kind, source=source, message=message):
            return _clip(f"{kind} {source} failed: {message}")
        case ToolDenied(name=name, allowed=allowed):
            return f"{name} is not allowed (allowed: {', '.join(allowed) or 'none'})"
        case MessageRejected(subject=subject, actor=actor, reason=reason):
            return _clip(f"{actor} rejected {subject}: {reason}")
        case OutcomeEvaluationStart(iteration=iteration):
            return f"grading attempt {iteration}"
        case OutcomeEvaluationEnd(iteration=iteration, result=result, explanation=explanation):
            return _clip(f"attempt {iteration}: {result} · {explanation}")
        case WebhookDelivered(url=url, event_type=kind, attempt=attempt, status_code=code):
            return f"{kind} → {url} · {code} · attempt {attempt}"
        case WebhookFailed(url=url, event_type=kind, attempt=attempt, error=error, retry_in_s=retry):
            again = f" · retry in {retry:.1f}s" if retry is not None else ""
            return _clip(f"{kind} → {url} · attempt {attempt} failed: {error}{again}")
        case WebhookEndpointDisabled(url=url, reason=reason):
            return _clip(f"{url} disabled: {reason}")
        case WebhookDeliverySkipped(url=url, event_type=kind, reason=reason):
            return _clip(f"{kind} → {url} skipped: {reason}", 160)
    return ""


def line(event: TraceEvent, *, with_session: bool) -> Text:
    """One readable line, coloured by agent."""
    text = Text(no_wrap=True, overflow="ellipsis")
    text.append(event.time.astimezone().strftime("%H:%M:%S.%f")[:-3], style="dim")
    if with_session:
        text.append(f"  {event.session_id or '-'}", style="dim")
    style = agent_style(event.agent)
    text.append(f"  {event.agent or '-':<10}", style=style)
    text.append(f" {event.thread_id or '-':<22}", style=style + " dim" if event.agent else "dim")
    kind = event_kind(event)
    failed = isinstance(
        event,
        SessionErrorEvent
        | ToolDenied
        | MessageRejected
        | WebhookFailed
        | WebhookEndpointDisabled
        | WebhookDeliverySkipped,
    ) or (
        isinstance(event, AgentToolResult | ModelRequestEnd)
        and (getattr(event, "is_error", False) or getattr(event, "error", None) is not None)
    )
    text.append(f" {kind:<32}", style="red" if failed else "")
    text.append(f" {summary(event)}", style="red" if failed else "")
    return text
