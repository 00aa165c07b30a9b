"""``staffwork auth``: the NATS users of a deployment, least privilege per role and per agent.

It prints nats-server config (``authorization { users = [...] }``, to ``include`` in the server's
config) with fresh random passwords, or with ``--out DIR`` writes it as ``nats-auth.conf`` and one
``<user>.env`` per user (the ``STAFFWORK_NATS_*`` variables its process runs with), every file mode
0600. What each user may do, and where that is coarser than its role needs: ``bus/permissions.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from actors.cli.common import RootOption, err, fail, load_team, out
from bus.errors import ConfigError, StaffworkError
from bus.permissions import (
    ROLES,
    AgentAccess,
    Deployment,
    credentials_env,
    deployment,
    new_passwords,
    render_config,
)
from bus.subjects import Subjects

CONFIG_FILE = "nats-auth.conf"


def auth(
    agents: Annotated[
        str, typer.Option(help="Comma-separated agents, one worker user each (their tools: give --team).")
    ] = "",
    team: Annotated[
        list[Path] | None,
        typer.Option(
            "--team",
            help="A team file: its agents, and what their tools reach (memory stores, tool services, "
            "custom tools). Repeatable.",
        ),
    ] = None,
    group: Annotated[
        list[str] | None,
        typer.Option("--group", help="NAME=a,b: one worker user for these agents. Repeatable."),
    ] = None,
    roles: Annotated[str, typer.Option(help="Comma-separated roles to make users for.")] = ",".join(ROLES),
    shared_inbox: Annotated[
        bool,
        typer.Option(
            "--shared-inbox",
            help="Grant _INBOX.> instead of a per-user inbox (for clients that cannot set an inbox "
            "prefix; every user can then read the others' replies).",
        ),
    ] = False,
    out_dir: Annotated[
        Path | None,
        typer.Option("--out", help=f"Write {CONFIG_FILE} and one <user>.env per user here (mode 0600)."),
    ] = None,
    force: Annotated[bool, typer.Option(help="Replace the files of an earlier --out.")] = False,
    root: RootOption = "sw",
) -> None:
    """NATS users with least privilege for every role and agent: nats-server config and credentials."""
    try:
        plan = plan_deployment(
            Subjects(root),
            agents=[a.strip() for a in agents.split(",") if a.strip()],
            teams=team or [],
            groups=group or [],
            roles=[r.strip() for r in roles.split(",") if r.strip()],
            shared_inbox=shared_inbox,
        )
        passwords = new_passwords(plan)
        if out_dir is None:
            out.print(render_config(plan, passwords), highlight=False, markup=False, end="")
            err.print("The passwords are shown only here: --out DIR writes them to files (mode 0600).")
            return
        written = write_bundle(plan, passwords, out_dir, force=force)
    except (StaffworkError, OSError) as exc:
        fail(exc)
    table = Table("user", "role", "agents", "credentials")
    for user in plan.users:
        table.add_row(user.name, user.role, ", ".join(user.agents), str(written[user.name]))
    out.print(table)
    out.print(
        f"nats-server config: {out_dir / CONFIG_FILE} (include it from the server's config file)",
        highlight=False,
    )


def plan_deployment(
    subjects: Subjects,
    *,
    agents: list[str],
    teams: list[Path],
    groups: list[str],
    roles: list[str],
    shared_inbox: bool = False,
) -> Deployment:
    """The deployment the options describe (a :class:`ConfigError` names a bad option)."""
    lead: AgentAccess | None = None
    accesses: dict[str, AgentAccess] = {}
    for path in teams:
        team_lead, members = AgentAccess.of_team(load_team(path))
        lead = team_lead if lead is None else lead.merge(team_lead)
        for access in members:
            accesses[access.name] = accesses[access.name].merge(access) if access.name in accesses else access
    for name in agents:
        accesses.setdefault(name, AgentAccess(name, known=False))
    if not accesses and "subagent" in roles:
        raise ConfigError("no agents: give --agents a,b or --team FILE")
    parsed: dict[str, list[str]] = {}
    for spec in groups:
        name, _, listing = spec.partition("=")
        listed = [m.strip() for m in listing.split(",") if m.strip()]
        if not name or not listed:
            raise ConfigError(f"--group {spec!r} is not NAME=agent,agent")
        parsed[name.strip()] = listed
    return deployment(
        subjects,
        list(accesses.values()),
        lead=lead,
        groups=parsed,
        roles=roles,
        inbox="shared" if shared_inbox else "per_user",
    )


def write_bundle(
    plan: Deployment, passwords: dict[str, str], directory: Path, *, force: bool = False
) -> dict[str, Path]:
    """Write the config and each user's credentials file into ``directory`` (mode 0600 each; the
    directory 0700 if made here); the credentials file of each user."""
    files = {user.name: directory / f"{user.name}.env" for user in plan.users}
    if not force:
        taken = [p for p in [directory / CONFIG_FILE, *files.values()] if p.exists()]
        if taken:
            raise ConfigError(f"{taken[0]} exists (and {len(taken) - 1} more): give --force to replace them")
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    _write_private(directory / CONFIG_FILE, render_config(plan, passwords))
    root = plan.subjects.root
    for user in plan.users:
        _write_private(files[user.name], credentials_env(user, passwords[user.name], root))
    return files


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (also when it existed before)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # it may have existed with a wider mode
    with open(fd, "w", encoding="utf-8") as file:
        file.write(text)
