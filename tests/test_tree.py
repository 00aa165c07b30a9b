"""The session tree: text is text (never markup), and statuses follow runs, follow-ups and failures."""

from __future__ import annotations

import io
from datetime import timedelta

from rich.console import Console

from actors.views.tree import build, render
from schemas.base import ErrorInfo
from schemas.trace import (
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    SessionErrorEvent,
    ThreadStatusIdle,
    ThreadStatusRunning,
    WebhookDelivered,
    WebhookFailed,
)
from tests.helpers import incident_trace


def text_of(session_id: str, events: list[AnyTraceEvent]) -> str:
    console = Console(width=240, file=io.StringIO(), record=True)
    console.print(render(session_id, events))
    return console.export_text()


def test_markup_in_tool_arguments_and_errors_is_shown_as_written() -> None:
    events = incident_trace()
    base = events[-1].time
    ids = {"session_id": events[0].session_id, "thread_id": "t-toolu_off_lead_1_1", "agent": "logs"}
    pattern = {"pattern": "[bold red]ERROR[/]"}
    failure = ErrorInfo(kind="x", message="bad [link=https://x.example]y")
    events += [
        AgentToolUse(**ids, time=base, tool_use_id="tu_m", name="grep", input=pattern),  # type: ignore[arg-type]
        AgentToolResult(**ids, time=base, tool_use_id="tu_m", name="grep", content="level=[/ERROR]"),  # type: ignore[arg-type]
        SessionErrorEvent(**ids, time=base, error=failure),
    ]
    text = text_of(events[0].session_id, events)  # "[/ERROR]" alone used to crash rich's markup parser
    assert "grep(pattern='[bold red]ERROR[/]')" in text
    assert "✗ error: bad [link=https://x.example]y" in text


def test_a_lead_that_failed_for_good_is_failed_not_running() -> None:
    events = [e for e in incident_trace() if type(e).__name__ != "SessionStatusIdle"]
    events.append(
        SessionErrorEvent(
            session_id=events[0].session_id,
            time=events[-1].time + timedelta(seconds=1),
            error=ErrorInfo(kind="RuntimeError", message="the lead crashed"),
        )
    )  # fmt: skip  (the runtime's failure event names no thread: the submit has none)
    threads, totals = build(events)
    assert totals["status"] == "failed"
    assert threads["lead"].status == "failed"
    assert threads["lead"].ended == events[-1].time


def test_a_follow_up_in_progress_shows_its_thread_running() -> None:
    events = incident_trace()
    ids = {"session_id": events[0].session_id, "thread_id": "t-toolu_off_lead_1_0", "agent": "deploys"}
    later = events[-1].time + timedelta(seconds=1)
    threads, _ = build([*events, ThreadStatusRunning(**ids, time=later)])
    assert (threads["t-toolu_off_lead_1_0"].status, threads["t-toolu_off_lead_1_0"].ended) == (
        "running",
        None,
    )
    threads, _ = build(
        [
            *events,
            ThreadStatusRunning(**ids, time=later),
            ThreadStatusIdle(**ids, time=later + timedelta(seconds=2)),
        ]
    )
    assert threads["t-toolu_off_lead_1_0"].status == "idle"


def test_the_grader_and_webhooks_show_their_state_and_are_not_counted_as_threads() -> None:
    events = incident_trace()
    sid, later = events[0].session_id, events[-1].time + timedelta(seconds=1)
    hook = {"session_id": sid, "thread_id": "webhooks", "agent": "webhooks", "url": "https://x/h"}
    kind = {"event_id": "whevt_1", "event_type": "session.status_idled"}
    events += [
        WebhookFailed(**hook, **kind, attempt=1, error="503", retry_in_s=1.5, time=later),
        WebhookDelivered(**hook, **kind, attempt=2, status_code=204, time=later),  # type: ignore[arg-type]
    ]
    threads, _ = build(events)
    assert threads["webhooks"].status == "delivered"
    assert threads["webhooks"].steps == [
        "✗ webhook session.status_idled → https://x/h · attempt 1: 503 · retry in 1.5s",
        "↗ webhook session.status_idled → https://x/h · 204",
    ]
    assert "· 5 threads" in text_of(sid, events).splitlines()[0]  # the lead and four subagents
