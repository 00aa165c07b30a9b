"""Sessions whose agents reach real systems: an MCP server over stdio and over HTTP, run by the worker
that serves the agent, and a NATS tool service in another process. And when those systems fail: a
server that does not start, an allowlist naming a tool the server does not offer, a service nobody
runs, a worker killed in the middle of an MCP call."""

from __future__ import annotations

import asyncio
import io
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from rich.console import Console

from actors.agent.models.offline import OfflineModel
from actors.client import Client
from actors.roles import running_agents
from actors.views.tree import render
from bus.connection import Bus
from schemas.session import SessionSubmit
from schemas.team import parse_team
from schemas.trace import AgentToolResult, AgentToolUse, AnyTraceEvent, ToolDenied, ToolSourceFailed
from tests.helpers import NatsServer, ledger, ready_process, statuspage, submit, wait_result

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "mcp_server.py"
TOKEN = "fixture-token-4711"


async def session_events(bus: Bus, session_id: str) -> list[AnyTraceEvent]:
    events: list[AnyTraceEvent] = []
    async with asyncio.timeout(30):
        async for event in Client(bus).events(session_id):
            events.append(event)
    return events


def tree_text(session_id: str, events: list[AnyTraceEvent]) -> str:
    console = Console(width=200, file=io.StringIO(), record=True)
    console.print(render(session_id, events))
    return console.export_text()


@pytest.fixture
async def http_mcp(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[str]:
    """The fixture MCP server over streamable HTTP, requiring a bearer token; its URL."""
    monkeypatch.setenv("MCP_FIXTURE_TOKEN", TOKEN)  # the server's, and the worker's ${MCP_FIXTURE_TOKEN}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(FIXTURE), "http", "--port", "0", stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("READY "), line
        yield line.split()[1]
    finally:
        proc.kill()
        await proc.communicate()


def reach_team(ledger: str, status: str, url: str) -> str:
    return f"""
name = "reach"

[lead]
name = "lead"

[[agents]]
name = "deploys"
description = "asks the deploy system (an MCP server over stdio)"

[[agents.mcp_servers]]
name = "fixture"
command = ["python", "{FIXTURE}", "stdio"]
env = {{ FIXTURE_REGION = "${{FIXTURE_REGION}}" }}
tools = ["echo", "add", "env"]

[[agents.playbook.calls]]
tool = "fixture__echo"
input = {{ text = "deploys asked about {{task}}" }}

[[agents.playbook.calls]]
tool = "fixture__add"
input = {{ a = 20, b = 22 }}

[[agents.playbook.calls]]
tool = "fixture__env"
input = {{ name = "FIXTURE_REGION" }}

[[agents.playbook.calls]]
tool = "fixture__env"
input = {{ name = "WORKER_SECRET" }}

[[agents]]
name = "web"
description = "asks a remote MCP server over HTTP"

[[agents.mcp_servers]]
name = "remote"
url = "{url}"
headers = {{ Authorization = "Bearer ${{MCP_FIXTURE_TOKEN}}" }}

[[agents.playbook.calls]]
tool = "remote__echo"
input = {{ text = "over http" }}

[[agents]]
name = "finance"
description = "reads the ledger (a NATS tool service)"

[[agents.services]]
name = "{ledger}"
tools = ["balance"]

[[agents.playbook.calls]]
tool = "{ledger}__balance"
input = {{ account = "savings" }}

[[agents]]
name = "status"
description = "reads the status page (a NATS tool service in JavaScript)"

[[agents.services]]
name = "{status}"

[[agents.playbook.calls]]
tool = "{status}__component_status"
input = {{ component = "payments" }}
"""


async def test_a_session_reaches_mcp_servers_and_tool_services(
    nats_server: NatsServer, bus: Bus, http_mcp: str, node_modules: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FIXTURE_REGION", "eu-west")
    monkeypatch.setenv("WORKER_SECRET", "must-not-leak")  # in the worker, not declared for the server
    async with ledger(nats_server) as python_service, statuspage(nats_server) as js_service:
        team = parse_team(reach_team(python_service.name, js_service.name, http_mcp), source="reach.toml")
        async with running_agents(bus, OfflineModel(), agents=["deploys", "web", "finance", "status"]):
            session_id = await submit(bus, SessionSubmit(task="checkout", team_spec=team))
            result = await wait_result(bus, session_id, timeout=60)
    ledger_name, status_name = python_service.name, js_service.name
    report = result.final_text
    assert result.status == "idle", report
    assert "deploys asked about checkout" in report
    assert "42" in report
    assert "eu-west" in report  # declared in env: the server sees it
    assert "must-not-leak" not in report
    assert "<unset>" in report
    assert "over http" in report
    assert "partial_outage" in report  # from the JavaScript service
    assert '"balance": "50129.17"' in report.replace(" ", "").replace('":"', '": "')

    events = await session_events(bus, session_id)
    uses = [e for e in events if isinstance(e, AgentToolUse)]
    served = {(e.agent, e.name): (e.kind, e.source) for e in uses}
    assert served[("deploys", "fixture__add")] == ("mcp", "fixture")
    assert served[("web", "remote__echo")] == ("mcp", "remote")
    assert served[("finance", f"{ledger_name}__balance")] == ("service", ledger_name)
    assert served[("status", f"{status_name}__component_status")] == ("service", status_name)
    results = [e for e in events if isinstance(e, AgentToolResult) and e.kind != "builtin"]
    assert results
    assert [r.content for r in results if r.is_error] == []
    assert all(r.duration_ms > 0 for r in results)
    assert not [e for e in events if isinstance(e, ToolSourceFailed | ToolDenied)]
    tree = tree_text(session_id, events)
    assert "fixture__add(a=20, b=22)" in tree
    assert "mcp fixture" in tree
    assert f"{ledger_name}__balance(account='savings')" in tree
    assert f"service {ledger_name}" in tree


BROKEN = f"""
name = "broken"

[lead]
name = "lead"

[[agents]]
name = "ops"
tools = ["list_files"]

[[agents.mcp_servers]]
name = "fixture"
command = ["python", "{FIXTURE}", "stdio"]
tools = ["echo",
         "nope"]

[[agents.mcp_servers]]
name = "dead"
command = ["python", "-c", "import sys; sys.exit('the deploy system is down for maintenance')"]

[[agents.services]]
name = "ghost"
timeout_s = 2

[[agents.playbook.calls]]
tool = "fixture__echo"
input = {{ text = "still works" }}

[[agents.playbook.calls]]
tool = "fixture__nope"

[[agents.playbook.calls]]
tool = "dead__anything"

[[agents.playbook.calls]]
tool = "ghost__lookup"

[[agents.playbook.calls]]
tool = "fixture__add"
input = {{ a = 1, b = 2 }}
"""


async def test_sources_that_fail_are_one_line_each_and_the_session_goes_on(bus: Bus) -> None:
    team = parse_team(BROKEN, source="broken.toml")
    async with running_agents(bus, OfflineModel(), agents=["ops"]):
        session_id = await submit(bus, SessionSubmit(task="look", team_spec=team))
        result = await wait_result(bus, session_id, timeout=60)
    assert result.status == "idle", result.final_text
    report = result.final_text
    assert "still works" in report
    assert (
        "broken.toml:14: agents[0].mcp_servers[0].tools[1]: tool 'nope' is not offered by MCP server "
        "'fixture' (it offers: "
    ) in report
    assert "broken.toml:17: agents[0].mcp_servers[1]: " in report
    assert "the deploy system is down for maintenance" in report
    assert "broken.toml:21: agents[0].services[0]: no NATS service 'ghost' is running" in report
    assert "tool 'fixture__add' is not available to agent 'ops'" in report  # not in its allowlist

    events = await session_events(bus, session_id)
    failed = {e.source: e for e in events if isinstance(e, ToolSourceFailed)}
    assert set(failed) == {"fixture", "dead", "ghost"}
    assert (failed["dead"].kind, failed["ghost"].kind) == ("mcp", "service")
    assert all("\n" not in e.message for e in failed.values())
    denied = [e for e in events if isinstance(e, ToolDenied)]
    assert [d.name for d in denied] == ["fixture__add"]
    assert sorted(denied[0].allowed) == ["fixture__echo", "list_files"]


KILLED = f"""
name = "killed"

[lead]
name = "lead"

[[agents]]
name = "deploys"

[[agents.mcp_servers]]
name = "fixture"
command = ["python", "{FIXTURE}", "stdio"]
tools = ["slow"]

[[agents.playbook.calls]]
tool = "fixture__slow"
input = {{ seconds = 3 }}
"""


@pytest.mark.slow
async def test_a_worker_killed_in_the_middle_of_an_mcp_call_is_replaced(
    nats_server: NatsServer, bus: Bus
) -> None:
    team = parse_team(KILLED, source="killed.toml")
    client = Client(bus)
    worker = ("tests.agents_proc", nats_server.url, bus.subjects.root, "--agents", "deploys", "--offline")
    async with running_agents(bus, OfflineModel()):  # the lead, in this process
        async with ready_process(*worker) as doomed:
            session_id = await submit(bus, SessionSubmit(task="x", team_spec=team))
            async with asyncio.timeout(30):
                async for event in client.events(session_id):
                    if isinstance(event, AgentToolUse) and event.name == "fixture__slow":
                        break
            doomed.kill()  # kill -9, its MCP call in flight
            await doomed.wait()
        async with ready_process(*worker):
            result = await wait_result(bus, session_id, timeout=60)
    assert result.status == "idle", result.final_text
    assert "slept 3" in result.final_text
