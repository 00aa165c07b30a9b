"""The record of an API session (``<workspace>.sesn.<id>`` in ``<key>_api``), shared by the session
endpoints (``sessions.py``) and the events sent to one (``session_events.py``)."""

from __future__ import annotations

from typing import Any

import msgspec

from actors.api.errors import ApiError, not_found
from actors.api.http import Call
from schemas.outcome import Outcome
from schemas.team import TeamSpec

KIND = "sesn"


class DefinedOutcome(msgspec.Struct, frozen=True, kw_only=True):
    outcome_id: str
    description: str
    outcome: Outcome
    #: the session's turn it grades: 0 for the first user.message, n for the n-th follow-up
    turn: int = 0


class ApiSession(msgspec.Struct, kw_only=True):
    """The record of one API session."""

    id: str
    agent: dict[str, Any]  # the snapshot, as shown
    team: TeamSpec
    environment_id: str
    resources: list[dict[str, Any]] = msgspec.field(default_factory=list)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    title: str | None = None
    budget: dict[str, Any] | None = None
    created_at: str
    updated_at: str
    archived_at: str | None = None
    #: a staffwork session was started (its first user.message)
    started: bool = False
    outcome: DefinedOutcome | None = None


async def load_session(call: Call, id: str) -> ApiSession:
    found = await load_for_update(call, id)
    return found[0]


async def load_for_update(call: Call, id: str) -> tuple[ApiSession, int]:
    found = await call.records.get(call.workspace, KIND, id, ApiSession)
    if found is None:
        raise not_found("session", id)
    return found


async def save(call: Call, session: ApiSession, revision: int) -> None:
    if not await call.records.update(call.workspace, KIND, session.id, session, revision):
        raise ApiError(409, f"session {session.id!r} changed while this request updated it; retry")
