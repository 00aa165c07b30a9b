"""Provenance: a file traced back to the tool calls whose results its writer had read."""

from __future__ import annotations

import io
from datetime import timedelta

import msgspec
import pytest
from rich.console import Console

from actors.views.provenance import file_origin, render_origin
from bus.errors import StaffworkError
from schemas.files import Provenance
from schemas.trace import AgentToolResult, AgentToolUse, AnyTraceEvent, FileWritten
from tests.helpers import incident_trace


def test_the_report_leads_back_to_the_subagents_queries() -> None:
    origin = file_origin(incident_trace(), "incident-report.md")
    assert (origin.written.agent, origin.write_call, origin.earlier_writes) == ("lead", None, 0)
    assert sorted((s.use.name, s.agent) for s in origin.sources) == [
        ("delegate", "deploys"), ("delegate", "logs"), ("delegate", "metrics"), ("delegate", "tickets"),
    ]  # fmt: skip
    logs = next(s for s in origin.sources if s.agent == "logs")
    assert logs.thread_id == "t-toolu_off_lead_1_1"
    assert sorted(s.use.name for s in logs.sources) == ["grep", "sql", "sql"]
    assert all(s.result.thread_id == "t-toolu_off_lead_1_1" for s in logs.sources)
    # the number the report gives for the errors comes from this query's result
    counted = next(s for s in logs.sources if "failing_service" in s.result.content)
    assert "| 2800 |" in counted.result.content
    assert counted.use.input["query"].startswith("SELECT service AS failing_service")
    document = origin.to_dict()
    assert document["sources"][0]["thread"]["agent"] in {"deploys", "logs", "metrics", "tickets"}
    assert document["sources"][0]["sources"][0]["name"] in {"sql", "grep"}

    console = Console(width=200, record=True, file=io.StringIO())
    console.print(render_origin(origin))
    text = console.export_text()
    assert "written by lead (thread lead) · no tool call" in text
    assert "answered by logs (thread t-toolu_off_lead_1_1), which had read:" in text
    assert '✓ grep(pattern=\'"level":"ERROR"\'' in text


def test_a_file_written_by_a_tool_call_counts_only_what_was_read_before() -> None:
    base = incident_trace()[0].time
    sid, thread = "ses_1", "t-1"

    def at(seconds: float) -> dict[str, object]:
        return {
            "session_id": sid,
            "thread_id": thread,
            "agent": "logs",
            "time": base + timedelta(seconds=seconds),
        }

    written = Provenance(session_id=sid, thread_id=thread, agent="logs", tool_call_id="tu_write")
    events: list[AnyTraceEvent] = [
        AgentToolUse(**at(0), tool_use_id="tu_read", name="read_file", input={"path": "app.jsonl"}),  # type: ignore[arg-type]
        AgentToolResult(**at(1), tool_use_id="tu_read", name="read_file", content="42 errors"),  # type: ignore[arg-type]
        AgentToolUse(**at(2), tool_use_id="tu_write", name="write_file", input={"path": "notes.md"}),  # type: ignore[arg-type]
        FileWritten(**at(2.5), path="notes.md", size=9, digest="SHA-256=x", provenance=written),  # type: ignore[arg-type]
        AgentToolResult(**at(3), tool_use_id="tu_write", name="write_file", content="wrote notes.md"),  # type: ignore[arg-type]
        AgentToolUse(**at(4), tool_use_id="tu_late", name="sql", input={"query": "select 1"}),  # type: ignore[arg-type]
        AgentToolResult(**at(5), tool_use_id="tu_late", name="sql", content="1"),  # type: ignore[arg-type]
    ]  # fmt: skip
    origin = file_origin(events, "/notes.md")
    assert origin.write_call is not None
    assert origin.write_call.tool_use_id == "tu_write"
    assert [s.use.tool_use_id for s in origin.sources] == ["tu_read"]  # not the write itself, not later calls
    assert origin.to_dict()["tool_call"] == {"tool_use_id": "tu_write", "name": "write_file"}


def test_an_unknown_file_names_the_files_there_are() -> None:
    with pytest.raises(StaffworkError) as caught:
        file_origin(incident_trace(), "report.md")
    assert str(caught.value) == (
        "no file 'report.md' was written in this session (files written: incident-report.md)"
    )


def test_positions_not_clocks_decide_what_was_read_before() -> None:
    # a subagent's host clock runs 5 s ahead: its results look later than the lead's reading of them
    events = [
        msgspec.structs.replace(e, time=e.time + timedelta(seconds=5)) if e.thread_id.startswith("t-") else e
        for e in incident_trace()
    ]
    origin = file_origin(events, "incident-report.md")
    assert {s.agent: len(s.sources) for s in origin.sources} == {
        "deploys": 2,
        "logs": 3,
        "metrics": 2,
        "tickets": 2,
    }


def test_a_follow_up_lists_only_what_the_thread_read_since_its_previous_answer() -> None:
    base = incident_trace()[0].time
    sid = "ses_f"

    def at(n: int, thread: str, agent: str) -> dict[str, object]:
        return {"session_id": sid, "thread_id": thread, "agent": agent, "time": base + timedelta(seconds=n)}

    lead, sub = at(0, "lead", "lead"), "t-tu_d"
    events: list[AnyTraceEvent] = [
        AgentToolUse(**lead, tool_use_id="tu_d", name="delegate", input={"agent": "logs", "task": "count"}),  # type: ignore[arg-type]
        AgentToolUse(**at(1, sub, "logs"), tool_use_id="tu_q1", name="sql", input={"query": "q1"}),  # type: ignore[arg-type]
        AgentToolResult(**at(2, sub, "logs"), tool_use_id="tu_q1", name="sql", content="41"),  # type: ignore[arg-type]
        AgentToolResult(**at(3, "lead", "lead"), tool_use_id="tu_d", name="delegate", content="41 errors"),  # type: ignore[arg-type]
        AgentToolUse(**at(4, "lead", "lead"), tool_use_id="tu_f", name="message_agent",  # type: ignore[arg-type]
                     input={"thread_id": sub, "message": "and since noon?"}),
        AgentToolUse(**at(5, sub, "logs"), tool_use_id="tu_q2", name="sql", input={"query": "q2"}),  # type: ignore[arg-type]
        AgentToolResult(**at(6, sub, "logs"), tool_use_id="tu_q2", name="sql", content="12"),  # type: ignore[arg-type]
        AgentToolResult(**at(7, "lead", "lead"), tool_use_id="tu_f", name="message_agent", content="12"),  # type: ignore[arg-type]
        FileWritten(**at(8, "lead", "lead"), path="report.md", size=1, digest="d",  # type: ignore[arg-type]
                    provenance=Provenance(session_id=sid, thread_id="lead", agent="lead")),
    ]  # fmt: skip
    origin = file_origin(events, "report.md")
    assert [(s.use.name, s.thread_id, [x.use.tool_use_id for x in s.sources]) for s in origin.sources] == [
        ("delegate", sub, ["tu_q1"]),
        ("message_agent", sub, ["tu_q2"]),  # not q1 again
    ]
