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


class SessionResult(Message, frozen=True, kw_only=True, tag="session.result.v1"):
    """The session's deliverable: the final text, the report's path, every file written, totals."""

    #: how the session ended
    status: SessionState
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
    #: reserved for stopping one thread of the session; not honoured yet: the whole session stops
    thread_id: str = ""


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
