"""The ``staffwork webhooks`` commands: send a signed sample event to an endpoint (``test``), the
endpoints' failure state (``list``), and ``enable`` a disabled one again."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from actors.cli.common import NatsOption, RootOption, bus_target, err, out, run_async
from actors.webhooks.actor import enable_endpoint, endpoint_states
from actors.webhooks.http import send_test_event
from bus.provision import provision

webhooks_app = typer.Typer(help="Webhooks: send a signed sample event to an endpoint.", no_args_is_help=True)


@webhooks_app.command("test")
def webhooks_test(
    url: Annotated[str, typer.Argument(help="The endpoint.")],
    secret: Annotated[
        str, typer.Option(envvar="STAFFWORK_WEBHOOK_SECRET", help="The signing secret (whsec_..., base64).")
    ],
    allow_private: Annotated[
        bool, typer.Option("--allow-private", help="Allow a private or loopback address.")
    ] = False,
) -> None:
    """Send a signed sample event (Standard Webhooks), and print the endpoint's answer."""

    async def go() -> tuple[int, str]:
        return await send_test_event(url, secret, allow_private=allow_private)

    status, body = run_async(go)
    out.print(f"{url} answered {status}" + (f": {body}" if body else ""), highlight=False, markup=False)
    if not 200 <= status < 300:
        raise typer.Exit(1)


@webhooks_app.command("list")
def webhooks_list(nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Endpoints that have been called: consecutive failures, and whether (and why) disabled."""

    async def go() -> list[Any]:
        async with bus_target(nats, root, name="staffwork-webhooks") as target:
            await provision(target.bus)
            return await endpoint_states(target.bus)

    states = run_async(go)
    if not states:
        err.print("no webhook endpoint has been called yet", highlight=False)
    for state in states:
        status = f"disabled: {state.reason}" if state.disabled else "enabled"
        out.print(f"{state.url}  failures {state.failures}  {status}", highlight=False, markup=False)


@webhooks_app.command("enable")
def webhooks_enable(url: str, nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Enable a disabled endpoint again (its deliveries are attempted from now on)."""

    async def go() -> bool:
        async with bus_target(nats, root, name="staffwork-webhooks") as target:
            await provision(target.bus)
            return await enable_endpoint(target.bus, url)

    changed = run_async(go)
    out.print(f"{url}: {'enabled' if changed else 'was not disabled'}", highlight=False, markup=False)
