"""Sessions (``/v1/sessions``): create, retrieve, list, archive, and sending events to one, in the
shapes the SDK's ``BetaManagedAgentsSession`` models.

An API session is the record ``<workspace>.sesn.<id>`` (the agent's snapshot, the team it runs, the
outcome defined before it started) and, once its first ``user.message`` arrives, the staffwork
session of the same id (``sesn_…``), started through the gateway (``<root>.api.submit``) with the
agent's team (:func:`actors.api.teams.team_for`), the message as its task and the outcome. Its
status comes from the session directory: ``idle`` until it starts, ``running`` while the lead works,
``idle`` when it is done, ``terminated`` when it stopped otherwise.

The user's events are recorded in the session's log as ``user.event`` trace events (so the list and
the stream show them in order with the rest) before they act. A ``user.message`` to an idle session
that already ran is a follow-up turn with the lead's whole history; one sent while the session works
is refused with a 409 (the hosted service queues it: send it once the session is idle, or interrupt
first). ``user.tool_confirmation`` answers a tool call that waits for one (the agent's permission
policy in its team asks for it). What staffwork cannot do yet is refused with a 400 that says so:
image and document blocks, file and GitHub resources, vaults, agent overrides.
"""

from __future__ import annotations

import contextlib
import time
from typing import Annotated, Any, Literal

import msgspec
from starlette.routing import Route

from actors.api.agent_shapes import Agent
from actors.api.agents import load as load_agent
from actors.api.agents import version_of
from actors.api.errors import bad_request, not_found
from actors.api.events import (
    DefineOutcome,
    UserMessage,
)
from actors.api.http import Call, page, route
from actors.api.memory_stores import get_store
from actors.api.session_events import send_events
from actors.api.session_records import KIND, ApiSession, load_for_update, load_session, save
from actors.api.teams import team_for
from actors.api.values import check_metadata, rfc3339, rfc3339_now
from actors.sessions.directory import SessionDirectory
from bus.direct import read_subject
from schemas.base import Usage
from schemas.errors import SpecError
from schemas.ids import new_id
from schemas.session import SessionRecord
from schemas.team import MAX_MEMORY_STORES, MemoryAttachment, TeamSpec
from schemas.trace import OutcomeEvaluationEnd, event_kind

# --- request bodies -------------------------------------------------------------------------------


class _AgentRef(msgspec.Struct, frozen=True, kw_only=True, tag="agent", tag_field="type"):
    id: str
    version: int | None = None


class _AgentOverrides(msgspec.Struct, frozen=True, tag="agent_with_overrides", tag_field="type"):
    pass


class _Amount(msgspec.Struct, frozen=True):
    amount: Annotated[str, msgspec.Meta(pattern=r"^[0-9]+$")]
    currency: str


class _Budget(msgspec.Struct, frozen=True, tag="limit", tag_field="type"):
    max_list_cost: _Amount


class _Create(msgspec.Struct, frozen=True, kw_only=True):
    agent: str | _AgentRef | _AgentOverrides
    environment_id: str
    resources: list[dict[str, Any]] = msgspec.field(default_factory=list)
    vault_ids: list[str] = msgspec.field(default_factory=list)
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    title: str | None = None
    budget: _Budget | None = None
    initial_events: Annotated[list[dict[str, Any]], msgspec.Meta(max_length=50)] = msgspec.field(
        default_factory=list
    )


class _MemoryResource(msgspec.Struct, frozen=True, kw_only=True):
    type: Literal["memory_store"]
    memory_store_id: str
    access: Literal["read_write", "read_only"] | None = None
    instructions: Annotated[str, msgspec.Meta(max_length=4096)] | None = None


# --- the shown session ----------------------------------------------------------------------------


def _snapshot(agent: Agent, *, roster: list[Agent] | None = None) -> dict[str, Any]:
    """The agent as a session shows it: no timestamps or metadata; the roster as full snapshots."""
    shown: dict[str, Any] = msgspec.to_builtins(agent)
    for key in ("created_at", "updated_at", "archived_at", "metadata"):
        shown.pop(key, None)
    if roster is None:
        shown.pop("multiagent", None)
    elif agent.multiagent is not None:
        shown["multiagent"] = {"type": "coordinator", "agents": [_snapshot(a) for a in roster]}
    return shown


def _status(record: SessionRecord | None) -> str:
    if record is None:
        return "idle"
    if record.status in ("pending", "running"):
        return "running"
    return "idle" if record.status == "idle" else "terminated"


def _usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_input_tokens": usage.cache_read_input_tokens,
        "cache_creation": {"ephemeral_5m_input_tokens": usage.cache_creation_input_tokens},
        "list_cost": {"amount": str(round(usage.cost_usd * 100)), "currency": "USD"},
    }


async def _evaluations(call: Call, session: ApiSession) -> list[dict[str, Any]]:
    """The outcome's latest evaluation (``pending`` until the grader's first verdict)."""
    defined = session.outcome
    if defined is None:
        return []
    shown: dict[str, Any] = {
        "type": "outcome_evaluation",
        "outcome_id": defined.outcome_id,
        "description": defined.description,
        "iteration": 0,
        "result": "pending",
        "explanation": None,
        "completed_at": None,
    }
    subject = call.bus.subjects.event(session.id, event_kind(OutcomeEvaluationEnd))
    decoder = msgspec.json.Decoder(OutcomeEvaluationEnd)
    async for stored in read_subject(call.bus, call.bus.subjects.log_stream, subject):
        with contextlib.suppress(msgspec.ValidationError, msgspec.DecodeError):
            end = decoder.decode(stored.data)
            if end.outcome_id == defined.outcome_id and end.iteration >= shown["iteration"]:
                shown |= {"iteration": end.iteration, "result": end.result, "explanation": end.explanation}
                shown["completed_at"] = rfc3339(end.time)
    return [shown]


async def show(call: Call, session: ApiSession) -> dict[str, Any]:
    record = await SessionDirectory(call.bus).get(session.id) if session.started else None
    stats: dict[str, Any] = {"active_seconds": None, "duration_seconds": None}
    if record is not None:
        ended = record.ended or time.time()
        stats = {"active_seconds": ended - record.started, "duration_seconds": ended - record.started}
    shown: dict[str, Any] = msgspec.to_builtins(session)
    for key in ("team", "started", "outcome"):
        shown.pop(key)
    return shown | {
        "type": "session",
        "status": _status(record),
        "usage": _usage(record.usage if record else Usage()),
        "stats": stats,
        "outcome_evaluations": await _evaluations(call, session),
        "vault_ids": [],
        "deployment_id": None,
    }


# --- storage --------------------------------------------------------------------------------------


async def _environment(call: Call, id: str) -> None:
    found = await call.records.get(call.workspace, "env", id, _EnvState)
    if found is None or found[0].deleted_at is not None:
        raise not_found("environment", id)
    if found[0].archived_at is not None:
        raise bad_request(f"environment {id!r} is archived: a new session cannot use it")


class _EnvState(msgspec.Struct, frozen=True):
    archived_at: str | None = None
    deleted_at: str | None = None


# --- endpoints ------------------------------------------------------------------------------------


async def _agent(call: Call, given: str | _AgentRef | _AgentOverrides) -> tuple[TeamSpec, dict[str, Any]]:
    """The agent version the session pins, its team and its snapshot."""
    if isinstance(given, _AgentOverrides):
        raise bad_request("agent: agent_with_overrides is not supported; create an agent version instead")
    id, version = (given, None) if isinstance(given, str) else (given.id, given.version)
    found = await load_agent(call.records, call.workspace, id)
    if found is None:
        raise not_found("agent", id)
    agent = found[0] if version is None else await version_of(call.records, call.workspace, found[0], version)
    if agent.archived_at is not None:
        raise bad_request(f"agent {id!r} is archived: a new session cannot use it")
    try:
        team = await team_for(call.records, call.workspace, agent)
    except SpecError as exc:
        raise bad_request(f"agent {id!r} v{agent.version} cannot run as a staffwork team: {exc}") from None
    roster: list[Agent] = []
    for ref in agent.multiagent.agents if agent.multiagent else []:
        member = await load_agent(call.records, call.workspace, ref.id)
        if member is not None:
            roster.append(await version_of(call.records, call.workspace, member[0], ref.version))
    return team, _snapshot(agent, roster=roster)


async def _attach(
    call: Call, team: TeamSpec, given: list[dict[str, Any]]
) -> tuple[TeamSpec, list[dict[str, Any]]]:
    """Memory store resources attached to every agent of the team; other resources refused."""
    shown: list[dict[str, Any]] = []
    attachments: list[MemoryAttachment] = []
    for n, raw in enumerate(given):
        kind = raw.get("type")
        if kind != "memory_store":
            raise bad_request(
                f"resources[{n}].type={kind!r} is not supported: only memory_store resources can be attached"
            )
        try:
            resource = msgspec.convert(raw, _MemoryResource)
        except msgspec.ValidationError as exc:
            raise bad_request(f"invalid body: {exc} - at `$.resources[{n}]`") from None
        store = await get_store(call, resource.memory_store_id)
        access = resource.access or "read_write"
        attachments.append(
            MemoryAttachment(store=store.id, access=access, instructions=resource.instructions or "")
        )
        shown.append(
            {
                "type": "memory_store",
                "memory_store_id": store.id,
                "access": access,
                "instructions": resource.instructions,
                "name": store.name,
                "description": store.description,
                "mount_path": f"/memory/{store.id}",
            }
        )
    if not attachments:
        return team, shown
    if len(attachments) > MAX_MEMORY_STORES:
        raise bad_request(
            f"resources: {len(attachments)} memory stores, over the {MAX_MEMORY_STORES} allowed"
        )

    def attached(spec: Any) -> Any:
        return msgspec.structs.replace(spec, memory=[*spec.memory, *attachments][:MAX_MEMORY_STORES])

    return msgspec.structs.replace(
        team, lead=attached(team.lead), agents=[attached(a) for a in team.agents]
    ), shown


async def create(call: Call) -> object:
    body = await call.body(_Create)
    await _environment(call, body.environment_id)
    if body.vault_ids:
        raise bad_request("vault_ids: vaults are not supported; give MCP servers their headers in the agent")
    team, snapshot = await _agent(call, body.agent)
    team, resources = await _attach(call, team, body.resources)
    budget = None
    if body.budget is not None:
        cost = body.budget.max_list_cost
        if cost.currency != "USD":
            raise bad_request(
                f"budget.max_list_cost.currency={cost.currency!r}: only USD budgets are supported"
            )
        team = msgspec.structs.replace(team, budget_usd=max(int(cost.amount), 1) / 100)
        budget = msgspec.to_builtins(body.budget)
    now = rfc3339_now()
    session = ApiSession(
        id=new_id("sesn"),
        agent=snapshot,
        team=team,
        environment_id=body.environment_id,
        resources=resources,
        metadata=check_metadata(body.metadata),
        title=body.title,
        budget=budget,
        created_at=now,
        updated_at=now,
    )
    await call.records.create(call.workspace, KIND, session.id, session)
    if body.initial_events:
        try:
            events = msgspec.convert(body.initial_events, list[UserMessage | DefineOutcome])
        except msgspec.ValidationError as exc:
            raise bad_request(f"invalid body: {exc} (in initial_events)") from None
        await send_events(call, session.id, events)
    return await show(call, (await load_for_update(call, session.id))[0])


async def retrieve(call: Call) -> object:
    return await show(call, await load_session(call, call.path("session_id")))


async def list_(call: Call) -> object:
    archived = call.query_bool("include_archived")
    agent_id = call.query("agent_id")
    order = call.query("order", "desc")
    if order not in ("asc", "desc"):
        raise bad_request(f"query parameter order={order!r} must be 'asc' or 'desc'")
    found = await call.records.list(call.workspace, KIND, ApiSession)
    kept = [
        s
        for s in found
        if (archived or s.archived_at is None) and (not agent_id or s.agent["id"] == agent_id)
    ]
    kept.sort(key=lambda s: (s.created_at, s.id), reverse=order == "desc")
    if statuses := set(call.query_list("statuses")):
        directory = SessionDirectory(call.bus)
        kept = [s for s in kept if _status(await directory.get(s.id) if s.started else None) in statuses]
    shown = page(call, kept)
    shown["data"] = [await show(call, s) for s in shown["data"]]
    return shown | {"prev_page": None}


async def archive(call: Call) -> object:
    session, revision = await load_for_update(call, call.path("session_id"))
    if session.archived_at is None:
        session.archived_at = session.updated_at = rfc3339_now()
        await save(call, session, revision)
    return await show(call, session)


routes: list[Route] = [
    route("/v1/sessions", create, "POST"),
    route("/v1/sessions", list_),
    route("/v1/sessions/{session_id}", retrieve),
    route("/v1/sessions/{session_id}/archive", archive, "POST"),
]
