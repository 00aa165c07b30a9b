"""A finance ledger as a staffwork tool service: a NATS micro service, in Python (nats-py's ``micro``).

``python -m examples.tools.ledger_service --nats nats://127.0.0.1:4222`` serves two tools over a
small, fixed ledger (the same data on every run):

- ``balance(account)``: an account's balance and the date of its last entry;
- ``transactions(account, since?)``: its entries, oldest first, from ``since`` (an ISO date) on.

Each endpoint describes itself in its metadata (``description``, ``input_schema``); each reply is
``{"content": ..., "is_error": ...}`` and names who asked (``requested_by``: the session, thread, agent
and tool call from the ``Staffwork-*`` headers), as a ledger's audit trail would. Bad input (a missing
or unknown account, a malformed date) is an ``is_error`` reply the model can act on; reading an
archived account is a micro error (``410``), the service's own failure. See ``README.md`` beside this
file for the convention.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.micro import add_service
from nats.micro.request import Request, ServiceError

NAME = "ledger"
CURRENCY = "USD"


@dataclass(frozen=True)
class Entry:
    date: str  # ISO date
    amount_cents: int  # positive: money in
    counterparty: str
    memo: str


LEDGER: dict[str, list[Entry]] = {
    "operating": [
        Entry("2024-04-01", 12_500_000, "Series A escrow", "opening transfer"),
        Entry("2024-04-03", -1_845_000, "Northwind Hosting", "April infrastructure"),
        Entry("2024-04-15", 4_210_050, "Acme Retail", "invoice INV-1042"),
        Entry("2024-04-30", -6_400_000, "payroll", "transfer to payroll"),
        Entry("2024-05-02", -1_912_300, "Northwind Hosting", "May infrastructure"),
        Entry("2024-05-10", 3_100_000, "Globex", "invoice INV-1051"),
        Entry("2024-05-14", -250_000, "CardGate", "gateway fees, April"),
    ],
    "payroll": [
        Entry("2024-04-30", 6_400_000, "operating", "transfer from operating"),
        Entry("2024-04-30", -6_285_400, "employees", "April salaries"),
    ],
    "savings": [
        Entry("2024-04-02", 5_000_000, "operating", "reserve"),
        Entry("2024-04-30", 12_917, "First Bank", "interest"),
    ],
}
ARCHIVED = {"legacy-operating": "2023-12-31"}

BALANCE_SCHEMA = {
    "type": "object",
    "properties": {"account": {"type": "string", "enum": sorted(LEDGER), "description": "the account"}},
    "required": ["account"],
    "additionalProperties": False,
}
TRANSACTIONS_SCHEMA = {
    "type": "object",
    "properties": {
        "account": {"type": "string", "enum": sorted(LEDGER), "description": "the account"},
        "since": {"type": "string", "format": "date", "description": "first day (YYYY-MM-DD); absent: all"},
    },
    "required": ["account"],
    "additionalProperties": False,
}


class BadInput(Exception):
    """The caller's mistake: an ``is_error`` reply it can act on."""


def requested_by(request: Request) -> dict[str, str]:
    headers = request.headers or {}
    return {
        "session": headers.get("Staffwork-Session", ""),
        "thread": headers.get("Staffwork-Thread", ""),
        "agent": headers.get("Staffwork-Agent", ""),
        "tool_use_id": headers.get("Staffwork-Tool-Use-Id", ""),
    }


def account_of(arguments: dict[str, Any]) -> str:
    account = arguments.get("account")
    if not isinstance(account, str) or not account:
        raise BadInput("'account' is required: one of " + ", ".join(sorted(LEDGER)))
    if account in ARCHIVED:
        raise ServiceError("410", f"account {account!r} was archived on {ARCHIVED[account]}: ask finance ops")
    if account not in LEDGER:
        raise BadInput(f"no account {account!r} (known: {', '.join(sorted(LEDGER))})")
    return account


def dollars(cents: int) -> str:
    return f"{cents / 100:.2f}"


def balance(arguments: dict[str, Any]) -> dict[str, Any]:
    account = account_of(arguments)
    entries = LEDGER[account]
    return {
        "account": account,
        "currency": CURRENCY,
        "balance": dollars(sum(e.amount_cents for e in entries)),
        "as_of": entries[-1].date,
    }


def transactions(arguments: dict[str, Any]) -> dict[str, Any]:
    account = account_of(arguments)
    since = arguments.get("since")
    if since is not None:
        try:
            since = dt.date.fromisoformat(str(since)).isoformat()
        except ValueError:
            raise BadInput(f"'since' must be a date as YYYY-MM-DD, not {since!r}") from None
    rows = [
        {"date": e.date, "amount": dollars(e.amount_cents), "counterparty": e.counterparty, "memo": e.memo}
        for e in LEDGER[account]
        if since is None or e.date >= since
    ]
    return {"account": account, "currency": CURRENCY, "since": since, "transactions": rows}


def endpoint(fn: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[Request], Awaitable[None]]:
    """A micro handler around ``fn``: JSON in, ``{"content", "is_error"}`` out; a ``ServiceError``
    it raises becomes a micro error reply (nats-py's endpoint does that)."""

    async def handler(request: Request) -> None:
        try:
            arguments = json.loads(request.data or b"{}")
            if not isinstance(arguments, dict):
                raise BadInput(f"the input must be a JSON object, not {type(arguments).__name__}")
            content = {**fn(arguments), "requested_by": requested_by(request)}
            reply = {"content": content, "is_error": False}
        except (BadInput, json.JSONDecodeError) as exc:
            reply = {"content": str(exc), "is_error": True}
        await request.respond(json.dumps(reply).encode())

    return handler


async def serve(url: str, name: str) -> None:
    async def error_cb(exc: Exception) -> None:
        print(f"{name} service: NATS error: {exc!r}", file=sys.stderr, flush=True)

    nc = await nats.connect(url, name=f"{name}-service", error_cb=error_cb)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    service = await add_service(
        nc, name=name, version="1.0.0", description="The company ledger: account balances and transactions."
    )
    group = service.add_group(name=name)  # subjects <name>.balance, <name>.transactions
    await group.add_endpoint(
        name="balance",
        handler=endpoint(balance),
        metadata={
            "description": "The current balance of a ledger account (in USD) and the date of its last entry.",
            "input_schema": json.dumps(BALANCE_SCHEMA),
        },
    )
    await group.add_endpoint(
        name="transactions",
        handler=endpoint(transactions),
        metadata={
            "description": "The entries of a ledger account, oldest first: date, amount (USD, negative "
            "for money out), counterparty, memo. Optionally only those from a date on.",
            "input_schema": json.dumps(TRANSACTIONS_SCHEMA),
        },
    )
    # The endpoints' subscriptions have reached the server after two round trips: nats-py (2.16)
    # writes a flush's PING ahead of commands still queued for its writer, such as a new SUB.
    await nc.flush()
    await nc.flush()
    print(f"{name} service ready on {url}", flush=True)
    try:
        await stop.wait()
    finally:
        try:  # in-flight requests are answered; bounded: the server may be gone already
            async with asyncio.timeout(5):
                await service.stop()
                await nc.drain()
        except (TimeoutError, OSError, nats.errors.Error):
            with contextlib.suppress(OSError, nats.errors.Error):
                await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nats", default=os.environ.get("STAFFWORK_NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--name", default=NAME, help="the service's name (default: %(default)s)")
    args = parser.parse_args()
    asyncio.run(serve(args.nats, args.name))


if __name__ == "__main__":
    main()
