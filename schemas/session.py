"""Session lifecycle messages: what starts a session, what it reports, how it ends."""

from __future__ import annotations

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
    #: where to watch: ``<root>.s.<session>.evt.>`` (trace), ``<root>.s.<session>.out.result``
    events_subject: str = ""
    result_subject: str = ""


class SessionAccepted(Message, frozen=True, kw_only=True, tag="session.accepted.v1"):
    """A lead took the session and validated its team."""

    team: str
    lead: str


class SessionStatus(Message, frozen=True, kw_only=True, tag="session.status.v1"):
    """The session changed status. ``stop_reason`` says why it stopped when it did."""

    status: SessionState
    stop_reason: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)


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
