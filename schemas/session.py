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

    session_id: Token = msgspec.field(default_factory=_session_id)
    task: Annotated[str, msgspec.Meta(min_length=1)]
    team: str = ""
    team_spec: TeamSpec | None = None
    inputs: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    deadline_s: Annotated[float, msgspec.Meta(gt=0)] | None = None
    #: the same key twice starts one session (the session id is derived from it)
    idempotency_key: str = ""
    #: overrides the team's outcome for this session
    outcome: Outcome | None = None
    #: overrides the team's webhooks for this session
    webhooks: list[WebhookSpec] | None = None


class SubmitReply(Message, frozen=True, kw_only=True, tag="session.submit_reply.v1"):
    """The answer to a request on ``<root>.api.submit``: the session id, or why it was refused."""

    accepted: bool
    duplicate: bool = False
    error: ErrorInfo | None = None
    #: what may stop an accepted session from finishing well (an agent no worker serves right now)
    warnings: list[str] = msgspec.field(default_factory=list)
    #: where to watch: ``<root>.s.<session>.evt.>`` (trace), ``<root>.s.<session>.out.result``
    events_subject: str = ""
    result_subject: str = ""


class SessionAccepted(Message, frozen=True, kw_only=True, tag="session.accepted.v1"):
    """A lead took the session and validated its team."""

    team: str
    lead: str


class SessionResult(Message, frozen=True, kw_only=True, tag="session.result.v1"):
    """The session's deliverable: the final text, the report's path, every file written, totals."""

    status: SessionState
    final_text: str = ""
    report_path: str = ""
    files: list[str] = msgspec.field(default_factory=list)
    usage: Usage = msgspec.field(default_factory=Usage)
    error: ErrorInfo | None = None
    #: the outcome's final result and every iteration's verdict, when the session had one
    outcome: OutcomeReport | None = None


class SessionCancel(Message, frozen=True, kw_only=True, tag="session.cancel.v1"):
    """Stop a session (or, with ``thread_id``, one thread of it). No further model calls are made."""

    reason: str = ""
    thread_id: str = ""


class SessionRecord(msgspec.Struct, kw_only=True):
    """A session's entry in the session directory (KV ``<key>_sessions``, keyed by session id).

    The gateway or the lead writes it; subagent workers read the team from it, every role checks the
    status, and ``staffwork sessions`` lists it. Plain JSON (no ``type`` tag): records already stored
    must keep decoding, so fields are only ever added with defaults.
    """

    session_id: str
    team: TeamSpec
    task: str
    status: SessionState = "running"
    stop_reason: str = ""
    started: float = msgspec.field(default_factory=time.time)
    ended: float = 0.0  # when the lead finished it (0 while it runs)
    threads: int = 0  # the lead's thread and the subagent threads it started
    usage: Usage = msgspec.field(default_factory=Usage)
