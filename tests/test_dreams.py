"""Dreams over scripted past sessions: the offline merge and lessons, the baseline report, the input
store left untouched, cancel mid-run leaving no store behind, and the dreamer actor."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest
from nats.aio.client import Client as NATS

from actors.agent.models.base import ModelRequest, ModelResponse
from actors.agent.models.offline import OfflineModel
from actors.agent.models.scripted import ScriptedModel, calls
from actors.dreamer.actor import DreamerService, DreamSchedule, request_dream
from actors.dreamer.curation import lessons, merge_lines
from actors.dreamer.dream import Dreamer, cancel_dream, wait_dream
from actors.dreamer.sessions import LESSONS, DreamError
from actors.sessions.directory import SessionDirectory
from bus.connection import Bus
from bus.direct import read_subject
from bus.memory import Memory
from schemas.base import Usage
from schemas.dream import DreamRequest
from schemas.memory import MAX_MEMORY_BYTES, Writer
from schemas.outcome import CriterionVerdict
from schemas.team import DEFAULT_MODEL, AgentSpec, MemoryAttachment, TeamSpec
from schemas.trace import (
    AgentToolResult,
    ModelRequestEnd,
    ModelRequestStart,
    OutcomeEvaluationEnd,
    ThreadMessageSent,
)
from tests.helpers import BlockingModel, NatsServer, collector, run_cli, running_actors

USER = Writer(kind="user", user="alice")
TEAM = TeamSpec(
    name="ops",
    lead=AgentSpec(name="lead", memory=[MemoryAttachment(store="notes")]),
    agents=[AgentSpec(name="logs")],
)
DATES = "The timeline is in UTC."
CAUSE = "The report names the deploy."


async def _session(bus: Bus, sid: str, verdicts: list[tuple[str, list[str]]], *, errors: int = 0) -> None:
    """A finished session: one verdict per attempt (result, failed criteria), tool errors of the logs
    agent, and a follow-up to its thread after each rejected attempt."""
    directory = SessionDirectory(bus)
    await directory.start(sid, TEAM, f"investigate {sid}")
    lead: dict[str, Any] = {"session_id": sid, "thread_id": "lead", "agent": "lead"}
    await bus.emit(ThreadMessageSent(to_thread_id=f"{sid}-t1", to_agent="logs", content="look", **lead))
    for n in range(errors):
        await bus.emit(
            AgentToolResult(
                session_id=sid,
                thread_id=f"{sid}-t1",
                agent="logs",
                tool_use_id=f"tu{n}",
                name="grep",
                is_error=True,
                content=f"grep: /var/log/app.log: No such file ({sid})",
            )
        )
    for iteration, (result, failed) in enumerate(verdicts, start=1):
        criteria = [
            CriterionVerdict(criterion=c, kind="rubric", status="failed", explanation=f"{c} not met ({sid})")
            for c in failed
        ]
        await bus.emit(
            OutcomeEvaluationEnd(
                session_id=sid,
                thread_id="grader",
                agent="grader",
                outcome_id="out_1",
                iteration=iteration,
                result=result,  # type: ignore[arg-type]
                criteria=criteria,
            )
        )
        if result == "needs_revision":
            await bus.emit(
                ThreadMessageSent(to_thread_id=f"{sid}-t1", to_agent="logs", content="dates in UTC", **lead)
            )
    await directory.set_status(sid, "idle", ended=time.time(), threads=2, usage=Usage())


@pytest.fixture
async def store(bus: Bus) -> Memory:
    memory = Memory(bus)
    await memory.create("notes")
    await memory.write("notes", "facts.md", "db: pg12\nregion: eu\ndb: pg15\nregion: eu\n", writer=USER)
    await memory.write(
        "notes", "runbook.md", "# Runbook\n\nrestart api\ncheck disk\nrestart api\n", writer=USER
    )
    await memory.write("notes", "copy.md", "# Runbook\n\nrestart api\ncheck disk\n", writer=USER)
    await _session(bus, "ses_a", [("needs_revision", [DATES, CAUSE]), ("satisfied", [])], errors=2)
    await _session(bus, "ses_b", [("needs_revision", [DATES]), ("max_iterations_reached", [DATES])], errors=1)
    await _session(bus, "ses_c", [("satisfied", [])])
    return memory


def test_merge_lines() -> None:
    assert merge_lines("a: 1\nb: 2\na: 3\n") == (
        "a: 3\nb: 2\n",
        ["kept the latest value of 1 key(s)", "merged 1 repeated key line(s)"],
    )
    assert merge_lines("x\n\ny\nx\n") == ("x\n\ny\n", ["merged 1 duplicate line(s)"])
    assert merge_lines("prose: with colon\nplain line\nprose: again") == (
        "prose: with colon\nplain line\nprose: again",
        [],
    )  # not every entry is key: value: only exact duplicates are merged


async def test_offline_dream_merges_adds_lessons_and_leaves_the_input_alone(bus: Bus, store: Memory) -> None:
    before = await store.versions("notes")
    record = await Dreamer(bus, OfflineModel()).dream(DreamRequest(store="notes", sessions=10))

    assert record.status == "completed", record.error
    assert record.output_store == f"notes-dream-{record.dream_id[-8:]}"
    assert record.sessions == ["ses_a", "ses_b", "ses_c"]
    assert await store.versions("notes") == before  # the input is never written

    out = record.output_store
    assert [v.path for v in await store.list(out)] == ["copy.md", "facts.md", "lessons.csv", LESSONS]
    assert (await store.read(out, "facts.md")).content == "db: pg15\nregion: eu\n"
    assert (await store.read(out, "copy.md")).content == "# Runbook\n\nrestart api\ncheck disk\n"
    lessons = (await store.read(out, LESSONS)).content
    assert "offline model" in lessons
    assert f"- {DATES!r} failed 3 time(s) in 2 session(s); latest: {DATES} not met (ses_b)" in lessons
    assert f"- {CAUSE!r} failed 1 time(s) in 1 session(s)" in lessons
    assert (
        "- `grep` (agent logs): 3 error(s); latest: grep: /var/log/app.log: No such file (ses_b)" in lessons
    )
    assert "- to logs: 2 follow-up(s); latest: dates in UTC" in lessons
    table = (await store.read(out, "lessons.csv")).content.splitlines()
    assert table[0] == "criterion,kind,failed,sessions,latest"
    assert table[1].startswith(f"{DATES},rubric,3,2,") or table[1].startswith(f'"{DATES}",')
    assert len(table) == 3  # the two rejected criteria, most often rejected first

    report = record.report
    assert report is not None
    assert (report.sessions, report.with_outcome, report.satisfied) == (3, 3, 2)
    assert report.pass_rate == pytest.approx(0.667)
    assert report.avg_revisions == pytest.approx(0.667)  # (1 + 1 + 0) / 3
    assert (report.tool_errors, report.follow_ups) == (3, 2)
    by_agent = {a.agent: a for a in report.agents}
    assert (by_agent["lead"].sessions, by_agent["lead"].revisions) == (3, 2)
    assert (by_agent["logs"].revisions, by_agent["logs"].tool_errors) == (2, 3)
    assert any("runbook.md: same entries as copy.md" in c for c in report.changes)
    assert any("offline model" in c for c in report.changes)
    assert await wait_dream(bus, record.dream_id, timeout=10) == record


async def test_a_dream_can_target_an_existing_store_but_never_its_input(bus: Bus, store: Memory) -> None:
    await store.create("reviewed")
    dreamer = Dreamer(bus, OfflineModel())
    with pytest.raises(DreamError, match="never writes its input"):
        await dreamer.dream(DreamRequest(store="notes", target="notes"))
    record = await dreamer.dream(DreamRequest(store="notes", target="reviewed", sessions=1))
    assert (record.status, record.output_store, record.sessions) == ("completed", "reviewed", ["ses_c"])
    assert LESSONS in [v.path for v in await store.list("reviewed")]


async def test_a_dream_canceled_mid_run_leaves_no_store(bus: Bus, store: Memory) -> None:
    model = BlockingModel()
    dreamer = Dreamer(bus, model)
    record = await dreamer.start(DreamRequest(store="notes"))
    running = asyncio.create_task(dreamer.run(record.dream_id, DreamRequest(store="notes")))
    async with asyncio.timeout(10):
        await model.called.wait()
    assert (await dreamer.book.get(record.dream_id)).status == "running"  # type: ignore[union-attr]
    await cancel_dream(bus, record.dream_id)
    async with asyncio.timeout(10):
        ended = await running
    assert ended.status == "canceled"
    assert record.output_store not in [s.name for s in await store.stores()]
    assert (await cancel_dream(bus, record.dream_id)).status == "canceled"  # again: no change
    end = (await _no_session_events(bus, "span.model_request_end", ModelRequestEnd))[record.dream_id]
    assert end.error is not None
    assert end.error.kind == "CancelledError"  # the canceled call's span ended too


async def test_the_model_dream_writes_what_the_model_answers(bus: Bus, store: Memory) -> None:
    class Answer:
        name = "scripted"
        requests: list[ModelRequest] = []  # noqa: RUF012

        async def complete(self, request: ModelRequest) -> ModelResponse:
            self.requests.append(request)
            files = [{"path": "facts.md", "content": "db: pg15\n"}, {"path": "lessons.md", "content": "x\n"}]
            return calls(("tu1", "write_store", {"files": files, "changes": ["merged facts"]}))

    model = Answer()
    record = await Dreamer(bus, model).dream(DreamRequest(store="notes", instructions="be brief"))
    assert record.status == "completed", record.error
    [request] = model.requests
    assert request.force_tool == "write_store"
    assert "be brief" in request.messages[0].text
    assert "ses_b" in request.messages[0].text
    assert [v.path for v in await store.list(record.output_store)] == ["facts.md", "lessons.md"]
    assert record.report is not None
    assert record.report.changes == ["merged facts"]


async def test_an_invalid_model_answer_fails_the_dream_and_writes_nothing(bus: Bus, store: Memory) -> None:
    class Bad:
        name = "scripted"

        async def complete(self, request: ModelRequest) -> ModelResponse:
            return calls(("tu1", "write_store", {"files": [{"path": "../x", "content": ""}]}))

    record = await Dreamer(bus, Bad()).dream(DreamRequest(store="notes"))
    assert record.status == "failed"
    assert "invalid path '../x'" in record.error
    assert record.output_store not in [s.name for s in await store.stores()]


async def _no_session_events(bus: Bus, kind: str, cls: type[Any]) -> dict[str, Any]:
    """Events of ``kind`` on ``<root>.sys.evt.<kind>`` (where `staffwork tail` reads them), by thread."""
    stored = read_subject(bus, bus.subjects.log_stream, bus.subjects.system_events(kind))
    return {e.thread_id: e for e in [msgspec.json.decode(m.data, type=cls) async for m in stored]}


async def test_a_dreams_model_call_is_traced_as_an_event_of_no_session(bus: Bus, store: Memory) -> None:
    usage = Usage(input_tokens=900, output_tokens=120, cost_usd=0.02)
    answer = calls(
        ("tu1", "write_store", {"files": [{"path": "facts.md", "content": "db: pg15\n"}]}), usage=usage
    )
    model = ScriptedModel({"dreamer": [answer]})  # then no step left: the second dream's call fails
    done = await Dreamer(bus, model).dream(DreamRequest(store="notes"))
    failed = await Dreamer(bus, model).dream(DreamRequest(store="notes", model="claude-x"))
    assert (done.status, failed.status) == ("completed", "failed"), done.error
    model.assert_done()

    starts = await _no_session_events(bus, "span.model_request_start", ModelRequestStart)
    ends = await _no_session_events(bus, "span.model_request_end", ModelRequestEnd)
    assert set(starts) == set(ends) == {done.dream_id, failed.dream_id}  # the dream's id as the thread
    start, end, fail = starts[done.dream_id], ends[done.dream_id], ends[failed.dream_id]
    assert (start.session_id, start.agent, start.model) == ("", "dreamer", DEFAULT_MODEL)
    assert (end.session_id, end.agent, end.model) == ("", "dreamer", DEFAULT_MODEL)
    assert (end.stop_reason, end.usage, end.error) == ("tool_use", usage, None)
    assert end.duration_ms >= 0
    assert fail.model == "claude-x"
    assert fail.error is not None
    assert fail.error.kind == "ModelFatal"
    assert "no step left for agent 'dreamer'" in fail.error.message
    assert "no step left for agent 'dreamer'" in failed.error


async def test_the_dreamer_actor_runs_requested_dreams(bus: Bus, store: Memory) -> None:
    async with running_actors(bus, [DreamerService(OfflineModel())]):
        with pytest.raises(DreamError, match="no memory store 'nope'"):
            await request_dream(bus, DreamRequest(store="nope"))
        pending = await request_dream(bus, DreamRequest(store="notes"))
        assert pending.status == "pending"
        done = await wait_dream(bus, pending.dream_id, timeout=20)
        assert done.status == "completed"
        assert done.report is not None
        assert done.report.sessions == 3


async def test_the_dreamer_dreams_on_a_schedule(bus: Bus, store: Memory) -> None:
    schedule = DreamSchedule(every_s=0.2, request=DreamRequest(store="notes", sessions=3))
    async with running_actors(bus, [DreamerService(OfflineModel(), schedules=[schedule])]):
        async with asyncio.timeout(20):  # two periods pass: two dreams, each into a new store
            while len([s for s in await store.stores() if s.name.startswith("notes-dream-")]) < 2:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    outputs = [s.name for s in await store.stores() if s.name.startswith("notes-dream-")]
    for name in outputs:
        assert LESSONS in [v.path for v in await store.list(name)]


async def test_the_dream_command_prints_the_report_and_the_lineage(
    bus: Bus, store: Memory, nats_server: NatsServer, tmp_path: Path
) -> None:
    async def staffwork(*args: str) -> tuple[int, str, str]:
        return await run_cli(
            "dream", *args, "--nats", nats_server.url, "--root", bus.subjects.root, home=tmp_path
        )

    code, out, err = await staffwork("--store", "notes", "--sessions", "3", "--model", "offline")
    assert code == 0, err
    assert "completed" in out
    assert "baseline: pass rate 67% (2/3 with an outcome)" in out  # ses_a and ses_c satisfied, ses_b not
    code, out, err = await staffwork("report", "notes")
    assert code == 0, err
    assert out.splitlines()[0].startswith("DREAM ")
    assert "notes -> notes-dream-" in out
    code, _, err = await staffwork("--store", "nope")
    assert code == 1
    assert err.strip().startswith("error: no memory store 'nope'")


async def test_a_dream_reads_past_sessions_from_the_collector(
    bus: Bus, nc: NATS, store: Memory, tmp_path: Path
) -> None:
    async with collector(bus, tmp_path / "trace.db") as trace:
        async with asyncio.timeout(20):
            while trace.count("ses_b") == 0 or trace.count("ses_a") == 0:  # noqa: ASYNC110 - another task
                await asyncio.sleep(0.05)
        # the log stream no longer has these sessions' events (past its max age, say): the collector does
        for sid in ("ses_a", "ses_b", "ses_c"):
            await nc.jetstream().purge_stream(bus.subjects.log_stream, subject=bus.subjects.events(sid))
        record = await Dreamer(bus, OfflineModel()).dream(DreamRequest(store="notes", sessions=10))
    assert record.status == "completed", record.error
    assert record.report is not None
    assert (record.report.with_outcome, record.report.satisfied, record.report.tool_errors) == (3, 2, 3)


async def test_a_dream_waiting_for_a_slot_when_the_dreamer_stops_fails_instead_of_hanging(
    bus: Bus, store: Memory
) -> None:
    model = BlockingModel()
    async with running_actors(bus, [DreamerService(model, max_running=1, grace=0.2)]):
        first = await request_dream(bus, DreamRequest(store="notes"))
        second = await request_dream(bus, DreamRequest(store="notes"))  # waits for the only slot
        async with asyncio.timeout(10):
            await model.called.wait()
    # the dreamer has stopped
    async with asyncio.timeout(10):
        ended = [await wait_dream(bus, r.dream_id, timeout=10) for r in (first, second)]
    assert [r.status for r in ended] == ["failed", "failed"]
    assert ended[1].error == "the dreamer stopped before the dream started"


async def test_a_bad_dream_id_is_refused_at_once(bus: Bus, store: Memory) -> None:
    dreamer = Dreamer(bus, OfflineModel())
    for bad in ("a.b", "UPPER", "x y"):
        with pytest.raises(DreamError, match="dream id"):
            await dreamer.start(DreamRequest(store="notes", dream_id=bad))


def test_lessons_keep_one_generation_back_and_stay_under_the_size_limit() -> None:
    first = lessons([], "drm_1")
    second = lessons([], "drm_2", previous=first)
    third = lessons([], "drm_3", previous=second)
    assert third.count("## Earlier lessons") == 1  # never nested
    assert "drm_2" in third
    assert "drm_1" not in third
    huge = lessons([], "drm_4", previous="x" * (MAX_MEMORY_BYTES - 50))
    assert len(huge.encode()) < MAX_MEMORY_BYTES
    assert huge.rstrip().endswith("[... earlier lessons cut]")
