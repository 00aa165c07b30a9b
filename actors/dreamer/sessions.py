"""Dreams, step one: which past sessions a dream reads, what it takes from each (outcome verdicts,
tool errors, follow-ups, the final result) and the baseline report (pass rate, revisions per agent).
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
import structlog

from actors.sessions.directory import TERMINAL, SessionDirectory
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import BusError, MessageRejected, StaffworkError
from schemas.dream import (
    AgentBaseline,
    DreamReport,
)
from schemas.session import SessionRecord, SessionResult
from schemas.trace import (
    AgentToolResult,
    AnyTraceEvent,
    EventsAnswer,
    EventsQuery,
    OutcomeEvaluationEnd,
    QueryFailed,
    ThreadMessageSent,
    TraceAnswer,
)

log = structlog.get_logger("staffwork.dreamer")

LESSONS = "lessons.md"
#: the same rejected criteria as a table (criterion, kind, failed, sessions, latest), for sql
LESSONS_TABLE = "lessons.csv"
DREAMER = "dreamer"
COLLECTOR_TIMEOUT = 5.0


class DreamError(StaffworkError):
    """A dream cannot start, or failed."""


class DreamCanceled(DreamError):
    """The dream's record says canceled: stop, write nothing."""


# --- sessions --------------------------------------------------------------------------------------


@dataclass
class SessionDigest:
    """What a dream takes from one past session."""

    session_id: str
    team: str
    lead: str
    task: str
    status: str
    outcome: str = ""  # the outcome's final result ("" without an outcome)
    iterations: int = 0
    verdicts: list[OutcomeEvaluationEnd] = field(default_factory=list)
    tool_errors: list[AgentToolResult] = field(default_factory=list)
    follow_ups: list[ThreadMessageSent] = field(default_factory=list)
    subagents: set[str] = field(default_factory=set)
    final_text: str = ""


async def select_sessions(
    bus: Bus,
    *,
    store: str,
    limit: int,
    since_s: float | None,
    attached_only: bool,
    ids: Sequence[str] = (),
) -> list[SessionRecord]:
    """The most recent ``limit`` finished sessions (started in the last ``since_s`` seconds; whose
    team attached ``store``), oldest first; given ``ids``, exactly those sessions, oldest first."""
    directory = SessionDirectory(bus)
    if ids:
        named = [(id, await directory.get(id)) for id in ids]
        if missing := [id for id, record in named if record is None]:
            raise DreamError(f"no session {missing[0]!r} to dream from")
        return sorted((r for _, r in named if r is not None), key=lambda r: (r.started, r.session_id))
    kv = await bus.kv(bus.subjects.sessions_bucket)
    cutoff = time.time() - since_s if since_s is not None else 0.0
    chosen: list[SessionRecord] = []
    for key in await kv.keys():
        record = await directory.get(key)
        if record is None or record.status not in TERMINAL or record.started < cutoff:
            continue
        if attached_only:
            agents = [record.team.lead, *record.team.agents]
            if not any(m.store == store for agent in agents for m in agent.memory):
                continue
        chosen.append(record)
    chosen.sort(key=lambda r: (r.started, r.session_id))
    return chosen[-limit:] if limit > 0 else []


_event_decoder: Decoder[Any] = Decoder(AnyTraceEvent, max_bytes=4 * 1024 * 1024)
_answer_decoder: msgspec.json.Decoder[TraceAnswer] = msgspec.json.Decoder(TraceAnswer)
_result_decoder = msgspec.json.Decoder(SessionResult)


async def session_events(bus: Bus, session_id: str) -> AsyncIterator[AnyTraceEvent]:
    """A session's trace events: from the collector when one answers on ``<root>.api.trace`` (its
    database keeps sessions past the log stream's max age), else from the log stream itself."""
    query = encode(EventsQuery(session_id=session_id))
    try:
        reply = await bus.request(bus.subjects.api_trace, query, timeout=COLLECTOR_TIMEOUT)
        answer = _answer_decoder.decode(reply)
    except (BusError, msgspec.DecodeError) as exc:  # no collector (no responders), a timeout, garbage
        reason = str(exc)
    else:
        match answer:
            case EventsAnswer(events=events):
                for event in events:
                    yield event
                return
            case QueryFailed(error=error):
                reason = error.message
            case _:
                reason = f"{type(answer).__name__} is no answer to an events query"
    log.debug("dream_events_from_stream", session_id=session_id, reason=reason)
    subject = bus.subjects.events(session_id)
    async for msg in read_subject(bus, bus.subjects.log_stream, subject):
        try:
            yield _event_decoder.decode(msg.data, subject=msg.subject)
        except MessageRejected:
            continue


async def read_session(bus: Bus, record: SessionRecord) -> SessionDigest:
    """A session's digest from its trace events (the collector's, or the log stream's) and its
    stored result."""
    digest = SessionDigest(
        session_id=record.session_id,
        team=record.team.name,
        lead=record.team.lead.name,
        task=record.task,
        status=record.status,
    )
    threads: set[str] = set()
    async for event in session_events(bus, record.session_id):
        match event:
            case OutcomeEvaluationEnd():
                digest.verdicts.append(event)
            case AgentToolResult(is_error=True):
                digest.tool_errors.append(event)
            case ThreadMessageSent(to_thread_id=thread, to_agent=agent):
                digest.subagents.add(agent)
                if thread in threads:  # a second message to a thread: a follow-up
                    digest.follow_ups.append(event)
                threads.add(thread)
    digest.verdicts.sort(key=lambda v: v.iteration)
    digest.iterations = max((v.iteration for v in digest.verdicts), default=0)
    if digest.verdicts:
        digest.outcome = digest.verdicts[-1].result
    stored = await bus.last(bus.subjects.out(record.session_id, "result"))
    if stored:
        with contextlib.suppress(msgspec.DecodeError):
            result = _result_decoder.decode(stored)
            digest.final_text = result.final_text
            if result.outcome is not None:
                digest.outcome = result.outcome.result
                digest.iterations = max(digest.iterations, len(result.outcome.iterations))
    return digest


def baseline(digests: list[SessionDigest]) -> DreamReport:
    """The sessions' numbers: outcome pass rate, revisions (overall and per agent), tool errors."""
    graded = [d for d in digests if d.outcome]
    satisfied = sum(d.outcome == "satisfied" for d in graded)
    sessions: Counter[str] = Counter()
    revisions: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    for digest in digests:
        sessions[digest.lead] += 1
        if digest.outcome:
            revisions[digest.lead] += max(digest.iterations - 1, 0)
        for agent in digest.subagents - {digest.lead}:
            sessions[agent] += 1
        for follow_up in digest.follow_ups:
            revisions[follow_up.to_agent] += 1
        for error in digest.tool_errors:
            errors[error.agent or "?"] += 1
            sessions.setdefault(error.agent or "?", 1)
    agents = [
        AgentBaseline(
            agent=agent,
            sessions=count,
            revisions=revisions[agent],
            avg_revisions=round(revisions[agent] / count, 3) if count else 0.0,
            tool_errors=errors[agent],
        )
        for agent, count in sorted(sessions.items())
    ]
    return DreamReport(
        sessions=len(digests),
        with_outcome=len(graded),
        satisfied=satisfied,
        pass_rate=round(satisfied / len(graded), 3) if graded else None,
        avg_revisions=(
            round(sum(max(d.iterations - 1, 0) for d in graded) / len(graded), 3) if graded else None
        ),
        tool_errors=sum(len(d.tool_errors) for d in digests),
        follow_ups=sum(len(d.follow_ups) for d in digests),
        agents=agents,
    )
