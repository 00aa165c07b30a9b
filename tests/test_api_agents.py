"""Environments and agents through the HTTP API, with the official ``anthropic`` SDK as the client:
the shapes checked strictly against the SDK's own models, versions and their compare-and-set, the
coordinator roster and its validation, pages, unknown ids, bad bodies and workspace isolation; and
an agent version mapped to a staffwork team."""

from __future__ import annotations

from typing import Any, TypeVar

import anthropic
import msgspec
import pydantic
import pytest
from anthropic.types.beta import (
    BetaEnvironment,
    BetaEnvironmentArchivedError,
    BetaEnvironmentDeleteResponse,
    BetaManagedAgentsAgent,
)

from actors.agent.tools.catalog import check_team_tools
from actors.api.actor import ApiActor
from actors.api.agent_shapes import Agent
from actors.api.records import Records
from actors.api.teams import team_for, team_of
from bus.connection import Bus
from tests.helpers import OTHER_API_KEY
from tests.helpers import api_client as client

M = TypeVar("M", bound=pydantic.BaseModel)
TOOLSET: Any = {"type": "agent_toolset_20260401"}


def strict(model: type[M], value: anthropic.BaseModel) -> M:
    """``value`` (as the server sent it) validated strictly by the SDK's ``model``: a missing
    non-optional field or a wrong type fails."""
    return model.model_validate_json(value.to_json(), strict=True)


def _any(value: Any) -> Any:
    """``value`` past the SDK's parameter types: what a program that ignores them would send."""
    return value


# --- environments ---------------------------------------------------------------------------------


async def test_an_environment_is_created_updated_archived_and_deleted(sdk: anthropic.AsyncAnthropic) -> None:
    envs = sdk.beta.environments
    config: Any = {
        "type": "cloud",
        "networking": {"type": "limited", "allowed_hosts": ["pypi.org"], "allow_package_managers": True},
        "packages": {"type": "packages", "pip": ["pandas==2.2.0"]},
    }
    env = strict(BetaEnvironment, await envs.create(name="data", config=config, metadata={"team": "a"}))
    assert (env.id[:4], env.name, env.archived_at, env.metadata) == ("env_", "data", None, {"team": "a"})
    assert env.config.type == "cloud"
    assert env.config.packages.pip == ["pandas==2.2.0"]
    assert env.config.networking.type == "limited"
    assert env.config.networking.allowed_hosts == ["pypi.org"]
    assert strict(BetaEnvironment, await envs.retrieve(env.id)) == env

    # omitted cloud fields keep their values; metadata is a patch (null deletes)
    changed = await envs.update(
        env.id,
        name="data-2",
        description="pandas",
        metadata={"team": None, "owner": "b"},
        config={"type": "cloud", "packages": {"type": "packages", "npm": ["zod"]}},
    )
    changed = strict(BetaEnvironment, changed)
    assert (changed.name, changed.description, changed.metadata) == ("data-2", "pandas", {"owner": "b"})
    assert changed.config.type == "cloud"
    assert changed.config.networking.type == "limited"
    assert (changed.config.packages.npm, changed.config.packages.pip) == (["zod"], [])
    assert changed.created_at == env.created_at
    assert changed.updated_at >= env.updated_at

    archived = strict(BetaEnvironment, await envs.archive(env.id))
    assert archived.archived_at is not None
    assert [e.id async for e in envs.list()] == []
    assert [e.id async for e in envs.list(include_archived=True)] == [env.id]
    with pytest.raises(BetaEnvironmentArchivedError, match="is archived"):
        await envs.update(env.id, name="again")

    deleted = strict(BetaEnvironmentDeleteResponse, await envs.delete(env.id))
    assert (deleted.id, deleted.type) == (env.id, "environment_deleted")
    with pytest.raises(anthropic.NotFoundError, match=f"environment '{env.id}' not found"):
        await envs.retrieve(env.id)
    assert [e.id async for e in envs.list(include_archived=True)] == []


async def test_an_environments_config_defaults_and_self_hosted(sdk: anthropic.AsyncAnthropic) -> None:
    plain = strict(BetaEnvironment, await sdk.beta.environments.create(name="plain"))
    assert plain.config.type == "cloud"
    assert plain.config.networking.type == "unrestricted"
    assert (plain.config.packages.apt, plain.metadata, plain.description) == ([], {}, None)
    own = await sdk.beta.environments.create(name="own", config={"type": "self_hosted"}, scope="organization")
    own = strict(BetaEnvironment, own)
    assert (own.config.type, own.scope) == ("self_hosted", "organization")
    with pytest.raises(anthropic.BadRequestError, match="allow_package_managers"):
        await sdk.beta.environments.create(
            name="locked",
            config={
                "type": "cloud",
                "networking": {"type": "limited"},
                "packages": {"type": "packages", "apt": ["jq"]},
            },
        )


# --- agents ---------------------------------------------------------------------------------------


async def test_an_agent_resolves_its_model_and_tools(sdk: anthropic.AsyncAnthropic) -> None:
    tools: Any = [
        {"type": "agent_toolset_20260401", "configs": [{"name": "write", "enabled": False}]},
        {
            "type": "custom",
            "name": "lookup",
            "description": "Find a ticket",
            "input_schema": {"type": "object"},
        },
        {
            "type": "mcp_toolset",
            "mcp_server_name": "docs",
            "default_config": {"enabled": False},
            "configs": [{"name": "search", "enabled": True}],
        },
    ]
    agent = await sdk.beta.agents.create(
        name="Support Bot",
        model={"id": "claude-sonnet-4-6", "effort": "high", "speed": "standard"},
        system="Help.",
        tools=tools,
        mcp_servers=[{"type": "url", "name": "docs", "url": "https://mcp.example.com/mcp"}],
        metadata={"tier": "1"},
    )
    agent = strict(BetaManagedAgentsAgent, agent)
    assert (agent.id[:6], agent.version, agent.multiagent) == ("agent_", 1, None)
    assert (agent.model.id, agent.model.effort and agent.model.effort.type, agent.model.speed) == (
        "claude-sonnet-4-6",
        "high",
        "standard",
    )
    assert (agent.execution_identity.type, agent.skills) == ("service_account", [])
    toolset, custom, mcp = agent.tools
    assert toolset.type == "agent_toolset_20260401"
    enabled = {c.name: c.enabled for c in toolset.configs}
    assert enabled == {
        "bash": False,  # no counterpart in staffwork
        "edit": True,
        "read": True,
        "write": False,
        "glob": True,
        "grep": True,
        "web_fetch": False,
        "web_search": False,
    }
    assert toolset.default_config.permission_policy.type == "always_allow"
    assert custom.type == "custom"
    assert (custom.name, custom.input_schema.type) == ("lookup", "object")
    assert mcp.type == "mcp_toolset"
    assert [(c.name, c.enabled) for c in mcp.configs] == [("search", True)]
    assert agent.mcp_servers[0].url == "https://mcp.example.com/mcp"


async def test_a_toolsets_always_ask_becomes_the_agents_permission_policy(
    sdk: anthropic.AsyncAnthropic,
) -> None:
    tools: Any = [
        {
            "type": "agent_toolset_20260401",
            "configs": [{"name": "write", "permission_policy": {"type": "always_ask"}}],
        }
    ]
    agent = await sdk.beta.agents.create(name="careful", model="claude-sonnet-4-6", tools=tools)
    [toolset] = agent.tools
    assert toolset.type == "agent_toolset_20260401"
    policies = {c.name: c.permission_policy.type for c in toolset.configs if c.permission_policy}
    assert (policies["write"], policies["read"]) == ("always_ask", "always_allow")
    stored = _agent("agent_c", "careful", tools=[toolset.model_dump(mode="json", exclude_none=True)])
    spec = team_of(stored, []).lead
    assert spec.permissions.always_ask == ["write_file"]
    assert spec.permissions.asks("write_file")
    assert not spec.permissions.asks("read_file")
    mcp: Any = {
        "type": "mcp_toolset",
        "mcp_server_name": "docs",
        "default_config": {"permission_policy": {"type": "always_ask"}},
    }
    servers: Any = [{"type": "url", "name": "docs", "url": "https://docs.example.com/mcp"}]
    with pytest.raises(anthropic.BadRequestError, match=r"an agent_toolset's tools only"):
        await sdk.beta.agents.create(name="m", model="m", tools=[mcp], mcp_servers=servers)


async def test_every_update_is_a_version_and_version_is_compare_and_set(
    api: ApiActor, sdk: anthropic.AsyncAnthropic
) -> None:
    agents = sdk.beta.agents
    first = await agents.create(name="writer", model="claude-sonnet-4-6", system="v1", tools=[TOOLSET])
    second = strict(BetaManagedAgentsAgent, await agents.update(first.id, version=1, system="v2"))
    assert (second.version, second.system, second.name, second.created_at) == (
        2,
        "v2",
        "writer",
        first.created_at,
    )
    assert second.tools == strict(BetaManagedAgentsAgent, first).tools  # omitted: kept
    third = await agents.update(
        first.id, model="claude-opus-4-7", description=""
    )  # no version: unconditional
    assert (third.version, third.model.id, third.description) == (3, "claude-opus-4-7", None)

    assert (await agents.retrieve(first.id)).version == 3
    old = strict(BetaManagedAgentsAgent, await agents.retrieve(first.id, version=1))
    assert (old.version, old.system, old.model.id) == (1, "v1", "claude-sonnet-4-6")
    assert [v.version async for v in agents.versions.list(first.id)] == [3, 2, 1]
    with pytest.raises(anthropic.NotFoundError, match="v4"):
        await agents.retrieve(first.id, version=4)

    # a stale version is a 409 the SDK does not retry, even when it may retry
    async with anthropic.AsyncAnthropic(base_url=api.url, api_key=sdk.api_key, max_retries=2) as retrying:
        with pytest.raises(anthropic.ConflictError, match="is at version 3, not 2") as caught:
            await retrying.beta.agents.update(first.id, version=2, system="lost")
    assert caught.value.body["error"]["type"] == "conflict_error"  # type: ignore[index]
    assert caught.value.response.headers["x-should-retry"] == "false"
    assert caught.value.response.request.headers["x-stainless-retry-count"] == "0"
    assert (await agents.retrieve(first.id)).version == 3

    archived = strict(BetaManagedAgentsAgent, await agents.archive(first.id))
    assert archived.archived_at is not None
    assert archived.version == 3
    assert [a.id async for a in agents.list()] == []
    assert [a.id async for a in agents.list(include_archived=True)] == [first.id]
    assert (await agents.retrieve(first.id, version=1)).archived_at is not None
    with pytest.raises(anthropic.BadRequestError, match="is archived"):
        await agents.update(first.id, system="v4")


async def test_a_coordinator_pins_three_specialists_and_maps_to_a_team(
    bus: Bus, sdk: anthropic.AsyncAnthropic
) -> None:
    agents = sdk.beta.agents
    names = ["Log Reader", "SQL analyst", "log reader"]  # the third's name clashes once made a token
    team = [
        await agents.create(name=n, model="claude-haiku-4-5", system=f"You are {n}.", tools=[TOOLSET])
        for n in names
    ]
    await agents.update(team[1].id, system="You are the SQL analyst, v2.")
    lead = await agents.create(
        name="Lead",
        model="claude-opus-4-7",
        system="Split, delegate, merge.",
        tools=[TOOLSET],
        multiagent={
            "type": "coordinator",
            "agents": [
                team[0].id,
                {"type": "agent", "id": team[1].id, "version": 1},
                {"type": "agent", "id": team[2].id},
                {"type": "self"},
            ],
        },
    )
    lead = strict(BetaManagedAgentsAgent, lead)
    assert lead.multiagent is not None
    assert lead.multiagent.type == "coordinator"
    resolved = [(r.type, r.id, r.version) for r in lead.multiagent.agents]  # type: ignore[union-attr]
    assert resolved == [
        ("agent", team[0].id, 1),
        ("agent", team[1].id, 1),
        ("agent", team[2].id, 1),
        ("agent", lead.id, 1),
    ]

    # an update that leaves the roster pins 'self' to the new version, the others as they were
    again = await agents.update(lead.id, version=1, system="Delegate more.")
    refs = [(r.id, r.version) for r in again.multiagent.agents]  # type: ignore[union-attr]
    assert refs == [(team[0].id, 1), (team[1].id, 1), (team[2].id, 1), (lead.id, 2)]

    stored, _ = await Records(bus).get("acme", "agent", lead.id, Agent) or (None, 0)
    assert stored is not None
    spec = await team_for(Records(bus), "acme", stored)
    assert (spec.name, spec.lead.name, spec.model) == ("lead", "lead", "claude-opus-4-7")
    assert [a.name for a in spec.agents] == ["log-reader", "sql-analyst", "log-reader-2", "lead-self"]
    assert spec.agents[1].system == "You are SQL analyst."  # version 1, as pinned
    assert (spec.agents[3].system, spec.agents[3].model) == ("Delegate more.", "claude-opus-4-7")
    assert spec.lead.tools == ["write_file", "read_file", "list_files", "grep"]
    check_team_tools(spec)


async def test_a_roster_is_validated_with_one_line_per_mistake(sdk: anthropic.AsyncAnthropic) -> None:
    agents = sdk.beta.agents
    worker = await agents.create(name="w", model="claude-haiku-4-5")
    old = await agents.create(name="old", model="claude-haiku-4-5")
    await agents.archive(old.id)
    boss = await agents.create(
        name="boss", model="claude-haiku-4-5", multiagent={"type": "coordinator", "agents": [worker.id]}
    )
    cases: list[tuple[list[Any], str]] = [
        ([], "multiagent.agents has 0 entries: give 1 to 20"),
        ([worker.id] * 21, "multiagent.agents has 21 entries: give 1 to 20"),
        (
            [worker.id, {"type": "agent", "id": worker.id}],
            f"multiagent.agents\\[1\\]: agent '{worker.id}' is listed twice",
        ),
        ([{"type": "self"}, {"type": "self"}], "multiagent.agents\\[1\\]: 'self' is listed twice"),
        (["agent_nobody"], "multiagent.agents\\[0\\]: agent 'agent_nobody' not found"),
        ([old.id], f"agent '{old.id}' is archived"),
        ([boss.id], f"agent '{boss.id}' \\(version 1\\) is a coordinator itself"),
        (
            [{"type": "agent", "id": worker.id, "version": 7}],
            f"agent '{worker.id}' has no version 7 \\(latest: 1\\)",
        ),
        ([{"type": "advisor", "model": "claude-opus-4-7"}], "advisor 'claude-opus-4-7' is not supported"),
    ]
    for roster, expected in cases:
        with pytest.raises(anthropic.BadRequestError, match=expected):
            await agents.create(
                name="c", model="claude-haiku-4-5", multiagent={"type": "coordinator", "agents": roster}
            )
    with pytest.raises(anthropic.BadRequestError, match="'multiagent_20261001' is not supported"):
        await agents.create(name="c", model="m", multiagent=_any({"type": "multiagent_20261001"}))
    with pytest.raises(anthropic.BadRequestError, match="is this agent: use"):
        await agents.update(worker.id, multiagent={"type": "coordinator", "agents": [worker.id]})


async def test_what_staffwork_cannot_run_is_refused_by_name(sdk: anthropic.AsyncAnthropic) -> None:
    create = sdk.beta.agents.create
    auto: Any = {"type": "agent_toolset_20260401", "default_config": {"permission_policy": {"type": "auto"}}}
    with pytest.raises(
        anthropic.BadRequestError, match=r"tools\[0\]\.default_config\.permission_policy 'auto' is not"
    ):
        await create(name="a", model="m", tools=[auto])
    bash: Any = {"type": "agent_toolset_20260401", "configs": [{"name": "bash", "enabled": True}]}
    with pytest.raises(anthropic.BadRequestError, match="tool 'bash' is not available in staffwork"):
        await create(name="a", model="m", tools=[bash])
    grep: Any = {"type": "custom", "name": "grep", "description": "d", "input_schema": {"type": "object"}}
    with pytest.raises(
        anthropic.BadRequestError, match="custom tool 'grep' has the name of a staffwork built-in"
    ) as caught:
        await create(name="a", model="m", tools=[grep])
    assert caught.value.error_code == "tool_name_conflict"
    server: Any = {"type": "url", "name": "docs", "url": "https://mcp.example.com"}
    with pytest.raises(anthropic.BadRequestError, match="server 'docs' has no mcp_toolset in tools"):
        await create(name="a", model="m", mcp_servers=[server])
    with pytest.raises(anthropic.BadRequestError, match="mcp_server_name 'nope' is not in mcp_servers"):
        await create(name="a", model="m", tools=[{"type": "mcp_toolset", "mcp_server_name": "nope"}])
    with pytest.raises(anthropic.BadRequestError, match="skills are not supported"):
        await create(name="a", model="m", skills=[{"type": "anthropic", "skill_id": "pdf"}])


async def test_bad_bodies_and_unknown_ids_get_the_sdks_errors(sdk: anthropic.AsyncAnthropic) -> None:
    agents, envs = sdk.beta.agents, sdk.beta.environments
    with pytest.raises(anthropic.BadRequestError, match=r"missing required field `name`"):
        await sdk.post("/v1/agents", body={"model": "m"}, cast_to=BetaManagedAgentsAgent)
    with pytest.raises(anthropic.BadRequestError, match=r"at `\$.tools\[0\].type`"):
        await agents.create(name="a", model="m", tools=_any([{"type": "shell"}]))
    with pytest.raises(anthropic.BadRequestError, match=r"Expected `str`.*at `\$.name`"):
        await envs.create(name=_any(7))
    with pytest.raises(anthropic.BadRequestError, match=r"at `\$.config.type`"):
        await envs.create(name="e", config=_any({"type": "docker"}))
    agent = await agents.create(name="a", model="m")
    with pytest.raises(anthropic.BadRequestError, match="query parameter version='x'"):
        await agents.retrieve(agent.id, extra_query={"version": "x"})
    for call in (
        agents.retrieve("agent_nope"),
        agents.update("agent_nope", name="x"),
        agents.archive("agent_nope"),
        agents.versions.list("agent_nope"),
        envs.retrieve("env_nope"),
        envs.update("env_nope", name="x"),
        envs.archive("env_nope"),
        envs.delete("env_nope"),
        envs.retrieve("env.x*"),
    ):
        with pytest.raises(anthropic.NotFoundError, match="not found"):
            await call


async def test_lists_page_newest_first(sdk: anthropic.AsyncAnthropic) -> None:
    envs = [await sdk.beta.environments.create(name=f"e{i}") for i in range(5)]
    first = await sdk.beta.environments.list(limit=2)
    assert [e.id for e in first.data] == [envs[4].id, envs[3].id]
    assert first.next_page
    assert [e.id async for e in await sdk.beta.environments.list(limit=2)] == [e.id for e in reversed(envs)]

    made = [await sdk.beta.agents.create(name=f"a{i}", model="m") for i in range(3)]
    assert [a.id async for a in sdk.beta.agents.list(limit=2)] == [a.id for a in reversed(made)]
    since = await sdk.beta.agents.list(created_at_gte=made[1].created_at, created_at_lte=made[1].created_at)
    assert [a.id for a in since.data] == [made[1].id]
    for n in range(4):
        await sdk.beta.agents.update(made[0].id, metadata={"n": str(n)})
    pages = await sdk.beta.agents.versions.list(made[0].id, limit=2)
    assert [v.version for v in pages.data] == [5, 4]
    assert [v.version async for v in pages] == [5, 4, 3, 2, 1]
    for version in pages.data:
        strict(BetaManagedAgentsAgent, version)
    with pytest.raises(anthropic.BadRequestError, match="limit=101 is out of range"):
        await sdk.beta.agents.list(limit=101)


async def test_a_workspace_never_sees_anothers(api: ApiActor, sdk: anthropic.AsyncAnthropic) -> None:
    env = await sdk.beta.environments.create(name="mine")
    agent = await sdk.beta.agents.create(name="mine", model="m")
    async with client(api, OTHER_API_KEY) as globex:
        with pytest.raises(anthropic.NotFoundError):
            await globex.beta.environments.retrieve(env.id)
        with pytest.raises(anthropic.NotFoundError):
            await globex.beta.environments.delete(env.id)
        with pytest.raises(anthropic.NotFoundError):
            await globex.beta.agents.retrieve(agent.id)
        with pytest.raises(anthropic.NotFoundError):
            await globex.beta.agents.update(agent.id, name="theirs")
        with pytest.raises(anthropic.BadRequestError, match=f"agent '{agent.id}' not found"):
            await globex.beta.agents.create(
                name="c", model="m", multiagent={"type": "coordinator", "agents": [agent.id]}
            )
        assert [a.id async for a in globex.beta.agents.list()] == []
        assert [e.id async for e in globex.beta.environments.list()] == []
    assert (await sdk.beta.agents.retrieve(agent.id)).name == "mine"


# --- an agent version as a staffwork team ---------------------------------------------------------


def _agent(id: str, name: str, **fields: Any) -> Agent:
    now = "2026-12-01T00:00:00.000Z"
    raw = {
        "id": id,
        "name": name,
        "model": {"id": "claude-haiku-4-5"},
        "created_at": now,
        "updated_at": now,
        **fields,
    }
    return msgspec.convert(raw, Agent)


def test_team_of_a_coordinator_with_three_specialists() -> None:
    toolset = {
        "type": "agent_toolset_20260401",
        "configs": [
            {"type": n, "name": n, "enabled": n in ("read", "glob", "grep")}
            for n in ("bash", "read", "glob", "grep")
        ],
    }
    reader = _agent("agent_r", "Log Reader!", system="Read logs.", tools=[toolset], description="reads logs")
    ticketer = _agent(
        "agent_t",
        "Ticketer",
        version=3,
        tools=[
            {
                "type": "custom",
                "name": "open_ticket",
                "description": "Open a ticket",
                "input_schema": {"type": "object"},
            }
        ],
    )
    docs = _agent(
        "agent_d",
        "9 docs",
        tools=[
            {
                "type": "mcp_toolset",
                "mcp_server_name": "my docs.v2",
                "configs": [{"name": "search", "enabled": True}],
                "default_config": {"enabled": False},
            },
            {"type": "mcp_toolset", "mcp_server_name": "wiki"},
        ],
        mcp_servers=[
            {"name": "my docs.v2", "url": "https://docs.example.com/mcp"},
            {"name": "wiki", "url": "http://wiki:8000/mcp"},
        ],
    )
    roster = [{"type": "agent", "id": a.id, "version": a.version} for a in (reader, ticketer, docs)]
    lead = _agent(
        "agent_l",
        "Incident Lead",
        model={"id": "claude-opus-4-7", "effort": {"type": "high"}},
        system="Coordinate.",
        tools=[toolset],
        multiagent={
            "type": "coordinator",
            "agents": [*roster, {"type": "agent", "id": "agent_l", "version": 1}],
        },
    )
    team = team_of(lead, [reader, ticketer, docs])
    check_team_tools(team)
    assert (team.name, team.model, team.lead.name, team.lead.system) == (
        "incident-lead",
        "claude-opus-4-7",
        "incident-lead",
        "Coordinate.",
    )
    assert [a.name for a in team.agents] == ["log-reader", "ticketer", "agent-9-docs", "incident-lead-self"]
    by_name = {a.name: a for a in team.agents}
    assert by_name["log-reader"].tools == ["read_file", "list_files", "grep"]
    assert (by_name["log-reader"].description, by_name["log-reader"].system) == ("reads logs", "Read logs.")
    assert [(c.name, c.description) for c in by_name["ticketer"].custom_tools] == [
        ("open_ticket", "Open a ticket")
    ]
    servers = [(s.name, s.url, s.tools, s.transport) for s in by_name["agent-9-docs"].mcp_servers]
    assert servers == [
        ("my-docs-v2", "https://docs.example.com/mcp", ["search"], "http"),
        ("wiki", "http://wiki:8000/mcp", None, "http"),
    ]
    itself = by_name["incident-lead-self"]
    assert (itself.tools, itself.system, itself.model) == (team.lead.tools, "Coordinate.", "claude-opus-4-7")
    with pytest.raises(Exception, match="roster agent agent_t version 3 was not given"):
        team_of(lead, [reader, docs])
