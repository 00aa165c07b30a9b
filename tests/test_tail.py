"""``staffwork tail``: trace events from the stream itself, filtered, as lines or JSON, live."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.views.tail import agent_style, event_subjects, line, parse_duration, summary
from bus.connection import Bus
from bus.direct import tail_subjects
from bus.errors import StaffworkError
from bus.subjects import Subjects
from schemas.base import Usage
from schemas.trace import (
    AgentMessage,
    AgentToolResult,
    AgentToolUse,
    ModelRequestEnd,
    ThreadInterrupted,
    ToolConfirmationAnswered,
    ToolConfirmationRequested,
    TraceEvent,
)
from tests.helpers import NatsServer, ready_process, round_trip, run_cli


def test_durations() -> None:
    assert parse_duration("90s") == timedelta(seconds=90)
    assert parse_duration("1h30m") == timedelta(minutes=90)
    assert parse_duration("2d") == timedelta(days=2)
    assert parse_duration("500ms") == timedelta(milliseconds=500)
    for bad in ("10", "ten minutes", "", "5 parsecs", "-5m"):
        with pytest.raises(StaffworkError, match=r"--since: expected a duration like 30s.*got"):
            parse_duration(bad)


def test_filters_map_to_subjects() -> None:
    subjects = Subjects("sw")
    assert event_subjects(subjects, None, None) == ["sw.s.*.evt.>", "sw.sys.evt.>"]
    assert event_subjects(subjects, "ses_1", None) == ["sw.s.ses_1.evt.>"]
    assert event_subjects(subjects, "ses_1", "agent.tool_use") == ["sw.s.ses_1.evt.agent.tool_use"]
    assert event_subjects(subjects, None, "agent") == ["sw.s.*.evt.agent.>", "sw.sys.evt.agent.>"]
    assert event_subjects(subjects, None, "bus") == ["sw.s.*.evt.bus.>", "sw.sys.evt.bus.>"]
    with pytest.raises(StaffworkError, match=r"--kind: unknown event kind 'agent.tool' \(kinds: agent, "):
        event_subjects(subjects, None, "agent.tool")
    with pytest.raises(StaffworkError, match=r"session id 'a\.b' is not a valid subject token"):
        event_subjects(subjects, "a.b", None)


def test_each_agent_keeps_its_colour() -> None:
    styles = {agent_style(agent) for agent in ("logs", "metrics", "deploys", "tickets")}
    assert len(styles) >= 3  # distinct agents are told apart
    assert agent_style("logs") == agent_style("logs")


def test_confirmations_and_interrupts_say_who() -> None:
    ids: dict[str, Any] = {"session_id": "ses_c", "thread_id": "t-1", "agent": "logs"}
    request = ToolConfirmationRequested(**ids, tool_use_id="tu_1", name="sql", input={"query": "drop"},
                                        timeout_s=90)  # fmt: skip
    assert summary(request) == (
        "⏸ sql(query='drop') waits for confirmation, denied after 90s: staffwork approve|deny ses_c tu_1"
    )
    answers = [
        ToolConfirmationAnswered(**ids, tool_use_id="tu_1", name="sql", result="allow", by="run:alice"),
        ToolConfirmationAnswered(**ids, tool_use_id="tu_1", name="sql", result="deny", by="api:acme",
                                 deny_message="not [bold]now[/]"),
        ToolConfirmationAnswered(**ids, tool_use_id="tu_1", name="sql", result="timeout"),
    ]  # fmt: skip
    assert [summary(answer) for answer in answers] == [
        "✓ sql allowed by run:alice",
        "✗ sql denied by api:acme: not [bold]now[/]",
        "✗ sql not confirmed in time: denied",
    ]
    interrupted = ThreadInterrupted(**ids, reason="wrong window", by="bob")
    assert summary(interrupted) == "interrupted by bob: wrong window"
    assert "session.thread_interrupted" in line(interrupted, with_session=False).plain
    assert line(answers[1], with_session=True).plain.endswith("denied by api:acme: not [bold]now[/]")


def events(session: str) -> list[TraceEvent]:
    usage = Usage(input_tokens=1200, output_tokens=300, cost_usd=0.0081)
    return [
        AgentToolUse(session_id=session, thread_id="t-1", agent="logs", tool_use_id="tu_1", name="grep",
                     input={"pattern": "ERROR"}),
        AgentToolResult(session_id=session, thread_id="t-1", agent="logs", tool_use_id="tu_1", name="grep",
                        content="app.jsonl:12: timeout [payments]"),
        ModelRequestEnd(session_id=session, thread_id="t-2", agent="metrics", model="claude-sonnet-4-6",
                        usage=usage, duration_ms=1500.0, stop_reason="end_turn"),
        AgentMessage(session_id=session, thread_id="lead", agent="lead", text="The [bold]deploy[/] did it."),
    ]  # fmt: skip


async def publish(bus: Bus, items: list[TraceEvent]) -> None:
    for item in items:
        await bus.emit(item)
    await round_trip(bus)


async def staffwork(server: NatsServer, root: str, *args: str) -> tuple[int, str, str]:
    return await run_cli("tail", "--nats", server.url, "--root", root, *args)


async def test_stored_events_filtered_by_session_agent_and_kind(
    bus: Bus, nats_server: NatsServer, root: str
) -> None:
    await publish(bus, events("ses_a") + events("ses_b"))
    await bus.publish_bytes(f"{root}.s.ses_a.evt.agent.message", b"{not json")  # malformed traffic

    code, out, err = await staffwork(
        nats_server, root, "--session", "ses_a", "--since", "1h", "--no-follow", "--json"
    )
    assert code == 0, err
    lines = out.splitlines()
    assert [json.loads(line)["type"] for line in lines] == [
        "agent.tool_use.v1", "agent.tool_result.v1", "span.model_request_end.v1", "agent.message.v1",
        "undecodable",
    ]  # fmt: skip
    assert {json.loads(line).get("session_id", "ses_a") for line in lines} == {"ses_a"}
    assert json.loads(lines[-1])["subject"] == f"{root}.s.ses_a.evt.agent.message"

    code, out, err = await staffwork(
        nats_server, root, "--agent", "logs", "--since", "1h", "--no-follow", "--json"
    )
    assert code == 0, err
    assert [(e["session_id"], e["type"]) for e in map(json.loads, out.splitlines())] == [
        ("ses_a", "agent.tool_use.v1"), ("ses_a", "agent.tool_result.v1"),
        ("ses_b", "agent.tool_use.v1"), ("ses_b", "agent.tool_result.v1"),
    ]  # fmt: skip

    code, out, err = await staffwork(nats_server, root, "--kind", "span", "--since", "1h", "--no-follow")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2
    assert re.match(
        r"\d\d:\d\d:\d\d\.\d{3}  ses_a  metrics +t-2 +span\.model_request_end +"
        r"claude-sonnet-4-6 1\.50s 1,500 tokens \$0\.0081 end_turn$",
        lines[0],
    )

    code, out, err = await staffwork(nats_server, root, "--session", "ses_a", "--since", "1h", "--no-follow")
    assert code == 0, err
    assert "grep(pattern='ERROR')" in out
    assert "✓ grep: app.jsonl:12: timeout [payments]" in out  # brackets are text, not markup
    assert "The [bold]deploy[/] did it." in out
    assert re.search(rf"undecodable message #\d+ on {root}\.s\.ses_a\.evt\.agent\.message: ", out)


async def test_since_starts_at_that_time(bus: Bus, nats_server: NatsServer, root: str) -> None:
    await publish(bus, events("ses_old"))
    code, out, err = await staffwork(nats_server, root, "--since", "1h", "--no-follow", "--json")
    assert code == 0, err
    assert len(out.splitlines()) == 4
    code, out, err = await staffwork(nats_server, root, "--since", "0s", "--no-follow", "--json")
    assert code == 0, err
    assert out == ""  # nothing was stored from now on


async def test_follows_new_events_live_in_colour(bus: Bus, nats_server: NatsServer, root: str) -> None:
    await publish(bus, events("ses_before"))  # stored before tail started: not shown without --since
    os.environ["FORCE_COLOR"] = "1"  # rich colours even into a pipe
    try:
        async with ready_process(
            "actors.cli", "tail", "--nats", nats_server.url, "--root", root, ready_word=b"following"
        ) as proc:
            await publish(bus, events("ses_live"))
            assert proc.stdout is not None
            lines = [(await asyncio.wait_for(proc.stdout.readline(), 20)).decode() for _ in range(4)]
    finally:
        del os.environ["FORCE_COLOR"]
    assert all("ses_live" in line for line in lines), lines
    assert "\x1b[" in lines[0]  # coloured
    logs, metrics = lines[0], lines[2]
    colour = re.compile(r"\x1b\[([\d;]+)m\s*(logs|metrics)")
    found_logs, found_metrics = colour.search(logs), colour.search(metrics)
    assert found_logs
    assert found_metrics
    assert found_logs.group(1) != found_metrics.group(1)  # each agent its own colour


async def test_bad_filters_are_one_clear_line(nats_server: NatsServer, root: str) -> None:
    code, _, err = await staffwork(nats_server, root, "--since", "yesterday")
    assert (code, err.strip()) == (
        1,
        "error: --since: expected a duration like 30s, 10m, 1h30m or 2d, got 'yesterday'",
    )
    code, _, err = await staffwork(nats_server, root, "--kind", "tool_use")
    assert code == 1
    assert err.startswith("error: --kind: unknown event kind 'tool_use' (kinds: agent, bus,")


async def test_no_gap_between_the_stored_and_the_live_part_across_subjects(bus: Bus) -> None:
    root, stream = bus.subjects.root, bus.subjects.log_stream
    first, second = f"{root}.sys.evt.a", f"{root}.sys.evt.b"
    await bus.publish_bytes(first, b"a-old")
    for n in range(70):  # more than one direct-get batch: the second reader is still reading later
        await bus.publish_bytes(second, f"b-old-{n}".encode())
    since = datetime.now(UTC) - timedelta(hours=1)
    seen: list[bytes] = []
    messages = tail_subjects(bus, stream, [first, second], since=since)
    async with contextlib.aclosing(messages), asyncio.timeout(20):
        async for msg in messages:
            seen.append(msg.data)
            if len(seen) == 2:  # the first reader is done; these land while the second still reads
                await bus.publish_bytes(first, b"a-new")
                await bus.publish_bytes(second, b"b-new")
                await bus.publish_bytes(first, b"a-live")
            if {b"a-new", b"b-new", b"a-live"} <= set(seen):
                break
    assert seen[:2] == [b"a-old", b"b-old-0"]  # the stored part in stream order
    assert seen.index(b"a-new") < seen.index(b"a-live")  # each subject in order
    assert len(seen) == len(set(seen)) == 74  # none lost (the loop ended), none twice
