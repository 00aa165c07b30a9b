"""Registered teams: a team stored under ``team.<name>`` in the registry KV bucket, so a session
request can name it (``{"team": "incident"}``) instead of carrying the whole spec."""

from __future__ import annotations

import msgspec

from actors.agent.tools.catalog import check_team_tools
from bus.connection import Bus
from schemas.team import TeamSpec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TeamSpec)


async def register_team(bus: Bus, team: TeamSpec) -> None:
    """Store (or replace) a team; its tools are checked first."""
    check_team_tools(team)
    kv = await bus.kv(bus.subjects.registry_bucket)
    await kv.put(f"team.{team.name}", _encoder.encode(team))


async def registered_team(bus: Bus, name: str) -> TeamSpec | None:
    kv = await bus.kv(bus.subjects.registry_bucket)
    raw = await kv.get(f"team.{name}")
    return _decoder.decode(raw) if raw else None


async def registered_teams(bus: Bus) -> list[TeamSpec]:
    kv = await bus.kv(bus.subjects.registry_bucket)
    teams = []
    for key in await kv.keys("team."):
        raw = await kv.get(key)
        if raw:
            teams.append(_decoder.decode(raw))
    return teams
