"""The submit gateway: ``<root>.api.submit``, request/reply, answered by every lead process (and
``<root>.api.message`` for follow-ups: :mod:`actors.lead.followups`).

Another system sends a session request as plain JSON (``nats req sw.api.submit '{...}'``) and gets
back ``session.submit_reply.v1``: the session id and the subjects to watch, or an error that names
the problem (malformed JSON and the offending field, an unknown team, a team with an unknown tool).
Accepted requests are published durably on ``<root>.submit`` for the lead pool.

Idempotency: a session id is used once. With ``idempotency_key`` the session id is derived from the
key; a caller may instead choose ``session_id`` (so it can put the inputs first). The same request
twice is one session (``duplicate: true`` on the second answer); the same key or id with another task
or team is refused (``conflict``), never answered as a duplicate that drops the new task.

Inputs: every path in ``inputs`` must be in the session's workspace when the request arrives (or it is
refused, ``missing_input``, naming the paths); files another NATS client put there in the standard
object-store layout are adopted into the session's index, so the agents list them.

Limits: a submit whose session record or request would not fit the server's max payload is refused
(``too_large``) rather than accepted and lost. An agent of the team that no worker serves right now
(its consumer has no waiting pull request) is a warning, not a refusal: it is in the reply's
``warnings`` and in the trace (``session.error``, kind ``no_worker``), and the session is accepted,
because a worker may start later; a delegation no worker takes fails after the lead's claim timeout.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib

import msgspec
import structlog

from actors.lead.followups import FollowUps, accept, refuse
from actors.lead.followups import clip as _clip
from actors.sessions.directory import SessionDirectory
from actors.sessions.teams import UnknownTeam, resolve_team
from bus.actor import BaseActor
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.errors import BusTimeout, MessageRejected, NoResponders
from bus.state import Responder
from bus.subjects import Subjects
from bus.workspace import Workspace
from schemas.base import ErrorInfo
from schemas.errors import SpecError
from schemas.pool import PoolServe, PoolServed
from schemas.session import SessionRecord, SessionSubmit
from schemas.team import TeamSpec
from schemas.trace import SessionErrorEvent

log = structlog.get_logger("staffwork.gateway")

#: bytes left under the server's max payload for what the lead adds to a session's record and first
#: turn (status, times, usage; the input files' names)
PAYLOAD_HEADROOM = 8 * 1024


def session_id_for_key(key: str) -> str:
    digest = hashlib.sha256(key.encode()).digest()[:16]
    return "ses_" + base64.b32hexencode(digest).decode("ascii")[:26].lower()


class SubmitGateway(BaseActor[None]):
    """A service (no consumer): answers ``<root>.api.submit`` from ``on_start`` to ``on_stop``."""

    role = "gateway"

    def __init__(self, *, claim_timeout: float = 120.0) -> None:
        self._decoder: Decoder[SessionSubmit] = Decoder(SessionSubmit, max_bytes=1024 * 1024)
        self._responder: Responder | None = None
        self._followups: Responder | None = None  # <root>.api.message
        self.claim_timeout = claim_timeout  # the lead's: said in the no-worker warning
        self.max_payload = 0

    def consumer(self, subjects: Subjects) -> None:
        return None

    async def on_start(self, bus: Bus) -> None:
        self.bus = bus
        self.directory = SessionDirectory(bus)
        self.workspace = Workspace(bus)
        self.max_payload = (await bus.server_info()).max_payload
        self._responder = await bus.respond(bus.subjects.api_submit, self._answer, queue="gateway")
        followups = FollowUps(
            bus,
            self.directory,
            self.workspace,
            max_payload=self.max_payload,
            missing=self._missing,
            unserved=self._unserved,
        )
        self._followups = await bus.respond(bus.subjects.api_message, followups.answer, queue="gateway")

    async def on_stop(self) -> None:
        for responder in (self._responder, self._followups):
            if responder is not None:
                await responder.close()
        self._responder = self._followups = None

    def _refuse(self, kind: str, message: str, session_id: str = "") -> bytes:
        return refuse(kind, message, session_id)

    async def _answer(self, data: bytes) -> bytes:
        try:
            submit = self._decoder.decode(data, subject=self.bus.subjects.api_submit)
        except MessageRejected as exc:
            return self._refuse("invalid_request", f"not a valid session.submit.v1: {exc.reason}")
        if submit.idempotency_key:
            derived = session_id_for_key(submit.idempotency_key)
            if b'"session_id"' in data and submit.session_id != derived:
                return self._refuse(
                    "invalid_request",
                    f"session_id {submit.session_id!r} contradicts idempotency_key "
                    f"{submit.idempotency_key!r} (which means session {derived!r}); give one or the other",
                )
            submit = msgspec.structs.replace(submit, session_id=derived)
        sid = submit.session_id
        # The message id decides JetStream's dedup of the request and of the lead's result: it must be
        # the session's, never one a caller chose for another purpose.
        submit = msgspec.structs.replace(submit, msg_id=f"submit-{sid}")
        try:  # the effective team, overrides applied, is decided here once and stored in the record
            team = await resolve_team(self.bus, submit)
        except UnknownTeam as exc:
            return self._refuse("unknown_team", exc.reason, sid)
        except SpecError as exc:
            kind = "invalid_request" if exc.source == "session.submit" else "invalid_team"
            return self._refuse(kind, exc.reason if kind == "invalid_request" else str(exc), sid)
        if too_large := self._too_large(submit, team):
            return self._refuse("too_large", too_large, sid)
        if submit.inputs and (missing := await self.workspace.adopt(sid, submit.inputs)):
            return self._refuse("missing_input", self._missing(sid, missing), sid)
        # Recording the session first (a KV create) makes a second request with the same id a
        # duplicate even long after JetStream's dedup window, and even before a lead has picked it up.
        duplicate = not await self.directory.create_pending(sid, team, submit.task)
        if duplicate and (conflict := await self._conflict(submit, team)):
            return self._refuse("conflict", conflict, sid)
        if not duplicate:
            await self.bus.publish_once(self.bus.subjects.submit, submit, msg_id=submit.msg_id)
        warnings = await self._unserved(sid, team) if not duplicate else []
        return accept(self.bus.subjects, sid, duplicate=duplicate, warnings=warnings)

    def _missing(self, sid: str, missing: list[str]) -> str:
        shown = ", ".join(repr(path) for path in missing[:5]) + (", ..." if len(missing) > 5 else "")
        return (
            f"{len(missing)} of the inputs {'is' if len(missing) == 1 else 'are'} not in the session's "
            f"workspace: {shown} (put each as object {sid}/<path> in the bucket "
            f"{self.workspace.bucket!r} before submitting)"
        )

    async def _conflict(self, submit: SessionSubmit, team: TeamSpec) -> str:
        """Why a request for a session that exists is not a repeat of the one that started it ("")."""
        record = await self.directory.get(submit.session_id)
        if record is None or (record.task == submit.task and record.team.name == team.name):
            return ""
        what = "task" if record.task != submit.task else "team"
        mine, theirs = (submit.task, record.task) if what == "task" else (team.name, record.team.name)
        key = (
            f"idempotency_key {submit.idempotency_key!r}"
            if submit.idempotency_key
            else f"session_id {submit.session_id!r}"
        )
        return (
            f"{key} was already used for session {submit.session_id!r} with another {what} "
            f"({_clip(theirs)}, not {_clip(mine)}): use a new key for new work"
        )

    def _too_large(self, submit: SessionSubmit, team: TeamSpec) -> str:
        """Why the session would not fit the server's max payload ("" if it fits)."""
        if not self.max_payload:
            return ""
        record = SessionRecord(session_id=submit.session_id, team=team, task=submit.task, status="pending")
        sizes = {"record": len(encode(record)), "request": len(encode(submit))}
        limit = self.max_payload - PAYLOAD_HEADROOM
        what, size = max(sizes.items(), key=lambda item: item[1])
        if size <= limit:
            return ""
        return (
            f"the session's {what} would be {size:,} bytes, over the {limit:,} allowed (the server's max "
            f"payload {self.max_payload:,} less {PAYLOAD_HEADROOM:,} for what the lead adds): put large "
            "inputs in the workspace (staffwork fs put, Client.upload) and name them in 'inputs'"
        )

    async def _unserved(self, sid: str, team: TeamSpec) -> list[str]:
        """A warning for each agent of ``team`` no worker serves right now (also in the trace).

        A pool is asked first to serve them (``<root>.api.pool``, answered within 2 s once they are
        served); an agent no pool serves is served if its consumer has a waiting pull request."""
        names = [agent.name for agent in team.agents]
        pooled: set[str] = set()
        if names:
            try:
                answer = await self.bus.request(
                    self.bus.subjects.api_pool, PoolServe(session_id=sid, agents=names), timeout=2.0
                )
                pooled = set(Decoder(PoolServed).decode(answer, subject=self.bus.subjects.api_pool).agents)
            except NoResponders:
                pass  # no pool runs: the workers' consumers tell
            except (BusTimeout, MessageRejected) as exc:
                log.warning("pool_unanswered", session_id=sid, error=str(exc))
        names = [name for name in names if name not in pooled]
        served = await asyncio.gather(
            *(self.bus.consumer_active(self.bus.subjects.agent_consumer(name)) for name in names)
        )
        warnings = [
            f"no worker serves agent {name!r} right now: its delegations fail after "
            f"{self.claim_timeout:g}s unless one starts (staffwork actor subagent --agents {name}, "
            "or staffwork up)"
            for name, active in zip(names, served, strict=True)
            if not active
        ]
        for warning in warnings:
            log.warning("agent_unserved", session_id=sid, warning=warning)
            error = ErrorInfo(kind="no_worker", message=warning, retryable=True)
            await self.bus.emit(SessionErrorEvent(session_id=sid, agent=team.lead.name, error=error))
        return warnings
