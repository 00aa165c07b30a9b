"""Tools served by NATS micro services (``actors.agent.tools.services``), against the real example
services as processes (the Python ledger, and the JavaScript status page after ``npm ci``) on a real
nats-server, run the way an agent runs them (``RemoteTool.run``). Misbehaving services (garbage, no
answer) are tiny raw responders in the test; each test names its services uniquely (``$SRV`` subjects
are not under the bus's root)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from actors.agent.tools.base import RemoteTool, ToolContext, ToolSourceError
from actors.agent.tools.services import ServiceDirectory, service_tools
from bus.connection import Bus
from schemas.team import ToolService
from tests.helpers import NatsServer, Running, ledger, statuspage, tool_context, unique

SID = "ses_svc"
WHO = {"session": SID, "thread": "thr_1", "agent": "logs", "tool_use_id": "toolu_1"}
#: what a call to a service killed a moment ago says: nothing answers, or the server had not yet
#: noticed and the request went unanswered
GONE = r": the service is not running \(nothing answers requests on '[\w.-]+'\)| did not answer within 3s"


@pytest.fixture
def ctx(bus: Bus) -> ToolContext:
    return tool_context(bus, SID)


async def tools_of(bus: Bus, name: str, timeout_s: float = 5.0) -> dict[str, RemoteTool]:
    return {t.remote_name: t for t in await service_tools(bus, ToolService(name=name, timeout_s=timeout_s))}


async def content(tool: RemoteTool, ctx: ToolContext, **arguments: Any) -> Any:
    """The JSON content of a successful call."""
    result = await tool.run(ctx, arguments)
    assert not result.is_error, result.content
    assert result.tool_use_id == "toolu_1"
    return json.loads(result.content)


async def error(tool: RemoteTool, ctx: ToolContext, **arguments: Any) -> str:
    result = await tool.run(ctx, arguments)
    assert result.is_error, result.content
    return result.content


async def killed(running: Running) -> None:
    """``kill -9`` the service and reap it."""
    running.process.kill()
    async with asyncio.timeout(10):
        await running.process.wait()


Handler = Callable[[Msg], Awaitable[None]]


async def raw_service(nc: NATS, handlers: dict[str, Handler | None]) -> None:
    """Plain subscriptions answering as ``handlers`` say (``None``: subscribed, never answers), on the
    server once this returns."""

    async def ignore(msg: Msg) -> None:
        return None

    for subject, handler in handlers.items():
        await nc.subscribe(subject, cb=handler or ignore)
    # two round trips: nats-py (2.16) writes a flush's PING ahead of a SUB still queued for its writer
    await nc.flush()
    await nc.flush()


def answer(data: bytes) -> Handler:
    async def respond(msg: Msg) -> None:
        await msg.respond(data)

    return respond


def info(name: str, *endpoints: tuple[str, dict[str, str]]) -> bytes:
    """A micro INFO response listing ``endpoints`` (name, metadata), each on ``<name>.<endpoint>``."""
    return json.dumps(
        {
            "type": "io.nats.micro.v1.info_response",
            "name": name,
            "id": "raw1",
            "version": "0.0.1",
            "description": "a hand-made service",
            "endpoints": [
                {"name": e, "subject": f"{name}.{e}", "queue_group": "q", "metadata": meta}
                for e, meta in endpoints
            ],
            "metadata": {},
        }
    ).encode()


# --- the Python example: the ledger ----------------------------------------------------------------


async def test_ledger_endpoints_are_tools_with_their_schema_and_description(
    bus: Bus, nats_server: NatsServer
) -> None:
    async with ledger(nats_server) as service:
        tools = await tools_of(bus, service.name, timeout_s=7.5)
    assert sorted(tools) == ["balance", "transactions"]
    balance = tools["balance"]
    assert (balance.kind, balance.source, balance.name) == (
        "service",
        service.name,
        f"{service.name}__balance",
    )
    assert balance.timeout_s == 7.5
    assert balance.description.startswith("The current balance of a ledger account")
    assert balance.input_schema["required"] == ["account"]
    assert balance.input_schema["properties"]["account"]["enum"] == ["operating", "payroll", "savings"]
    assert set(tools["transactions"].input_schema["properties"]) == {"account", "since"}
    assert balance.spec.name == f"{service.name}__balance"


async def test_ledger_calls_return_content_and_carry_who_asked(
    bus: Bus, nats_server: NatsServer, ctx: ToolContext
) -> None:
    async with ledger(nats_server) as service:
        tools = await tools_of(bus, service.name)
        balance = await content(tools["balance"], ctx, account="operating")
        since = await content(tools["transactions"], ctx, account="operating", since="2024-05-01")
    assert balance == {
        "account": "operating",
        "currency": "USD",
        "balance": "94027.50",
        "as_of": "2024-05-14",
        "requested_by": WHO,
    }
    assert [row["date"] for row in since["transactions"]] == ["2024-05-02", "2024-05-10", "2024-05-14"]
    assert since["requested_by"] == WHO


async def test_ledger_bad_input_and_service_errors_are_error_results(
    bus: Bus, nats_server: NatsServer, ctx: ToolContext
) -> None:
    async with ledger(nats_server) as service:
        tools = await tools_of(bus, service.name)
        unknown = await error(tools["balance"], ctx, account="petty-cash")
        bad_date = await error(tools["transactions"], ctx, account="savings", since="last week")
        archived = await error(tools["transactions"], ctx, account="legacy-operating")
    assert unknown == "no account 'petty-cash' (known: operating, payroll, savings)"
    assert bad_date == "'since' must be a date as YYYY-MM-DD, not 'last week'"
    assert archived == (
        f"tool service {service.name!r}: tool 'transactions' failed: "
        "account 'legacy-operating' was archived on 2023-12-31: ask finance ops (code 410)"
    )


# --- the JavaScript example: the status page ------------------------------------------------------


async def test_statuspage_in_javascript_serves_its_tools(
    bus: Bus, nats_server: NatsServer, ctx: ToolContext, node_modules: Path
) -> None:
    async with statuspage(nats_server) as service:
        tools = await tools_of(bus, service.name)
        assert sorted(tools) == ["component_status", "open_incidents"]
        status = tools["component_status"]
        assert status.description.startswith("The current status of one component")
        assert status.input_schema["required"] == ["component"]
        assert tools["open_incidents"].input_schema == {"type": "object"}  # no input_schema metadata

        payments = await content(status, ctx, component="payments")
        incidents = await content(tools["open_incidents"], ctx)
        unknown = await error(status, ctx, component="mainframe")
        missing = await error(status, ctx)
    assert payments["status"] == "partial_outage"
    assert payments["incident"]["id"] == "INC-311"
    assert payments["requested_by"] == WHO
    assert [i["id"] for i in incidents["incidents"]] == ["INC-311"]
    assert unknown == (
        f"tool service {service.name!r}: tool 'component_status' failed: "
        "no component 'mainframe' on the status page (code 404)"
    )
    assert missing == "'component' is required: one of api, checkout, payments, search"


# --- failures: the service is gone, answers garbage, or does not answer ----------------------------


@pytest.mark.parametrize("language", ["python", "javascript"])
async def test_a_service_killed_between_calls_gives_a_clear_error(
    bus: Bus, nats_server: NatsServer, ctx: ToolContext, request: pytest.FixtureRequest, language: str
) -> None:
    if language == "javascript":
        request.getfixturevalue("node_modules")
        start, tool, arguments = statuspage, "component_status", {"component": "api"}
    else:
        start, tool, arguments = ledger, "balance", {"account": "payroll"}
    async with start(nats_server) as service:
        tools = await tools_of(bus, service.name, timeout_s=3)
        await content(tools[tool], ctx, **arguments)
        await killed(service)
        message = await error(tools[tool], ctx, **arguments)
    assert re.fullmatch(f"tool service {service.name!r}: tool {tool!r}({GONE})", message), message


async def test_nothing_running_raises_tool_source_error_naming_the_service(bus: Bus) -> None:
    name = unique("nobody")
    with pytest.raises(ToolSourceError) as caught:
        await service_tools(bus, ToolService(name=name, timeout_s=5))
    assert str(caught.value) == f"no NATS service {name!r} is running: nothing answers $SRV.INFO.{name}"


async def test_garbage_or_silence_at_discovery_raises_tool_source_error(bus: Bus, nc: NATS) -> None:
    garbage, silent, typeless = unique("garbage"), unique("silent"), unique("typeless")
    await raw_service(
        nc,
        {
            f"$SRV.INFO.{garbage}": answer(b"<html>502 Bad Gateway</html>"),
            f"$SRV.INFO.{silent}": None,
            f"$SRV.INFO.{typeless}": answer(b'{"type": "io.nats.micro.v1.ping_response", "name": "x"}'),
        },
    )
    with pytest.raises(ToolSourceError, match=r"not a micro info response .*'<html>502 Bad Gateway</html>'"):
        await service_tools(bus, ToolService(name=garbage, timeout_s=5))
    with pytest.raises(ToolSourceError, match=r"type 'io.nats.micro.v1.ping_response'"):
        await service_tools(bus, ToolService(name=typeless, timeout_s=5))
    with pytest.raises(ToolSourceError) as caught:
        await service_tools(bus, ToolService(name=silent, timeout_s=0.3))
    assert str(caught.value) == f"NATS service {silent!r} did not answer $SRV.INFO.{silent} within 0.3s"


async def test_an_endpoint_with_a_bad_schema_is_left_out(bus: Bus, nc: NATS) -> None:
    name = unique("schemas")
    listing = info(
        name,
        ("good", {"description": "works", "input_schema": '{"type": "object", "properties": {}}'}),
        ("broken", {"description": "a typo", "input_schema": '{"type": "object",'}),
        ("array", {"description": "not an object", "input_schema": '{"type": "array"}'}),
        ("bare", {}),
    )
    await raw_service(nc, {f"$SRV.INFO.{name}": answer(listing)})
    tools = await tools_of(bus, name)
    assert sorted(tools) == ["bare", "good"]
    assert tools["bare"].description == "a hand-made service"  # the service's own description
    assert tools["bare"].input_schema == {"type": "object"}


async def test_garbage_and_silent_replies_are_error_results(bus: Bus, nc: NATS, ctx: ToolContext) -> None:
    name = unique("raw")
    await raw_service(
        nc,
        {
            f"$SRV.INFO.{name}": answer(info(name, ("garbage", {}), ("silent", {}), ("unshaped", {}))),
            f"{name}.garbage": answer(b"Traceback (most recent call last): " + b"x" * 500),
            f"{name}.unshaped": answer(b'{"result": 42}'),
            f"{name}.silent": None,
        },
    )
    tools = await tools_of(bus, name, timeout_s=0.3)
    garbage = await error(tools["garbage"], ctx)
    unshaped = await error(tools["unshaped"], ctx)
    silent = await error(tools["silent"], ctx)
    shape = 'answered with something that is not {"content": ..., "is_error": ...} JSON'
    assert garbage.startswith(
        f"tool service {name!r}: tool 'garbage' {shape} (535 bytes): 'Traceback (most recent call last): xxx"
    ), garbage
    assert garbage.endswith("xxx'...")
    assert unshaped == f"tool service {name!r}: tool 'unshaped' {shape} (14 bytes): '{{\"result\": 42}}'"
    assert silent == f"tool service {name!r}: tool 'silent' did not answer within 0.3s"


async def test_a_listing_is_reused_for_its_ttl(bus: Bus, nats_server: NatsServer) -> None:
    async with ledger(nats_server) as service:
        spec = ToolService(name=service.name, timeout_s=3)
        first = await service_tools(bus, spec)
        await killed(service)
        again = await service_tools(bus, spec)  # from the cache: no request
        assert [t.name for t in again] == [t.name for t in first]
        with pytest.raises(ToolSourceError, match=rf"NATS service {service.name!r}"):
            await ServiceDirectory(ttl=0).tools(bus, spec)


async def test_callers_at_once_share_one_discovery_and_its_failure(bus: Bus, nc: NATS) -> None:
    answering, silent = unique("shared"), unique("hung")
    asked: list[str] = []

    async def listing(msg: Msg) -> None:
        asked.append(msg.subject)
        await msg.respond(info(answering, ("lookup", {})))

    async def ignore(msg: Msg) -> None:
        asked.append(msg.subject)

    await raw_service(nc, {f"$SRV.INFO.{answering}": listing, f"$SRV.INFO.{silent}": ignore})
    directory = ServiceDirectory()
    found = await asyncio.gather(*[directory.tools(bus, ToolService(name=answering)) for _ in range(5)])
    assert [[t.remote_name for t in tools] for tools in found] == [["lookup"]] * 5
    hung = ToolService(name=silent, timeout_s=0.3)
    failed = await asyncio.gather(*[directory.tools(bus, hung) for _ in range(5)], return_exceptions=True)
    assert {str(exc) for exc in failed} == {
        f"NATS service {silent!r} did not answer $SRV.INFO.{silent} within 0.3s"
    }
    assert all(isinstance(exc, ToolSourceError) for exc in failed)
    assert asked == [f"$SRV.INFO.{answering}", f"$SRV.INFO.{silent}"]
