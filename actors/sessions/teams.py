"""Registered teams (``team.<name>`` in the registry KV bucket) and resolving a submit's team.

:func:`resolve_team` is the one place a session's effective team is decided: the inline or
registered team, its tools and prices checked, with the submit's ``outcome`` and ``webhooks`` overrides
applied. The gateway stores that team in the session record; every other role reads the record.
"""

from __future__ import annotations

import msgspec

from actors.agent.models.prices import check_team_prices
from actors.agent.tools.catalog import check_team_tools
from bus.connection import Bus
from schemas.errors import SpecError
from schemas.session import SessionSubmit
from schemas.team import TeamSpec

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(TeamSpec)


async def register_team(bus: Bus, team: TeamSpec) -> None:
    """Store (or replace) a team; its tools and prices are checked first."""
    check_team_tools(team)
    check_team_prices(team)
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


class UnknownTeam(SpecError):
    """A submit names a team that is not registered."""


async def resolve_team(bus: Bus, submit: SessionSubmit) -> TeamSpec:
    """The team a submit runs: inline (``team_spec``) or registered (``team``), tools and prices
    checked, with the submit's ``outcome`` and ``webhooks`` replacing the team's. :class:`SpecError`
    says why not (:class:`UnknownTeam` lists the registered names)."""
    if submit.team_spec is not None and submit.team:
        raise SpecError("give 'team' or 'team_spec', not both", source="session.submit", path="team")
    team = submit.team_spec
    if team is None:
        if not submit.team:
            raise SpecError(
                "give 'team' (a registered team's name) or 'team_spec'", source="session.submit", path="team"
            )
        team = await registered_team(bus, submit.team)
        if team is None:
            known = ", ".join(t.name for t in await registered_teams(bus)) or "none"
            raise UnknownTeam(
                f"team {submit.team!r} is not registered (known: {known})",
                source="session.submit",
                path="team",
                value=submit.team,
            )
    check_team_tools(team, source=f"team {team.name!r}")
    check_team_prices(team, source=f"team {team.name!r}")
    if submit.outcome is not None:
        team = msgspec.structs.replace(team, outcome=submit.outcome)
    if submit.webhooks is not None:
        team = msgspec.structs.replace(team, webhooks=submit.webhooks)
    return team
