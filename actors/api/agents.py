"""Agents (``/v1/agents``): create, retrieve (``?version=``), update, list, archive and the versions
list, in the shapes of :mod:`actors.api.agent_shapes`.

Every update is a new version (``version`` in the body is compare-and-set: it must equal the current
one, else 409 with ``x-should-retry: false``). The current agent is the record
``<workspace>.agent.<id>``, each version a snapshot ``<workspace>.agentv.<id>-v<n>`` (the current
record wins if the two differ: it is written first, under compare-and-set). A ``coordinator`` roster
is pinned when a version is saved: every entry becomes ``{type: "agent", id, version}`` (``self``:
this agent at the version being saved); its agents are 1 to 20 distinct agents of this workspace, not
archived and not coordinators themselves. Advisors and ``multiagent_20261001`` are refused (400):
staffwork has no advisor model call. :mod:`actors.api.teams` maps a version to a staffwork team.
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import msgspec
from msgspec import UNSET
from starlette.routing import Route

from actors.api.agent_shapes import (
    AdvisorIn,
    Agent,
    AgentRef,
    AgentRefIn,
    Coordinator,
    CoordinatorIn,
    CreateBody,
    Multiagent2In,
    SelfIn,
    UpdateBody,
    as_requests,
    refuse_unsupported,
    resolve_model,
    resolve_tools,
)
from actors.api.environments import patch_metadata
from actors.api.errors import ApiError, bad_request, not_found
from actors.api.http import Call, page, route
from actors.api.records import Records
from actors.api.values import check_metadata, rfc3339_now
from schemas.ids import new_id
from schemas.team import MAX_AGENTS

KIND, VERSION_KIND = "agent", "agentv"


async def _roster(
    call: Call, given: CoordinatorIn | Multiagent2In | None, agent_id: str, version: int
) -> Coordinator | None:
    """The roster with every entry pinned: 1 to 20 distinct agents of this workspace, at most one
    ``self``, none archived and none a coordinator itself."""
    if given is None:
        return None
    if isinstance(given, Multiagent2In):
        raise bad_request("multiagent 'multiagent_20261001' is not supported by staffwork: use 'coordinator'")
    if not 1 <= len(given.agents) <= MAX_AGENTS:
        raise bad_request(f"multiagent.agents has {len(given.agents)} entries: give 1 to {MAX_AGENTS}")
    pinned: list[AgentRef] = []
    for i, entry in enumerate(given.agents):
        where = f"multiagent.agents[{i}]"
        match entry:
            case AdvisorIn(model=model):
                raise bad_request(
                    f"{where}: advisor {model!r} is not supported by staffwork (it has no advisor model call)"
                )
            case SelfIn():
                ref = AgentRef(id=agent_id, version=version)
                if any(p.id == agent_id for p in pinned):
                    raise bad_request(f"{where}: 'self' is listed twice")
            case str() | AgentRefIn():
                id, wanted = (entry, None) if isinstance(entry, str) else (entry.id, entry.version)
                if id == agent_id:
                    raise bad_request(f"{where}: agent {id!r} is this agent: use {{'type': 'self'}}")
                if any(p.id == id for p in pinned):
                    raise bad_request(f"{where}: agent {id!r} is listed twice")
                found = await load(call.records, call.workspace, id)
                if found is None:
                    raise bad_request(f"{where}: agent {id!r} not found")
                current = found[0]
                if current.archived_at is not None:
                    raise bad_request(f"{where}: agent {id!r} is archived")
                if wanted is not None and wanted > current.version:
                    raise bad_request(
                        f"{where}: agent {id!r} has no version {wanted} (latest: {current.version})"
                    )
                member = (
                    current
                    if wanted is None
                    else await version_of(call.records, call.workspace, current, wanted)
                )
                if member.multiagent is not None:
                    raise bad_request(
                        f"{where}: agent {id!r} (version {member.version}) is a coordinator itself; "
                        "a roster is one level deep"
                    )
                ref = AgentRef(id=id, version=member.version)
        pinned.append(ref)
    return Coordinator(agents=pinned)


# --- storage --------------------------------------------------------------------------------------


async def load(records: Records, workspace: str, id: str) -> tuple[Agent, int] | None:
    """The current version of agent ``id`` and its record's revision, or None."""
    return await records.get(workspace, KIND, id, Agent)


async def version_of(records: Records, workspace: str, current: Agent, version: int) -> Agent:
    """Version ``version`` (1 to the current) of ``current``'s agent, with its archival state."""
    if version == current.version:
        return current
    found = await records.get(workspace, VERSION_KIND, f"{current.id}-v{version}", Agent)
    if found is None:
        raise not_found("agent version", f"{current.id} v{version}")
    return msgspec.structs.replace(found[0], archived_at=current.archived_at)


async def _current(call: Call) -> tuple[Agent, int]:
    id = call.path("agent_id")
    found = await load(call.records, call.workspace, id)
    if found is None:
        raise not_found("agent", id)
    return found


# --- endpoints ------------------------------------------------------------------------------------


async def create(call: Call) -> object:
    body = await call.body(CreateBody)
    refuse_unsupported(body.skills, body.execution_identity)
    id, now = new_id("agent"), rfc3339_now()
    agent = Agent(
        id=id,
        name=body.name,
        description=body.description,
        system=body.system,
        model=resolve_model(body.model),
        tools=resolve_tools(body.tools, body.mcp_servers),
        mcp_servers=body.mcp_servers,
        metadata=check_metadata(body.metadata),
        multiagent=await _roster(call, body.multiagent, id, 1),
        created_at=now,
        updated_at=now,
    )
    await call.records.create(call.workspace, VERSION_KIND, f"{id}-v1", agent)
    await call.records.create(call.workspace, KIND, id, agent)
    return agent


async def retrieve(call: Call) -> object:
    current, _ = await _current(call)
    raw = call.query("version")
    if not raw:
        return current
    if not raw.isdigit() or int(raw) < 1:
        raise bad_request(f"query parameter version={raw!r} is not an integer of at least 1")
    if int(raw) > current.version:
        raise not_found("agent version", f"{current.id} v{raw}")
    return await version_of(call.records, call.workspace, current, int(raw))


async def update(call: Call) -> object:
    body = await call.body(UpdateBody)
    for _attempt in range(5):
        current, revision = await _current(call)
        if body.version is not UNSET and body.version != current.version:
            raise ApiError(
                409,
                f"agent {current.id!r} is at version {current.version}, not {body.version}: "
                "retrieve it and apply your change again",
            )
        if current.archived_at is not None:
            raise bad_request(f"agent {current.id!r} is archived: it cannot be updated")
        agent = await _updated(call, current, body)
        if await call.records.update(call.workspace, KIND, agent.id, agent, revision):
            await call.records.create(call.workspace, VERSION_KIND, f"{agent.id}-v{agent.version}", agent)
            return agent
        if body.version is not UNSET:  # another update won: the caller's version is stale now
            raise ApiError(409, f"agent {current.id!r} changed while this request updated it; retry")
        await asyncio.sleep(0.01 * (_attempt + 1))
    raise ApiError(409, f"agent {current.id!r} is being updated by others; retry")


async def _updated(call: Call, current: Agent, body: UpdateBody) -> Agent:
    version = current.version + 1
    skills = [] if body.skills is UNSET else body.skills or []
    refuse_unsupported(skills, body.execution_identity)
    servers = current.mcp_servers if body.mcp_servers is UNSET else body.mcp_servers or []
    if body.tools is UNSET and body.mcp_servers is UNSET:
        tools = current.tools
    else:
        given = as_requests(current.tools) if body.tools is UNSET else body.tools or []
        tools = resolve_tools(given, servers)
    multiagent = current.multiagent
    if body.multiagent is not UNSET:
        multiagent = await _roster(call, body.multiagent, current.id, version)
    elif multiagent is not None:  # keep the roster, with 'self' at the new version
        refs = [AgentRef(id=r.id, version=version) if r.id == current.id else r for r in multiagent.agents]
        multiagent = Coordinator(agents=refs)
    return msgspec.structs.replace(
        current,
        version=version,
        name=current.name if body.name is UNSET else body.name,
        description=current.description if body.description is UNSET else body.description or None,
        system=current.system if body.system is UNSET else body.system or None,
        model=current.model if body.model is UNSET else resolve_model(body.model),
        tools=tools,
        mcp_servers=servers,
        metadata=current.metadata
        if body.metadata is UNSET
        else patch_metadata(current.metadata, body.metadata or {}),
        multiagent=multiagent,
        updated_at=rfc3339_now(),
    )


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def list_(call: Call) -> object:
    archived = call.query_bool("include_archived")
    gte, lte = call.query_time("created_at[gte]"), call.query_time("created_at[lte]")
    agents = [
        a
        for a in await call.records.list(call.workspace, KIND, Agent)
        if (archived or a.archived_at is None)
        and (gte is None or _time(a.created_at) >= gte)
        and (lte is None or _time(a.created_at) <= lte)
    ]
    agents.sort(key=lambda a: (a.created_at, a.id), reverse=True)
    return page(call, agents)


async def versions(call: Call) -> object:
    current, _ = await _current(call)
    shown = page(call, range(current.version, 0, -1))  # newest first; only the page's are read
    shown["data"] = [await version_of(call.records, call.workspace, current, n) for n in shown["data"]]
    return shown


async def archive(call: Call) -> object:
    current, revision = await _current(call)
    if current.archived_at is not None:
        return current
    now = rfc3339_now()
    agent = msgspec.structs.replace(current, archived_at=now, updated_at=now)
    if not await call.records.update(call.workspace, KIND, agent.id, agent, revision):
        raise ApiError(409, f"agent {agent.id!r} changed while this request archived it; retry")
    return agent


routes: list[Route] = [
    route("/v1/agents", create, "POST"),
    route("/v1/agents", list_),
    route("/v1/agents/{agent_id}", retrieve),
    route("/v1/agents/{agent_id}", update, "POST"),
    route("/v1/agents/{agent_id}/archive", archive, "POST"),
    route("/v1/agents/{agent_id}/versions", versions),
]
