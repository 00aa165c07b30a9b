"""One staffwork role as a process on its own least-privilege NATS user (tests/test_permissions.py).

``python -m tests.perm_actor ROLE URL ROOT [--agents a,b] [--db PATH]``, with the user's
``STAFFWORK_NATS_USER``, ``STAFFWORK_NATS_PASSWORD`` and ``STAFFWORK_NATS_INBOX_PREFIX`` in the
environment (its credentials file). What ``staffwork actor ROLE`` does (which now also runs on
such a user: tests/test_permissions.py runs ``staffwork actor api`` so), but on the offline model,
with webhooks to private addresses allowed, without trying to provision (the admin user's job), and
reporting each refusal: it prints ``READY`` once the role consumes, and ``PERMISSION_VIOLATION
<what>`` on stderr for each publish or subscription refused.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from actors.agent.models.offline import OfflineModel
from actors.roles import AgentSettings, RoleConfig, serve_roles
from actors.webhooks.actor import WebhookSettings
from bus.connection import Bus
from bus.health import ProcessIdentity
from bus.lifecycle import install_stop_signals
from bus.logs import configure_logging
from bus.subjects import Subjects


async def connect(url: str, root: str, name: str) -> Bus:
    online = asyncio.Event()

    async def error_cb(exc: Exception) -> None:
        if "permissions violation" in str(exc).lower():
            print(f"PERMISSION_VIOLATION {exc}", file=sys.stderr, flush=True)

    async def disconnected_cb() -> None:
        online.clear()

    async def reconnected_cb() -> None:
        online.set()

    nc: NATS = await nats.connect(
        url,
        name=name,
        user=os.environ["STAFFWORK_NATS_USER"],
        password=os.environ["STAFFWORK_NATS_PASSWORD"],
        inbox_prefix=os.environ["STAFFWORK_NATS_INBOX_PREFIX"],
        connect_timeout=5,
        max_reconnect_attempts=-1,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        drain_timeout=5,
    )
    return Bus(nc, Subjects(root), url, online)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role")
    parser.add_argument("url")
    parser.add_argument("root")
    parser.add_argument("--agents", default="")
    parser.add_argument("--db", default=None)
    args = parser.parse_args()
    configure_logging("info", json=True)
    agents = [a for a in args.agents.split(",") if a]
    config = RoleConfig(
        model=OfflineModel(),
        agents=agents,
        db=Path(args.db) if args.db else None,
        agent_settings=AgentSettings(grace=5.0),
        webhooks=WebhookSettings(allow_private=True),  # the test's receiver is on 127.0.0.1
    )

    async def run() -> None:
        stop = asyncio.Event()
        install_stop_signals(stop)
        bus = await connect(args.url, args.root, f"perm-{args.role}")
        try:
            await serve_roles(
                bus,
                [args.role],
                config,
                stop,
                on_ready=lambda: print("READY", flush=True),
                identity=ProcessIdentity(roles=(args.role,), agents=tuple(agents)),
            )
        finally:
            await bus.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
