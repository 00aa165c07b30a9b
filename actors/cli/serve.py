"""The serving commands: ``server`` (a NATS server in the foreground), ``actor`` (one actor process,
what a container runs) and ``up`` (the embedded server plus every actor as its own process, under a
:class:`Supervisor` that restarts what dies)."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Annotated

import typer

from actors.api.actor import ApiSettings
from actors.api.auth import ENV as API_KEYS_ENV
from actors.api.auth import WEBHOOKS_ENV as API_WEBHOOKS_ENV
from actors.api.auth import ApiKeys
from actors.cli.common import (
    EXAMPLES,
    AllowPrivateOption,
    ApiHostOption,
    ApiPortOption,
    NatsOption,
    OtlpOption,
    RootOption,
    err,
    fail,
    load_example,
    load_team,
    out,
    run_async,
)
from actors.cli.supervisor import RESTARTS_ENV, Supervisor
from actors.collector.otlp import OtlpExporter
from actors.roles import ROLES, AgentSettings, RoleConfig, serve_roles
from actors.sessions.teams import register_team, registered_teams
from actors.webhooks.actor import WebhookSettings
from bus import local
from bus.cluster import LocalCluster
from bus.connection import Bus
from bus.errors import ProvisionRefused, StaffworkError
from bus.health import ProcessIdentity
from bus.lifecycle import install_stop_signals
from bus.paths import data_dir, server_store_dir
from bus.provision import StreamSettings, provision
from bus.server import EmbeddedServer


def server(
    port: Annotated[int, typer.Option(help="Client port (-1 picks a free one).")] = 4222,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    store: Annotated[Path | None, typer.Option(help="JetStream store directory.")] = None,
) -> None:
    """Run a NATS server with JetStream in the foreground (Ctrl-C stops it)."""

    async def go() -> None:
        srv = EmbeddedServer(store or server_store_dir(), host=host, port=port)
        url = await srv.start()
        if store is None:  # the user's default store: other commands find and use this server
            local.announce(
                local.LocalServer(url=url, pid=os.getpid(), mode="server", store=str(srv.store_dir))
            )
        try:
            out.print(
                f"NATS server ready at [bold]{url}[/] (JetStream store {srv.store_dir})", highlight=False
            )
            out.print(f"export STAFFWORK_NATS_URL={url}", highlight=False)
            stop = asyncio.Event()
            install_stop_signals(stop)
            waiter = asyncio.ensure_future(srv.wait())
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if waiter in done:
                waiter.result()  # raises ServerFailed with its [FTL] lines
            else:
                waiter.cancel()
        finally:
            local.withdraw(os.getpid())
            await srv.stop()
        out.print("NATS server stopped")

    run_async(go)


def actor(
    role: Annotated[str, typer.Argument(help=f"One of: {', '.join(ROLES)}.")],
    agents: Annotated[
        str, typer.Option(help="Comma-separated agents to serve (subagent; default: all registered).")
    ] = "",
    db: Annotated[Path | None, typer.Option(help="The collector's SQLite database.")] = None,
    max_agents: Annotated[
        int, typer.Option(min=1, help="The most agents a pool serves (pool; beyond: a warning).")
    ] = AgentSettings().pool_agents,
    otlp: OtlpOption = None,
    allow_private: AllowPrivateOption = False,
    api_host: ApiHostOption = "127.0.0.1",
    api_port: ApiPortOption = 8480,
    nats: NatsOption = None,
    root: RootOption = "sw",
) -> None:
    """Run one actor process against a NATS server (what a container runs). The api role reads its
    keys from STAFFWORK_API_KEYS (WORKSPACE=KEY, comma-separated), never from the command line."""
    if role not in ROLES:
        fail(StaffworkError(f"unknown role {role!r} (roles: {', '.join(ROLES)})"))

    async def go() -> None:
        url = nats or (running.url if (running := local.running_server()) else None)
        if url is None:
            raise StaffworkError("no NATS server: give --nats URL (or start one with staffwork up)")
        async with await Bus.connect(url, root=root, name=f"staffwork-{role}") as bus:
            try:
                await provision(bus)
            except ProvisionRefused as exc:  # a least-privilege user: the admin provisioned
                err.print(f"note: {exc}", highlight=False, markup=False)
            names = [a for a in agents.split(",") if a]
            if role == "subagent" and not names:
                names = sorted({a.name for team in await registered_teams(bus) for a in team.agents})
                if not names:
                    raise StaffworkError("no agents to serve: give --agents a,b or register a team first")
            if otlp:
                try:
                    OtlpExporter(otlp)
                except ValueError as exc:
                    raise StaffworkError(f"--otlp: {exc}") from None
            config = RoleConfig(
                agents=names,
                agent_settings=AgentSettings(pool_agents=max_agents),
                db=db or data_dir() / "trace.db",
                otlp=otlp,
                webhooks=WebhookSettings.from_env(os.environ, allow_private=allow_private),
                api=_api_settings(role, api_host, api_port),
            )
            details = {
                "lead": "lead",
                "subagent": ", ".join(names),
                "pool": f"any agent of any session, {max_agents} at most",
                "collector": f"{config.db}" + (f"; exporting spans to {otlp}" if otlp else ""),
                "api": f"http://{api_host}:{api_port}",
            }.get(role, "")
            ready = f"{role} ready on {url} (root {root!r})" + (f": {details}" if details else "")
            await serve_here(bus, [role], config, ready)

    run_async(go)


def _api_settings(role: str, host: str, port: int) -> ApiSettings | None:
    """The api role's settings, its keys from the environment (the other roles: None)."""
    if role != "api":
        return None
    keys = os.environ.get(API_KEYS_ENV, "")
    if not keys:
        raise StaffworkError(f"the api role needs API keys: set {API_KEYS_ENV}=WORKSPACE=KEY[,...]")
    webhooks = os.environ.get(API_WEBHOOKS_ENV, "")
    return ApiSettings(ApiKeys.parse(keys).with_webhooks(webhooks), host=host, port=port)


async def serve_here(bus: Bus, roles: list[str], config: RoleConfig, ready: str) -> None:
    """Serve ``roles`` in this process until SIGTERM/SIGINT; print ``ready`` once they consume. The
    process is the ``staffwork`` micro service meanwhile (``staffwork ps`` lists it)."""
    stop = asyncio.Event()
    install_stop_signals(stop)
    identity = ProcessIdentity(roles=tuple(roles), agents=tuple(config.agents), restarts=_restarts())
    await serve_roles(
        bus,
        roles,
        config,
        stop,
        on_ready=lambda: err.print(ready, highlight=False, markup=False),
        identity=identity,
    )


def _restarts() -> int:
    """How often ``up`` restarted this process (it says so in :data:`RESTARTS_ENV`)."""
    value = os.environ.get(RESTARTS_ENV, "0")
    try:
        return max(int(value), 0)
    except ValueError:
        raise StaffworkError(f"{RESTARTS_ENV}={value!r} is not a count of restarts") from None


def up(
    port: Annotated[int, typer.Option(help="Client port (-1 picks a free one).")] = -1,
    otlp: OtlpOption = None,
    allow_private: AllowPrivateOption = False,
    api_host: ApiHostOption = "127.0.0.1",
    api_port: ApiPortOption = 8480,
    nats: NatsOption = None,
    root: RootOption = "sw",
    cluster: Annotated[
        int,
        typer.Option(
            "--cluster",
            help="Run a local JetStream cluster of this many nodes (3 or more; streams at R3) "
            "instead of one server.",
        ),
    ] = 0,
) -> None:
    """The embedded server plus every actor as its own process (lead, one worker per agent of the
    registered teams, a pool for any other agent); logs prefixed by role; a process that dies is
    restarted (and the server, or a cluster's node, too); Ctrl-C stops them all gracefully."""

    async def go() -> None:
        if nats is None and (running := local.running_server()) is not None:
            raise StaffworkError(
                f"a staffwork {running.mode} already runs at {running.url} (pid {running.pid}): "
                "use it, or stop it first"
            )
        if cluster and (cluster < 3 or nats is not None):
            raise StaffworkError(
                f"--cluster {cluster}: a local cluster needs 3 or more nodes, and no --nats"
                if cluster < 3
                else "--cluster starts its own servers: give it without --nats"
            )
        async with contextlib.AsyncExitStack() as owned:
            url = nats
            server = None
            settings = StreamSettings()
            nodes: LocalCluster | None = None
            if cluster:
                nodes = await owned.enter_async_context(LocalCluster(data_dir() / "cluster", size=cluster))
                url, settings = nodes.url, nodes.stream_settings()
                out.print(f"a local JetStream cluster of {cluster} nodes: {url}", highlight=False)
            elif url is None:
                server = EmbeddedServer(server_store_dir(), port=port)
                url = await server.start()

                def waiting(count: int) -> None:
                    err.print(f"waiting for {count} staffwork command(s) still using this server")

                await owned.enter_async_context(local.serving(server, "up", on_wait=waiting))
            roles = await _up(url, root, otlp, allow_private, settings, api_address=(api_host, api_port))
            await Supervisor(url, root, roles, server, cluster=nodes).run()
        out.print("staffwork is down")

    run_async(go)


#: the bundled example whose agents `up` gives processes of their own (the others are the pool's)
DEDICATED = "incident"


async def _up(
    url: str,
    root: str,
    otlp: str | None = None,
    allow_private: bool = False,
    settings: StreamSettings | None = None,
    *,
    api_address: tuple[str, int] = ("127.0.0.1", 8480),
) -> list[tuple[str, list[str]]]:
    """Register the bundled teams and say what runs; the processes to supervise (name, arguments)."""
    async with await Bus.connect(url, root=root, name="staffwork-up") as bus:
        await provision(bus, settings=settings)
        bundled: set[str] = set()
        for example in sorted(p.parent.name for p in EXAMPLES.glob("*/team.toml")):
            # the quickstart's team with its data (its deploy API reads it); the others' teams only
            team = (
                load_example(example).team
                if example == DEDICATED
                else load_team(EXAMPLES / example / "team.toml")
            )
            await register_team(bus, team)
            bundled.add(team.name)
        teams = await registered_teams(bus)
    # A worker process per agent of the quickstart's team and of the teams registered on the root;
    # the other bundled examples' agents are the pool's (one process, however many examples there are).
    agent_names = sorted(
        {a.name for t in teams if t.name not in bundled or t.name == DEDICATED for a in t.agents}
    )
    options = {
        "otlp": ["--otlp", otlp] if otlp else [],
        "allow_private": ["--allow-private-webhooks"] * allow_private,
        "api_host": ["--api-host", api_address[0]],
        "api_port": ["--api-port", str(api_address[1])],
    }
    serve_api = bool(os.environ.get(API_KEYS_ENV))
    if serve_api:
        # a typo is one line now, not a restart loop later
        ApiKeys.parse(os.environ[API_KEYS_ENV]).with_webhooks(os.environ.get(API_WEBHOOKS_ENV, ""))
    roles: list[tuple[str, list[str]]] = []
    for role in ROLES.values():  # one process per role (the pool's too), per agent for subagents
        if role.name == "api" and not serve_api:
            continue
        passed = [arg for option in role.options for arg in options.get(option, [])]
        if role.per_agent:
            roles += [(f"agent:{a}", [role.name, "--agents", a, *passed]) for a in agent_names]
        else:
            roles.append((role.name, [role.name, *passed]))
    out.print(f"staffwork is up: NATS at [bold]{url}[/] (root {root!r})", highlight=False)
    out.print(
        f"teams: {', '.join(t.name for t in teams)}; processes: {', '.join(r for r, _ in roles)}",
        highlight=False,
    )
    out.print(f"export STAFFWORK_NATS_URL={url}", highlight=False)
    if serve_api:
        base_url = f"http://{api_address[0]}:{api_address[1]}"
        out.print(f"the Managed Agents API: ANTHROPIC_BASE_URL={base_url}", highlight=False)
    else:
        out.print(f"the Managed Agents API is off: set {API_KEYS_ENV} to serve it", highlight=False)
    return roles
