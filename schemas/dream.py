"""Dreams: a batch job that reads a memory store and past sessions and writes a curated copy.

A dream (:class:`DreamRecord`, id ``drm_...``) merges duplicate entries, keeps the latest value of an
entry that changed and adds lessons from the sessions it read; it writes a new store (or, when told,
an existing one), never its input. Its status goes ``pending → running → completed | failed |
canceled`` (cancel works until it starts writing). Its :class:`DreamReport` states the baseline of
the sessions it read, so successive dreams' reports show whether sessions did better.
"""

from __future__ import annotations

import time
from typing import Literal

import msgspec

from schemas.base import Message, Usage

DreamStatus = Literal["pending", "running", "completed", "failed", "canceled"]
#: a running dream is ``reading`` (the store and the sessions), ``dreaming`` (merging, or the model's
#: call) or ``writing`` its output; once ``writing``, it can no longer be canceled
DreamPhase = Literal["", "reading", "dreaming", "writing"]

DREAM_FINAL: frozenset[str] = frozenset({"completed", "failed", "canceled"})

#: a dream reads at most this many sessions (as Anthropic's dreams do)
MAX_DREAM_SESSIONS = 100


class AgentBaseline(msgspec.Struct, frozen=True, kw_only=True):
    """One agent across the sessions a dream read.

    ``revisions``: for a team's lead, the outcome's attempts after the first (the grader sent the
    deliverable back); for a subagent, the follow-ups the lead sent to its threads (it was asked
    again). ``avg_revisions`` is ``revisions / sessions``.
    """

    agent: str
    sessions: int = 0
    revisions: int = 0
    avg_revisions: float = 0.0
    tool_errors: int = 0


class DreamReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a dream read and did. The baseline numbers describe the sessions read, before the dream.

    ``pass_rate`` is the share of sessions with an outcome whose final result was ``satisfied``
    (``None`` when no session had an outcome); ``avg_revisions`` the mean of attempts after the first
    over those sessions.
    """

    sessions: int = 0
    with_outcome: int = 0
    satisfied: int = 0
    pass_rate: float | None = None
    avg_revisions: float | None = None
    tool_errors: int = 0
    follow_ups: int = 0
    agents: list[AgentBaseline] = msgspec.field(default_factory=list)
    #: what the dream changed, one line each ("merged 2 duplicate lines in notes.md", ...)
    changes: list[str] = msgspec.field(default_factory=list)
    files_in: int = 0
    files_out: int = 0
    model: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)


class DreamRecord(msgspec.Struct, kw_only=True):
    """A dream, as kept in the ``<key>_dreams`` KV bucket (key: the dream id)."""

    dream_id: str
    store: str
    output_store: str
    #: True when the output is an existing store the dream was told to write to
    target: bool = False
    status: DreamStatus = "pending"
    phase: DreamPhase = ""
    created: float = msgspec.field(default_factory=time.time)
    started: float = 0.0
    ended: float = 0.0
    model: str = ""
    instructions: str = ""
    #: the session ids read, oldest first
    sessions: list[str] = msgspec.field(default_factory=list)
    report: DreamReport | None = None
    error: str = ""


class DreamRequest(Message, frozen=True, kw_only=True, tag="dream.request.v1"):
    """Start a dream of ``store`` over the most recent ``sessions`` sessions (those that started in
    the last ``since_s`` seconds, when given; only those whose team attached the store, with
    ``attached_only``). ``target``: write to this existing store instead of a new one. ``session_id``
    (of :class:`Message`) is unused: a dream belongs to no session."""

    session_id: str = ""
    dream_id: str = ""
    store: str
    sessions: int = 20
    since_s: float | None = None
    attached_only: bool = False
    model: str = ""
    instructions: str = ""
    target: str = ""


class DreamCancel(Message, frozen=True, kw_only=True, tag="dream.cancel.v1"):
    """Stop a dream (published on ``<root>.sys.dream.cancel.<id>`` after its record says so)."""

    session_id: str = ""
    dream_id: str
    reason: str = "canceled"


class DreamAnswer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The dreamer's reply to a :class:`DreamRequest`: the dream's record (``pending``), or why not."""

    record: DreamRecord | None = None
    error: str = ""
