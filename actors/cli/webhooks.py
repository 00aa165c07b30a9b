"""The ``staffwork webhooks`` commands: send a signed sample event to an endpoint (``test``), the
endpoints' state (``list``: failures, disabled, deliveries skipped), and ``enable`` a disabled one
again."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Annotated

import typer

from actors.cli.common import AllowPrivateOption, NatsOption, RootOption, bus_target, err, out, run_async
from actors.webhooks.actor import (
    EndpointState,
    WebhookSettings,
    enable_endpoint,
    endpoint_states,
    send_test_event,
)
from bus.provision import provision

webhooks_app = typer.Typer(help="Webhooks: send a signed sample event to an endpoint.", no_args_is_help=True)


@webhooks_app.command("test")
def webhooks_test(
    url: Annotated[str, typer.Argument(help="The endpoint.")],
    secret: Annotated[
        str, typer.Option(envvar="STAFFWORK_WEBHOOK_SECRET", help="The signing secret (whsec_..., base64).")
    ],
    allow_private: AllowPrivateOption = False,
) -> None:
    """Send a signed sample event (Standard Webhooks), and print the endpoint's answer."""

    async def go() -> tuple[int, str]:
        settings = WebhookSettings.from_env(os.environ, allow_private=allow_private)
        return await send_test_event(url, secret, settings=settings)

    status, body = run_async(go)
    out.print(f"{url} answered {status}" + (f": {body}" if body else ""), highlight=False, markup=False)
    if not 200 <= status < 300:
        raise typer.Exit(1)


@webhooks_app.command("list")
def webhooks_list(nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Endpoints that have been called: consecutive failures, whether (why, since when) disabled, and
    deliveries skipped without an attempt (and why the last one was)."""

    async def go() -> list[EndpointState]:
        async with bus_target(nats, root, name="staffwork-webhooks") as target:
            await provision(target.bus)
            return await endpoint_states(target.bus)

    states = run_async(go)
    if not states:
        err.print("no webhook endpoint has been called yet", highlight=False)
    for state in states:
        out.print(_state_line(state), highlight=False, markup=False)


def _state_line(state: EndpointState) -> str:
    def at(unix: float) -> str:
        return datetime.fromtimestamp(unix).astimezone().strftime("%Y-%m-%d %H:%M:%S")

    line = f"{state.url}  failures {state.failures}  "
    if state.disabled:
        line += f"disabled since {at(state.since)}: {state.reason} (staffwork webhooks enable URL)"
    else:
        line += "enabled"
    if state.skipped:
        line += f"  skipped {state.skipped} (the last at {at(state.skipped_at)}: {state.skip_reason})"
    return line


@webhooks_app.command("enable")
def webhooks_enable(url: str, nats: NatsOption = None, root: RootOption = "sw") -> None:
    """Enable a disabled endpoint again (its deliveries are attempted from now on)."""

    async def go() -> bool:
        async with bus_target(nats, root, name="staffwork-webhooks") as target:
            await provision(target.bus)
            return await enable_endpoint(target.bus, url)

    changed = run_async(go)
    out.print(f"{url}: {'enabled' if changed else 'was not disabled'}", highlight=False, markup=False)
