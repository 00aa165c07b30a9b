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

    #: the agent's name
    agent: str
    #: sessions read in which it ran
    sessions: int = 0
    #: attempts after the first (lead) or follow-ups received (subagent)
    revisions: int = 0
    #: ``revisions / sessions``
    avg_revisions: float = 0.0
    #: its tool calls that failed
    tool_errors: int = 0


class DreamReport(msgspec.Struct, frozen=True, kw_only=True):
    """What a dream read and did. The baseline numbers describe the sessions read, before the dream.

    ``pass_rate`` is the share of sessions with an outcome whose final result was ``satisfied``
    (``None`` when no session had an outcome); ``avg_revisions`` the mean of attempts after the first
    over those sessions.
    """

    #: sessions read
    sessions: int = 0
    #: sessions read that had an outcome
    with_outcome: int = 0
    #: of those, the sessions whose outcome was ``satisfied``
    satisfied: int = 0
    #: ``satisfied / with_outcome``, 0 to 1 (null when no session had an outcome)
    pass_rate: float | None = None
    #: mean attempts after the first, over the sessions with an outcome
    avg_revisions: float | None = None
    #: tool calls that failed, over the sessions read
    tool_errors: int = 0
    #: follow-ups the leads sent, over the sessions read
    follow_ups: int = 0
    #: the baseline of each agent
    agents: list[AgentBaseline] = msgspec.field(default_factory=list)
    #: what the dream changed, one line each ("merged 2 duplicate lines in notes.md", ...)
    changes: list[str] = msgspec.field(default_factory=list)
    #: files in the store it read
    files_in: int = 0
    #: files in the store it wrote
    files_out: int = 0
    #: the model that dreamed
    model: str = ""
    #: tokens and cost of its model calls
    usage: Usage = msgspec.field(default_factory=Usage)


class DreamRecord(msgspec.Struct, kw_only=True):
    """A dream, as kept in the ``<key>_dreams`` KV bucket (key: the dream id)."""

    #: the dream's id (``drm_...``)
    dream_id: str
    #: the memory store it reads
    store: str
    #: the memory store it writes
    output_store: str
    #: True when the output is an existing store the dream was told to write to
    target: bool = False
    #: where the dream is
    status: DreamStatus = "pending"
    #: what a running dream does now
    phase: DreamPhase = ""
    #: when it was requested: Unix time, seconds
    created: float = msgspec.field(default_factory=time.time)
    #: when it started running: Unix time, seconds (0 before)
    started: float = 0.0
    #: when it ended: Unix time, seconds (0 before)
    ended: float = 0.0
    #: the model that dreams
    model: str = ""
    #: what it was told to keep, merge or drop
    instructions: str = ""
    #: the session ids read, oldest first
    sessions: list[str] = msgspec.field(default_factory=list)
    #: what it read and did, once completed
    report: DreamReport | None = None
    #: why it failed, when it did
    error: str = ""


class DreamRequest(Message, frozen=True, kw_only=True, tag="dream.request.v1"):
    """Start a dream of ``store`` over the most recent ``sessions`` sessions (those that started in
    the last ``since_s`` seconds, when given; only those whose team attached the store, with
    ``attached_only``). ``target``: write to this existing store instead of a new one. ``session_id``
    (of :class:`Message`) is unused: a dream belongs to no session."""

    #: unused: a dream belongs to no session
    session_id: str = ""
    #: the dream's id (``drm_...``; empty: generated)
    dream_id: str = ""
    #: the memory store to read
    store: str
    #: the most recent sessions to read, at most 100
    sessions: int = 20
    #: read only sessions that started in the last this many seconds
    since_s: float | None = None
    #: read only sessions whose team attached ``store``
    attached_only: bool = False
    #: the model that dreams (empty: the dreamer's)
    model: str = ""
    #: what to keep, merge or drop, in plain language
    instructions: str = ""
    #: an existing store to write to (empty: a new store)
    target: str = ""
    #: read exactly these sessions, oldest first (at most 100), instead of the most recent ones
    session_ids: list[str] = msgspec.field(default_factory=list)
    #: the name of the new store (empty: ``<store>-dream-<id>``); unused with ``target``
    output: str = ""


class DreamCancel(Message, frozen=True, kw_only=True, tag="dream.cancel.v1"):
    """Stop a dream (published on ``<root>.sys.dream.cancel.<id>`` after its record says so)."""

    #: unused: a dream belongs to no session
    session_id: str = ""
    #: the dream to stop
    dream_id: str
    #: why, in a few words
    reason: str = "canceled"


class DreamAnswer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """The dreamer's reply to a :class:`DreamRequest`: the dream's record (``pending``), or why not."""

    #: the dream's record (``pending``), when it was accepted
    record: DreamRecord | None = None
    #: why it was refused
    error: str = ""
