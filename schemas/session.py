"""Session lifecycle messages (what starts a session, what it reports, how it ends) and the session
record every role reads from the session directory."""

from __future__ import annotations

import time
from typing import Annotated, Literal

import msgspec

from schemas.base import ErrorInfo, Message, Token, Usage
from schemas.ids import new_id
from schemas.outcome import Outcome, OutcomeReport
from schemas.team import TeamSpec
from schemas.webhooks import WebhookSpec


def _session_id() -> str:
    return new_id("ses")


SessionState = Literal[
    "pending",
    "running",
    "idle",
    "terminated",
    "canceled",
    "failed",
    "budget_reached",
    "deadline_reached",
]


class SessionSubmit(Message, frozen=True, kw_only=True, tag="session.submit.v1"):
    """A request to run a team on a task: what other systems publish on ``<root>.submit``.

    Give either ``team`` (the name of a registered team) or ``team_spec`` (the whole team inline).
    The submitter may choose ``session_id`` (so it knows the id before any reply); otherwise one is
    generated.
    """

    #: the new session's id, chosen by the submitter (absent: generated, or derived from ``idempotency_key``)
    session_id: Token = msgspec.field(default_factory=_session_id)
    #: what the team is asked to do, in plain language
    task: Annotated[str, msgspec.Meta(min_length=1)]
    #: the name of a registered team (give this or ``team_spec``)
    team: str = ""
    #: the whole team inline (give this or ``team``)
    team_spec: TeamSpec | None = None
    #: paths of files in the session's workspace the team should read
    inputs: list[str] = msgspec.field(default_factory=list)
    #: the caller's own labels; staffwork keeps them with the request (in the log) and does not read them
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    #: how long the session may run, in seconds from its start (absent: the team's deadline)
    deadline_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: the same key twice starts one session (the session id is derived from it)
    idempotency_key: str = ""
    #: overrides the team's outcome for this session
    outcome: Outcome | None = None
    #: overrides the team's webhooks for this session
    webhooks: list[WebhookSpec] | None = None


class SubmitReply(Message, frozen=True, kw_only=True, tag="session.submit_reply.v1"):
    """The answer to a request on ``<root>.api.submit``: the session id, or why it was refused."""

    #: whether a session was started (or already existed, see ``duplicate``)
    accepted: bool
    #: the session already existed (the same ``session_id`` or ``idempotency_key``): nothing new was started
    duplicate: bool = False
    #: why the request was refused, when ``accepted`` is false
    error: ErrorInfo | None = None
    #: what may stop an accepted session from finishing well (an agent no worker serves right now)
    warnings: list[str] = msgspec.field(default_factory=list)
    #: where to watch: ``<root>.s.<session>.evt.>`` (trace), ``<root>.s.<session>.out.result``
    events_subject: str = ""
    #: where the session's ``session.result.v1`` will be: ``<root>.s.<session>.out.result``
    result_subject: str = ""


class SessionAccepted(Message, frozen=True, kw_only=True, tag="session.accepted.v1"):
    """A lead took the session and validated its team."""

    #: the name of the team that runs the session
    team: str
    #: the name of the team's lead agent
    lead: str


class SessionMessage(Message, frozen=True, kw_only=True, tag="session.message.v1"):
    """A follow-up to an idle session: the lead takes another turn with everything from the earlier
    ones (its own history and its specialists' threads). Sent on ``<root>.api.message`` (request/reply,
    answered with ``session.submit_reply.v1``); the turn ends with its own ``session.result.v1``."""

    #: the session to continue
    session_id: Token
    #: the follow-up, in plain language
    text: Annotated[str, msgspec.Meta(min_length=1)]
    #: which turn this is: 1 for the first follow-up, then 2... (the same turn twice is one follow-up)
    turn: Annotated[int, msgspec.Meta(ge=1)]
    #: paths of further files in the session's workspace the team should read
    inputs: list[str] = msgspec.field(default_factory=list)
    #: the outcome this turn is graded against (absent: none)
    outcome: Outcome | None = None
    #: how long the turn may run, in seconds from its start (absent: the team's deadline)
    deadline_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: the caller's own labels; kept in the log, not read
    metadata: dict[str, str] = msgspec.field(default_factory=dict)


class SessionResult(Message, frozen=True, kw_only=True, tag="session.result.v1"):
    """The deliverable of a session's turn: the final text, the report's path, every file written,
    totals. One per turn: the submit's (turn 0), then one per ``session.message.v1``."""

    #: how the turn ended (``idle``: the session can take a follow-up)
    status: SessionState
    #: the turn this result ends: 0 for the submit, n for the n-th follow-up
    turn: int = 0
    #: the lead's final answer
    final_text: str = ""
    #: the path of the report in the session's workspace ("" when none was written)
    report_path: str = ""
    #: paths of every file written to the session's workspace
    files: list[str] = msgspec.field(default_factory=list)
    #: tokens and cost of every model call of the session, all threads together
    usage: Usage = msgspec.field(default_factory=Usage)
    #: why the session failed, when it did
    error: ErrorInfo | None = None
    #: the outcome's final result and every iteration's verdict, when the session had one
    outcome: OutcomeReport | None = None


class SessionCancel(Message, frozen=True, kw_only=True, tag="session.cancel.v1"):
    """Stop a session: no further model calls are made, and its result says ``canceled``."""

    #: why, in a few words (shown in the trace and the result)
    reason: str = ""
    #: reserved: a cancel always ends the whole session (to stop one thread, send ``session.interrupt.v1``)
    thread_id: str = ""


class SessionInterrupt(Message, frozen=True, kw_only=True, tag="session.interrupt.v1"):
    """Stop work in progress without ending the session, on ``<root>.s.<session>.ctl``.

    An interrupted thread closes its pending tool calls with an error result, records that it was
    interrupted and idles: it can take a follow-up. Without ``thread_id`` every thread stops, the
    lead's turn included, and the session goes ``idle`` (its turn's result says ``interrupted``).
    A thread that is not working when the interrupt arrives is left as it is."""

    #: the thread to stop ("" for every thread of the session, the lead's turn included)
    thread_id: str = ""
    #: why, in a few words (shown in the trace and to the thread's model)
    reason: str = ""
    #: who interrupts (a user name, ``api:<workspace>``...), kept in the trace
    by: str = ""


class SessionRecord(msgspec.Struct, kw_only=True):
    """A session's entry in the session directory (KV ``<key>_sessions``, keyed by session id).

    The gateway or the lead writes it; subagent workers read the team from it, every role checks the
    status, and ``staffwork sessions`` lists it. Plain JSON (no ``type`` tag): records already stored
    must keep decoding, so fields are only ever added with defaults.
    """

    #: the session's id
    session_id: str
    #: the effective team: the registered or inline team the session runs
    team: TeamSpec
    #: what the team was asked to do
    task: str
    #: the session's state
    status: SessionState = "running"
    #: why it stopped, once it has (``end_turn``, ``budget_reached``...)
    stop_reason: str = ""
    #: when the session started: Unix time, seconds
    started: float = msgspec.field(default_factory=time.time)
    #: when the lead finished it: Unix time, seconds (0 while it runs)
    ended: float = 0.0
    #: the lead's thread and the subagent threads it started
    threads: int = 0
    #: tokens and cost so far, all threads together
    usage: Usage = msgspec.field(default_factory=Usage)
    #: the turn the session is on: 0 for the submit's, n once the n-th follow-up was accepted
    turn: int = 0
    #: what the current turn's follow-up said ("" on turn 0: see ``task``)
    turn_text: str = ""
    #: when the current turn was accepted: Unix time, seconds (0 on turn 0: see ``started``)
    turn_started: float = 0.0
