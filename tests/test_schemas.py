"""Wire types: round trips, compatibility with older and newer producers, team-file errors, JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from bus.codec import Decoder, encode
from bus.errors import MessageRejected, MessageTooLarge
from schemas import (
    PUBLIC_MESSAGES,
    AgentSpec,
    CustomToolResult,
    Delegation,
    ErrorInfo,
    FollowUp,
    Message,
    Provenance,
    SessionAccepted,
    SessionCancel,
    SessionInterrupt,
    SessionMessage,
    SessionRecord,
    SessionResult,
    SessionSubmit,
    SpecError,
    SubmitReply,
    TeamSpec,
    ThreadReply,
    ToolConfirmation,
    Usage,
    json_schema,
    new_id,
    parse_team,
    tag_of,
)
from schemas import trace as t
from schemas.errors import StaffworkError
from schemas.outcome import Check, CriterionVerdict, GradeRequest, GradeVerdict, Outcome
from schemas.webhooks import WebhookDelivery

FIXTURES = Path(__file__).parent / "fixtures" / "messages"
SID = "ses_01jd0000000000000000000000"
NOW = datetime(2026, 11, 1, 10, 0, tzinfo=UTC)
USAGE = Usage(input_tokens=10, output_tokens=5, cache_read_input_tokens=3, cost_usd=0.0012)
OUTCOME = Outcome(
    rubric="- names the deploy",
    checks=[Check(name="report exists", kind="file_exists", path="report.md")],
)
VERDICT = CriterionVerdict(criterion="report exists", kind="file_exists", status="passed")
TEAM = TeamSpec(name="incident", lead=AgentSpec(name="lead"), agents=[AgentSpec(name="logs", tools=["grep"])])

SAMPLES: dict[type[Message], Message] = {
    m.__class__: m
    for m in [
        SessionSubmit(
            session_id=SID, task="investigate", team_spec=TEAM, inputs=["data/"], metadata={"k": "v"}
        ),
        SessionAccepted(session_id=SID, team="incident", lead="lead"),
        SubmitReply(session_id=SID, accepted=False, error=ErrorInfo(kind="invalid_request", message="bad")),
        SessionResult(session_id=SID, status="idle", final_text="done", files=["report.md"], usage=USAGE),
        SessionCancel(session_id=SID, reason="user", thread_id="thr_1"),
        SessionInterrupt(session_id=SID, thread_id="thr_1", reason="wrong direction"),
        SessionMessage(session_id=SID, text="and the p99?", turn=1, inputs=["more.csv"]),
        ToolConfirmation(session_id=SID, tool_use_id="tu_4", result="deny", deny_message="not now", by="ana"),
        Delegation(session_id=SID, thread_id="thr_1", agent="logs", task="grep errors", tool_use_id="tu_1"),
        FollowUp(session_id=SID, thread_id="thr_1", agent="logs", message="and then?"),
        ThreadReply(
            session_id=SID,
            thread_id="thr_1",
            agent="logs",
            status="failed",
            error=ErrorInfo(kind="model", message="overloaded", retryable=True),
        ),
        t.SessionStatusRunning(session_id=SID, time=NOW),
        t.SessionStatusIdle(session_id=SID, time=NOW, stop_reason="budget_reached", usage=USAGE),
        t.SessionStatusTerminated(session_id=SID, time=NOW, reason="canceled"),
        t.SessionErrorEvent(session_id=SID, time=NOW, error=ErrorInfo(kind="x", message="y")),
        t.ThreadCreated(session_id=SID, time=NOW, thread_id="thr_1", agent="logs", task="grep"),
        t.ThreadStatusRunning(session_id=SID, time=NOW, thread_id="thr_1"),
        t.ThreadStatusIdle(session_id=SID, time=NOW, thread_id="thr_1"),
        t.ThreadStatusTerminated(session_id=SID, time=NOW, thread_id="thr_1", reason="done"),
        t.AgentMessage(session_id=SID, time=NOW, text="hello"),
        t.AgentThinking(session_id=SID, time=NOW, text="hmm"),
        t.AgentToolUse(
            session_id=SID, time=NOW, tool_use_id="tu_1", name="grep", input={"pattern": "5\\d\\d"}
        ),
        t.AgentToolResult(
            session_id=SID, time=NOW, tool_use_id="tu_1", content="3 matches", ref="out/grep.txt"
        ),
        t.ToolDenied(session_id=SID, time=NOW, tool_use_id="tu_2", name="sql", allowed=["grep"]),
        t.ToolConfirmationRequested(
            session_id=SID,
            time=NOW,
            tool_use_id="tu_4",
            name="rollback",
            input={"deploy": "dpl-1"},
            kind="service",
            answer_subject=f"sw.s.{SID}.in.confirm.tu_4",
            timeout_s=600.0,
        ),
        t.ToolConfirmationAnswered(
            session_id=SID,
            time=NOW,
            tool_use_id="tu_4",
            name="rollback",
            result="deny",
            deny_message="no",
            by="ana",
        ),
        t.ThreadInterrupted(session_id=SID, time=NOW, thread_id="thr_1", reason="wrong direction", by="ana"),
        t.CustomToolUse(
            session_id=SID,
            time=NOW,
            tool_use_id="tu_3",
            name="approve",
            input={"change": "rollback"},
            result_subject=f"sw.s.{SID}.in.tool_result.tu_3",
        ),
        t.ToolSourceFailed(
            session_id=SID, time=NOW, kind="mcp", source="deployapi", message="it did not start"
        ),
        CustomToolResult(session_id=SID, custom_tool_use_id="tu_3", content="approved"),
        t.ThreadMessageSent(session_id=SID, time=NOW, to_thread_id="thr_1", to_agent="logs", content="go"),
        t.ThreadMessageReceived(
            session_id=SID, time=NOW, from_thread_id="thr_1", from_agent="logs", content="ok"
        ),
        t.ModelRequestStart(session_id=SID, time=NOW, model="claude-sonnet-4-5", span_id="a" * 16),
        t.ModelRequestEnd(
            session_id=SID, time=NOW, model="claude-sonnet-4-5", usage=USAGE, duration_ms=812.5
        ),
        t.FileWritten(
            session_id=SID,
            time=NOW,
            path="report.md",
            size=12,
            digest="SHA-256=abc",
            provenance=Provenance(session_id=SID, thread_id="thr_1", agent="lead", tool_call_id="tu_9"),
        ),
        t.MessageRejected(session_id="", time=NOW, subject="sw.submit", actor="lead", reason="bad", size=3),
        GradeRequest(
            session_id=SID,
            outcome_id="out_1",
            iteration=1,
            outcome=OUTCOME,
            task="investigate",
            answer="done",
        ),
        GradeVerdict(
            session_id=SID,
            outcome_id="out_1",
            iteration=1,
            result="needs_revision",
            explanation="1 of 2 criteria failed",
            criteria=[VERDICT],
            usage=USAGE,
        ),
        WebhookDelivery(
            session_id=SID,
            endpoint=0,
            url="https://example.com/hook",
            event_id="whevt_1",
            event_type="session.status_idled",
            created_at=NOW,
            data={"stop_reason": "end_turn"},
        ),
        t.OutcomeEvaluationStart(session_id=SID, time=NOW, outcome_id="out_1", iteration=1),
        t.OutcomeEvaluationEnd(
            session_id=SID, time=NOW, outcome_id="out_1", iteration=1, result="satisfied", criteria=[VERDICT]
        ),
        t.WebhookDelivered(
            session_id=SID,
            time=NOW,
            url="https://x",
            event_id="e",
            event_type="t",
            attempt=1,
            status_code=204,
        ),
        t.WebhookFailed(
            session_id=SID, time=NOW, url="https://x", event_id="e", event_type="t", attempt=2, error="503"
        ),
        t.WebhookEndpointDisabled(
            session_id=SID, time=NOW, url="https://x", reason="20 failures", failures=20
        ),
        t.WebhookDeliverySkipped(
            session_id=SID, time=NOW, url="https://x", event_id="e", event_type="t", reason="refused"
        ),
        t.UserEvent(
            session_id=SID,
            time=NOW,
            thread_id="lead",
            agent="user",
            event_type="user.message",
            payload={"content": [{"type": "text", "text": "Why did build 2 fail?"}]},
        ),
    ]
}


def _any_decoder() -> Decoder[Message]:
    union = PUBLIC_MESSAGES[0]
    for cls in PUBLIC_MESSAGES[1:]:
        union = union | cls  # type: ignore[assignment]
    return Decoder(union)


def test_every_public_message_has_a_sample() -> None:
    missing = [tag_of(cls) for cls in PUBLIC_MESSAGES if cls not in SAMPLES]
    assert not missing, f"add a sample for {missing}"


@pytest.mark.parametrize("cls", PUBLIC_MESSAGES, ids=tag_of)
def test_round_trip(cls: type[Message]) -> None:
    sample = SAMPLES[cls]
    data = encode(sample)
    assert json.loads(data)["type"] == tag_of(cls)
    assert _any_decoder().decode(data) == sample
    assert Decoder(cls).decode(data) == sample


def test_tags_are_dotted_and_versioned() -> None:
    for cls in PUBLIC_MESSAGES:
        tag = tag_of(cls)
        noun_verb, _, version = tag.rpartition(".")
        assert "." in noun_verb, tag
        assert version.startswith("v"), tag
        assert version[1:].isdigit(), tag


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.v1.json")), ids=lambda p: p.stem)
def test_old_version_fixture_decodes(path: Path) -> None:
    """Payloads written by an earlier producer (only the fields v1 had) still decode, with defaults."""
    decoded = _any_decoder().decode(path.read_bytes())
    assert tag_of(type(decoded)) == path.name.removesuffix(".json")
    assert decoded.session_id == SID
    assert decoded.msg_id  # filled by the default factory when the producer sent none


def test_unknown_fields_from_newer_producers_are_ignored() -> None:
    decoded = _any_decoder().decode((FIXTURES / "from-a-newer-version.json").read_bytes())
    assert decoded == Delegation(
        session_id=SID, msg_id=decoded.msg_id, thread_id="thr_2", agent="metrics", task="p99 latency?"
    )


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (b"not json", "malformed"),
        (
            b'{"type": "session.submit.v9", "session_id": "s", "task": "x"}',
            "Invalid value 'session.submit.v9'",
        ),
        (
            b'{"type": "session.submit.v1", "session_id": "s", "task": 42}',
            "Expected `str`, got `int` - at `$.task`",
        ),
        (b'{"type": "session.submit.v1", "session_id": "s"}', "missing required field `task`"),
    ],
)
def test_decode_errors_name_the_problem(payload: bytes, expected: str) -> None:
    with pytest.raises(MessageRejected) as info:
        _any_decoder().decode(payload, subject="sw.submit")
    assert expected in str(info.value)
    assert "sw.submit" in str(info.value)


def test_size_limit() -> None:
    decoder: Decoder[SessionSubmit] = Decoder(SessionSubmit, max_bytes=100)
    with pytest.raises(MessageTooLarge, match=r"payload of \d+ bytes is over the 100-byte limit"):
        decoder.decode(encode(SessionSubmit(session_id=SID, task="x" * 100)))


def test_ids_sort_by_time_and_are_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    ids = [new_id("ses") for _ in range(50)]
    assert all(len(i) == 30 and i.startswith("ses_") for i in ids)
    assert all(c in "0123456789abcdefghijklmnopqrstuv" for i in ids for c in i[4:])
    assert len(set(ids)) == 50
    clock = iter([1_700_000_000_000_000_000 + step * 1_000_000 for step in range(100)])
    monkeypatch.setattr("schemas.ids.time.time_ns", lambda: next(clock))
    made = [new_id("ses") for _ in range(100)]  # one millisecond apart
    assert made == sorted(made)


def test_usage_adds_up() -> None:
    assert (USAGE + USAGE).input_tokens == 20
    assert (USAGE + USAGE).cost_usd == pytest.approx(0.0024)


def test_a_stored_session_record_keeps_decoding() -> None:
    """The session directory's records are plain JSON objects (no tag): an early one still decodes."""
    stored = b"""{"session_id": "ses_1", "team": {"name": "incident", "lead": {"name": "lead"}},
                 "task": "investigate", "status": "idle", "started": 1700000000.5}"""
    record = msgspec.json.decode(stored, type=SessionRecord)
    assert (record.team.lead.name, record.status, record.started, record.threads) == (
        "lead",
        "idle",
        1700000000.5,
        0,
    )
    assert list(json.loads(encode(record))) == [
        "session_id",
        "team",
        "task",
        "status",
        "stop_reason",
        "started",
        "ended",
        "threads",
        "usage",
        "turn",
        "turn_text",
        "turn_started",
    ]


# --- the trace query protocol (<root>.api.trace) ----------------------------------------------------

ORIGIN = t.FileOriginReport(
    path="report.md",
    size=12,
    digest="SHA-256=abc",
    written=NOW,
    thread_id="thr_0",
    agent="lead",
    tool_call=t.ToolCallRef(tool_use_id="tu_9", name="write_file"),
    task="investigate",
    earlier_writes=0,
    sources=[
        t.OriginSource(
            tool_use_id="tu_1",
            name="delegate",
            input={"agent": "logs"},
            called=NOW,
            returned=NOW,
            is_error=False,
            result="3 errors",
            thread=t.ThreadRef(thread_id="thr_1", agent="logs"),
            sources=[
                t.OriginSource(
                    tool_use_id="tu_2",
                    name="grep",
                    input={},
                    called=NOW,
                    returned=NOW,
                    is_error=False,
                    result="x",
                )
            ],
        )
    ],
)
QUERIES = [
    t.SessionsQuery(limit=5),
    t.EventsQuery(session_id=SID, thread_id="thr_1", kind="agent.tool_use"),
    t.ProvenanceQuery(session_id=SID, path="report.md"),
]
ANSWERS = [
    t.SessionsAnswer(
        sessions=[
            t.SessionSummary(
                session_id=SID, started=NOW, last_event=NOW, threads=3, cost_usd=0.01, status="idle"
            )
        ]
    ),
    t.EventsAnswer(events=[SAMPLES[t.AgentMessage], SAMPLES[t.FileWritten]]),  # type: ignore[list-item]
    t.ProvenanceAnswer(origin=ORIGIN),
    t.QueryFailed(error=ErrorInfo(kind="invalid_query", message="bad")),
]


@pytest.mark.parametrize(
    ("union", "samples"), [(t.TraceQuery, QUERIES), (t.TraceAnswer, ANSWERS)], ids=["queries", "answers"]
)
def test_trace_queries_and_answers_round_trip(union: object, samples: list[msgspec.Struct]) -> None:
    assert {type(sample) for sample in samples} == set(union.__args__)  # type: ignore[attr-defined]
    decoder: Decoder[msgspec.Struct] = Decoder(union)
    for sample in samples:
        data = encode(sample)
        assert json.loads(data)["type"].startswith("trace.")
        assert json.loads(data)["type"].endswith(".v1")
        assert decoder.decode(data) == sample


# --- team files -------------------------------------------------------------------------------------

GOOD_TEAM = """\
name = "incident"
model = "claude-sonnet-4-5"

[lead]
name = "lead"
system = \"\"\"
You coordinate.
= not a key =
\"\"\"

[[agents]]
name = "logs"
description = "Searches logs"
tools = ["grep", "read_file"]

[[agents]]
name = "metrics"
max_turns = 8
memory = [{ store = "runbooks", access = "read_only" }]
"""


def test_good_team_parses() -> None:
    team = parse_team(GOOD_TEAM, source="team.toml")
    assert [a.name for a in team.agents] == ["logs", "metrics"]
    assert team.agent("metrics").max_turns == 8
    assert team.model_of(team.agents[0]) == "claude-sonnet-4-5"
    with pytest.raises(KeyError, match=r"agent 'metrcs' is not in team 'incident' \(known: logs, metrics\)"):
        team.agent("metrcs")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("max_turns = 8", 'max_turns = "eight"'),
            "team.toml:18: agents[1].max_turns: expected int, got str 'eight'",
        ),
        (
            ('tools = ["grep", "read_file"]', 'toolz = ["grep"]'),
            "team.toml:14: agents[0].toolz: unknown field 'toolz' = ['grep'] (did you mean 'tools'?)",
        ),
        (("max_turns = 8", "max_turns = 0"), "team.toml:18: agents[1].max_turns: expected int >= 1, got 0"),
        (('name = "logs"', 'name = "Logs"'), "team.toml:12: agents[0].name: expected str matching regex"),
        (('name = "metrics"', 'name = "logs"'), "team.toml: agent name 'logs' is used twice"),
        (
            ('access = "read_only"', 'access = "write"'),
            "team.toml:19: agents[1].memory[0].access: "
            "expected one of 'read_only', 'read_write', got 'write'",
        ),
        (('[lead]\nname = "lead"', "[lead]"), "team.toml:4: lead.name: missing required field 'name'"),
        (
            ('[[agents]]\nname = "logs"', '[[agents]\nname = "logs"'),
            "team.toml:11: not valid TOML: Expected ']]'",
        ),
    ],
)
def test_team_errors_name_file_line_path_and_value(edit: tuple[str, str], message: str) -> None:
    text = GOOD_TEAM.replace(*edit, 1)
    assert text != GOOD_TEAM
    with pytest.raises(SpecError) as info:
        parse_team(text, source="team.toml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_team_roster_is_capped_at_20() -> None:
    text = 'name = "big"\n[lead]\nname = "lead"\n' + "".join(
        f'[[agents]]\nname = "a{i}"\n' for i in range(21)
    )
    with pytest.raises(SpecError, match=r"agents: expected array of length <= 20"):
        parse_team(text, source="big.toml")


def test_spec_error_fields() -> None:
    with pytest.raises(SpecError) as info:
        parse_team(GOOD_TEAM.replace("max_turns = 8", 'max_turns = "eight"'), source="team.toml")
    assert (info.value.source, info.value.line, info.value.path, info.value.value) == (
        "team.toml",
        18,
        "agents[1].max_turns",
        "eight",
    )


def test_json_schema_is_a_root_schema_of_every_message() -> None:
    document = json_schema()
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    defs = document["$defs"]
    names = [ref["$ref"].removeprefix("#/$defs/") for ref in document["oneOf"]]
    tags = {defs[name]["properties"]["type"]["const"]: name for name in names}
    assert {tag_of(cls) for cls in PUBLIC_MESSAGES} <= set(tags)
    assert document["discriminator"]["mapping"] == {tag: f"#/$defs/{name}" for tag, name in tags.items()}
    assert tags["session.submit.v1"] == "SessionSubmitV1"
    assert tags["span.model_request_end.v1"] == "SpanModelRequestEndV1"
    assert {"TeamSpec", "Usage", "ErrorInfo"} <= set(defs)
    assert defs["SessionSubmitV1"]["properties"]["type"]["const"] == "session.submit.v1"
    msgspec.json.encode(document)  # serialisable as is


def test_one_message_and_the_team_file_are_root_schemas_too() -> None:
    one = json_schema("thread.delegate.v1")
    assert one["$ref"] == "#/$defs/ThreadDelegateV1"
    assert set(one["$defs"]) == {"ThreadDelegateV1"}  # only what it needs
    team = json_schema(team=True)
    assert team["$ref"] == "#/$defs/TeamSpec"
    assert {"AgentSpec", "McpServer", "Outcome"} <= set(team["$defs"])
    with pytest.raises(StaffworkError, match=r"no message with tag 'thread.delegate.v7' \(known: "):
        json_schema("thread.delegate.v7")


def test_required_is_what_a_producer_always_sends() -> None:
    defs = json_schema()["$defs"]
    # outside callers send these: only fields without a default are required, in what they contain too
    assert defs["SessionSubmitV1"]["required"] == ["type", "task"]
    assert defs["SessionCancelV1"]["required"] == ["type", "session_id"]
    assert defs["UserCustomToolResultV1"]["required"] == ["type", "session_id", "custom_tool_use_id"]
    assert defs["TeamSpec"]["required"] == ["name", "lead"]
    assert defs["Outcome"]["required"] == []  # in a submit's team, and in the lead's grade request
    # staffwork sends these, and msgspec encodes every field
    for name in ("SessionResultV1", "SessionStatusIdleV1", "ThreadReplyV1", "Usage", "ErrorInfo"):
        assert defs[name]["required"] == list(defs[name]["properties"]), name
    # a struct that omits its defaults when encoded requires only the others
    assert defs["Provenance"]["required"] == ["session_id"]


def test_every_property_of_every_message_has_a_description() -> None:
    defs = json_schema()["$defs"]
    missing = [
        f"{name}.{prop}"
        for name, schema in defs.items()
        for prop, value in schema.get("properties", {}).items()
        if not value.get("description", "").strip()
    ]
    assert missing == []
    assert [name for name, schema in defs.items() if not schema.get("description", "").strip()] == []
    submit = defs["SessionSubmitV1"]
    assert submit["description"].startswith("A request to run a team on a task")
    assert submit["properties"]["idempotency_key"]["description"].startswith("the same key twice")
    assert submit["properties"]["msg_id"]["description"].startswith("the message's unique id")  # inherited


def test_times_are_date_times_or_say_they_are_unix_seconds() -> None:
    defs = json_schema()["$defs"]
    assert defs["AgentMessageV1"]["properties"]["time"]["format"] == "date-time"
    assert defs["WebhookDeliveryV1"]["properties"]["created_at"]["format"] == "date-time"
    for prop in ("created", "started", "ended"):
        field = defs["DreamRecord"]["properties"][prop]
        assert field["type"] == "number"
        assert "Unix time, seconds" in field["description"]


def test_a_rubrics_criteria_are_its_list_items_and_paragraphs() -> None:
    def criteria(rubric: str) -> list[str]:
        return Outcome(rubric=rubric).criteria()

    assert criteria("- a\n- b\n") == ["a", "b"]
    assert criteria("\n    - The report names the deploy.\n    - The timeline is in UTC.\n") == [
        "The report names the deploy.",
        "The timeline is in UTC.",
    ]  # a TOML multi-line string indented with the file
    assert criteria("# Rubric\n- The report names the deploy\nthat caused it.\n\nUnder 500 words.\n") == [
        "The report names the deploy that caused it.",
        "Under 500 words.",
    ]
    assert criteria("1. one\n   continued\n2) two") == ["one continued", "two"]
    assert criteria("Just one paragraph\nover two lines.") == ["Just one paragraph over two lines."]


def test_outcome_mistakes_in_a_team_file_name_the_line() -> None:
    text = 'name = "t"\n[lead]\nname = "lead"\n[outcome]\nmax_iterations = 30\nrubric = "- x"\n'
    with pytest.raises(SpecError) as caught:
        parse_team(text, source="team.toml")
    assert str(caught.value).startswith("team.toml:5: outcome.max_iterations: expected int <= 20")
    bad_regex = (
        'name = "t"\n[lead]\nname = "lead"\n[[outcome.checks]]\nname = "c"\nkind = "matches"\npattern = "("\n'
    )
    with pytest.raises(
        SpecError, match=r"team\.toml:4: outcome\.checks\[0\]: check 'c': pattern '\(' is not a regex"
    ):
        parse_team(bad_regex, source="team.toml")
