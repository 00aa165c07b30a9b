"""MCP servers' tools (``actors.agent.tools.mcp``) against real servers as processes: the SDK-built
``fixtures/mcp_server.py`` over stdio and over HTTP (behind a bearer token), the hand-written
``fixtures/mcp_raw.py`` (a result-first writer, a stdout that is not JSON-RPC), and commands that
cannot start. Calls go through ``RemoteTool.run``, as an agent's do."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import structlog

from actors.agent.tools import mcp_stdio
from actors.agent.tools.base import RemoteTool, ToolContext, ToolSourceError
from actors.agent.tools.mcp import McpHub
from bus.connection import Bus
from bus.workspace import Workspace
from schemas.conversation import ToolResultBlock
from schemas.team import McpServer
from tests.helpers import tool_context

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SERVER = str(FIXTURES / "mcp_server.py")
RAW = str(FIXTURES / "mcp_raw.py")
TOKEN = "fixture-token-0451"
SID = "ses_mcp"


def stdio(
    *args: str, name: str = "fixture", timeout_s: float = 10.0, env: dict[str, str] | None = None
) -> McpServer:
    """The fixture server over stdio (``args`` after ``stdio``), as a team file declares it."""
    return McpServer(
        name=name, command=["python", SERVER, "stdio", *args], timeout_s=timeout_s, env=env or {}
    )


def raw(mode: str, *, timeout_s: float = 10.0) -> McpServer:
    return McpServer(name="raw", command=["python", RAW, mode], timeout_s=timeout_s)


async def tools_of(hub: McpHub, server: McpServer, agent: str = "logs") -> dict[str, RemoteTool]:
    return {tool.remote_name: tool for tool in await hub.tools(agent, server)}


async def pid_of(tool: RemoteTool, ctx: ToolContext) -> int:
    result = await tool.run(ctx, {})
    assert not result.is_error, result.content
    return int(result.content)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
async def hub() -> AsyncIterator[McpHub]:
    hub = McpHub(environ={"FIXTURE_TOKEN": TOKEN, "WRONG_TOKEN": "nope"})
    try:
        yield hub
    finally:
        await hub.close()


@pytest.fixture
def ctx(bus: Bus) -> ToolContext:
    return tool_context(bus, SID)


@pytest.fixture
async def http_url() -> AsyncIterator[str]:
    """The fixture server over HTTP, requiring ``Bearer TOKEN``: its URL once it listens."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        SERVER,
        "http",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "MCP_FIXTURE_TOKEN": TOKEN},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
        assert line.startswith(b"READY "), line
        yield line.split()[1].decode()
    finally:
        proc.kill()
        await proc.wait()


async def test_stdio_lists_every_tool_and_skips_names_a_model_cannot_see(hub: McpHub) -> None:
    with structlog.testing.capture_logs() as logs:
        tools = await tools_of(hub, stdio())
    assert "echo" in tools
    assert "stubborn" in tools
    echo = tools["echo"]
    assert (echo.name, echo.kind, echo.source, echo.timeout_s) == ("fixture__echo", "mcp", "fixture", 10.0)
    assert echo.description == "Return the text as it came."
    assert echo.input_schema["properties"]["text"]["type"] == "string"
    assert echo.input_schema["required"] == ["text"]
    skipped = {entry["tool"] for entry in logs if entry["event"] == "mcp_tool_skipped"}
    assert skipped == {"dotted.name", "n" * 60}
    assert not {"dotted.name", "n" * 60} & set(tools)
    assert [entry["tools"] for entry in logs if entry["event"] == "mcp_server_ready"] == [13]
    again = await tools_of(hub, stdio())  # listed once per connection
    assert again.keys() == tools.keys()


async def test_stdio_results_become_text_and_errors_are_error_results(hub: McpHub, ctx: ToolContext) -> None:
    tools = await tools_of(hub, stdio())

    async def run(name: str, **arguments: object) -> ToolResultBlock:
        return await tools[name].run(ctx, dict(arguments))

    assert (await run("echo", text="héllo\nworld")).content == "héllo\nworld"
    assert (await run("add", a=2, b=40)).content == "42"
    failed = await run("fail", message="the deploy API is down")
    assert (failed.content, failed.is_error) == ("the deploy API is down", True)
    assert (await run("picture")).content == "a picture:\n[image image/png, 4 bytes]"
    assert (await run("structured")).content == '{"answer": 42}'
    wrong = await run("echo", text=5)  # the server validates, and says so in an error result
    assert wrong.is_error
    assert "valid string" in wrong.content


async def test_http_sends_headers_from_the_environment(hub: McpHub, http_url: str, ctx: ToolContext) -> None:
    server = McpServer(name="web", url=http_url, headers={"Authorization": "Bearer ${FIXTURE_TOKEN}"})
    tools = await tools_of(hub, server)
    assert tools["echo"].name == "web__echo"
    result = await tools["echo"].run(ctx, {"text": "over http"})
    assert (result.content, result.is_error) == ("over http", False)
    too_big = await tools["big"].run(ctx, {"megabytes": 40})
    assert too_big.is_error
    assert "33554432 byte limit" in too_big.content
    assert (await tools["add"].run(ctx, {"a": 1, "b": 1})).content == "2"

    wrong = McpServer(name="web", url=http_url, headers={"Authorization": "Bearer ${WRONG_TOKEN}"})
    with pytest.raises(ToolSourceError, match=r"^MCP server 'web' refused to initialize: .*HTTP 401"):
        await hub.tools("other", wrong)
    nowhere = McpServer(name="gone", url="http://127.0.0.1:9/mcp")
    with pytest.raises(
        ToolSourceError, match=r"^MCP server 'gone' cannot be reached at http://127.0.0.1:9/mcp"
    ):
        await hub.tools("logs", nowhere)


async def test_the_child_sees_the_default_environment_and_its_own_env_only(
    monkeypatch: pytest.MonkeyPatch, ctx: ToolContext
) -> None:
    monkeypatch.setenv("MCP_TEST_SECRET", "s3cret")
    monkeypatch.setenv("MCP_TEST_OTHER", "not for this server")
    server = stdio(env={"API_TOKEN": "Bearer ${MCP_TEST_SECRET}", "LEVEL": "${MCP_TEST_UNSET:-info}"})
    hub = McpHub()  # os.environ
    try:
        env = (await tools_of(hub, server))["env"]

        async def seen(name: str) -> str:
            return (await env.run(ctx, {"name": name})).content

        assert await seen("API_TOKEN") == "Bearer s3cret"
        assert await seen("LEVEL") == "info"
        assert await seen("PATH") == os.environ["PATH"]
        for hidden in ("MCP_TEST_SECRET", "MCP_TEST_OTHER", "PYTEST_CURRENT_TEST"):
            assert await seen(hidden) == "<unset>"
        pid = await pid_of((await tools_of(hub, server))["pid"], ctx)
        changed = stdio(env={"API_TOKEN": "${MCP_TEST_OTHER}"})  # the same name, declared anew
        assert await pid_of((await tools_of(hub, changed))["pid"], ctx) != pid
        assert not alive(pid)
    finally:
        await hub.close()


async def test_a_missing_variable_is_named_with_the_server(hub: McpHub) -> None:
    server = stdio(name="deployapi", env={"API_TOKEN": "${DEPLOY_TOKEN}"})
    with pytest.raises(ToolSourceError) as raised:
        await hub.tools("logs", server)
    assert str(raised.value) == (
        "MCP server 'deployapi' cannot start: env.API_TOKEN needs ${DEPLOY_TOKEN}, "
        "not set in this worker's environment"
    )


async def test_a_slow_call_times_out_and_the_server_serves_on(hub: McpHub, ctx: ToolContext) -> None:
    tools = await tools_of(hub, stdio(timeout_s=1))
    pid = await pid_of(tools["pid"], ctx)
    slow = await tools["slow"].run(ctx, {"seconds": 30})
    assert slow.is_error
    assert slow.content == "MCP server 'fixture': tool 'slow' did not answer within 1s"
    assert (await tools["echo"].run(ctx, {"text": "still here"})).content == "still here"
    assert await pid_of(tools["pid"], ctx) == pid


async def test_big_answers_are_refused_or_spilled_naming_their_size(
    hub: McpHub, ctx: ToolContext, bus: Bus
) -> None:
    tools = await tools_of(hub, stdio())
    pid = await pid_of(tools["pid"], ctx)
    huge = await tools["big"].run(ctx, {"megabytes": 50})  # one 50 MiB line on stdout
    assert huge.is_error
    assert huge.content == (
        "MCP server 'fixture': tool 'big': the answer is 50.0 MiB, over the limit of 32.0 MiB "
        "for one message: ask for less"
    )
    big = await tools["big"].run(ctx, {"megabytes": 5})  # within a message, over what a tool may return
    assert big.is_error
    assert "returned 5,242,880 characters, over the limit of 4,194,304" in big.content
    spilled = await tools["big"].run(ctx, {"megabytes": 0.05})
    assert not spilled.is_error
    assert "tool-outputs/toolu_1.txt" in spilled.content
    stored = await Workspace(bus).read_text(SID, "tool-outputs/toolu_1.txt")
    assert stored == "x" * int(0.05 * 2**20)
    assert await pid_of(tools["pid"], ctx) == pid  # the server was never restarted


async def test_an_oversized_line_fails_its_call_or_else_the_connection(hub: McpHub, ctx: ToolContext) -> None:
    tools = await tools_of(hub, raw("json"))
    pid = await pid_of(tools["pid"], ctx)
    huge = await tools["huge"].run(ctx, {"megabytes": 40})  # result first, id last: found at the end
    assert huge.is_error
    assert "the answer is 40.0 MiB, over the limit of 32.0 MiB" in huge.content
    assert (await tools["huge"].run(ctx, {"megabytes": 0.001})).content == "h" * 1048
    assert await pid_of(tools["pid"], ctx) == pid
    noise = await tools["noise"].run(ctx, {"megabytes": 40})  # no id to find: the connection goes
    assert noise.is_error
    assert noise.content == (
        "MCP server 'raw': tool 'noise': the server wrote a message of 40.0 MiB, over the limit of "
        "32.0 MiB for one message; it is started again on the next call"
    )
    assert await pid_of(tools["pid"], ctx) != pid
    assert not alive(pid)


async def test_a_crash_mid_call_fails_at_once_and_the_next_call_restarts(
    hub: McpHub, ctx: ToolContext
) -> None:
    tools = await tools_of(hub, stdio(timeout_s=60))
    pid = await pid_of(tools["pid"], ctx)
    started = time.monotonic()
    crashed = await tools["crash"].run(ctx, {})
    assert time.monotonic() - started < 5  # not at the call's 60 s deadline
    assert crashed.is_error
    assert crashed.content == (
        "MCP server 'fixture': tool 'crash': the server exited with code 3: fixture: crashing on purpose; "
        "it is started again on the next call"
    )
    assert not alive(pid)
    assert (await tools["echo"].run(ctx, {"text": "back"})).content == "back"
    assert await pid_of(tools["pid"], ctx) != pid


async def test_a_server_that_dies_for_good_gives_an_error_per_call(
    hub: McpHub, ctx: ToolContext, tmp_path: Path
) -> None:
    tools = await tools_of(hub, stdio("--once", str(tmp_path / "ran")))
    await tools["crash"].run(ctx, {})
    for _ in range(2):  # one restart attempt per call, each failing with why
        echo = await tools["echo"].run(ctx, {"text": "anyone?"})
        assert echo.is_error
        assert echo.content.startswith("MCP server 'fixture': tool 'echo': the server exited with code 1: ")
        assert "fixture: already ran once" in echo.content


@pytest.mark.parametrize(
    ("command", "error"),
    [
        (
            ["staffwork-no-such-mcp-server"],
            r"could not be started \(staffwork-no-such-mcp-server\): \[Errno 2\]",
        ),
        (
            ["python", "-c", "import staffwork_no_such_module"],
            r"exited with code 1: ModuleNotFoundError: No module named 'staffwork_no_such_module'$",
        ),
        (
            ["python", RAW, "garbage"],
            r"did not initialize within 1s \(it wrote what is not JSON-RPC on stdout: ",
        ),
    ],
    ids=["no-such-command", "raises", "garbage"],
)
async def test_a_server_that_cannot_start_raises_naming_why(
    hub: McpHub, command: list[str], error: str
) -> None:
    with pytest.raises(ToolSourceError, match=r"^MCP server 'broken' " + error):
        await hub.tools("logs", McpServer(name="broken", command=command, timeout_s=1))


async def test_concurrent_callers_share_one_server(hub: McpHub, ctx: ToolContext) -> None:
    with structlog.testing.capture_logs() as logs:
        listings = await asyncio.gather(*(tools_of(hub, stdio()) for _ in range(5)))
    assert len([entry for entry in logs if entry["event"] == "mcp_server_ready"]) == 1
    tools = listings[0]
    started = time.monotonic()
    results = await asyncio.gather(
        *(tools["slow"].run(ctx, {"seconds": 1}) for _ in range(10)),
        *(tools["add"].run(ctx, {"a": i, "b": i}) for i in range(20)),
    )
    assert time.monotonic() - started < 5  # 10 s one after another
    assert [r.content for r in results[:10]] == ["slept 1.0"] * 10
    assert [r.content for r in results[10:]] == [str(2 * i) for i in range(20)]


async def test_close_stops_every_server_and_is_idempotent(ctx: ToolContext) -> None:
    hub = McpHub()
    pids = [await pid_of((await tools_of(hub, stdio(), agent))["pid"], ctx) for agent in ("logs", "metrics")]
    assert len(set(pids)) == 2  # one server per agent
    echo = (await tools_of(hub, stdio()))["echo"]
    await hub.close()
    assert not any(alive(pid) for pid in pids)
    await hub.close()
    after = await echo.run(ctx, {"text": "late"})
    assert after.is_error
    assert "shutting down" in after.content
    with pytest.raises(ToolSourceError, match="shutting down"):
        await hub.tools("logs", stdio())


async def test_a_hung_server_does_not_hang_close(monkeypatch: pytest.MonkeyPatch, ctx: ToolContext) -> None:
    monkeypatch.setattr(mcp_stdio, "EXIT_GRACE", 0.3)
    hub = McpHub()
    tools = await tools_of(hub, stdio(timeout_s=1))
    pid = await pid_of(tools["pid"], ctx)
    stubborn = await tools["stubborn"].run(ctx, {})  # blocked, deaf to stdin's end and to SIGTERM
    assert stubborn.content == "MCP server 'fixture': tool 'stubborn' did not answer within 1s"
    started = time.monotonic()
    await hub.close()
    assert time.monotonic() - started < 3
    assert not alive(pid)


def test_an_oversized_line_is_counted_not_kept_and_its_response_id_found() -> None:
    lines = mcp_stdio._Lines(100)
    head = b'{"jsonrpc":"2.0","id":7,"result":{"content":[{"type":"text","text":"'
    out = lines.feed(head + b"a" * 300) + lines.feed(b"a" * 300 + b'"}]}}\n{"jsonrpc"') + lines.feed(b":1}\n")
    assert len(out) == 2
    assert out[1] == b'{"jsonrpc":1}'
    over = out[0]
    assert isinstance(over, mcp_stdio._Oversized)
    assert (over.size, over.response_id()) == (len(head) + 605, 7)
    tail_first = mcp_stdio._Oversized(
        10**8, b'{"result": {"content": [', b'"}]}, "jsonrpc": "2.0", "id": "a-1"}'
    )
    assert tail_first.response_id() == "a-1"
    nested = mcp_stdio._Oversized(10**8, b'{"result": {"content": [', b'"id": 4}}')
    request = mcp_stdio._Oversized(10**8, b'{"jsonrpc":"2.0","id":5,"method":"sampling/createMessage"', b"}")
    assert nested.response_id() is None
    assert request.response_id() is None


async def test_a_worker_given_its_team_starts_the_agents_servers_before_any_request(
    bus: Bus, ctx: ToolContext
) -> None:
    from actors.agent.models.offline import OfflineModel
    from actors.sessions.cancel import CancelWatch
    from actors.sessions.directory import SessionDirectory
    from actors.subagent import SubagentActor
    from schemas.team import AgentSpec

    spec = AgentSpec(name="logs", mcp_servers=[stdio()])
    actor = SubagentActor(
        "logs",
        model=OfflineModel(),
        directory=SessionDirectory(bus),
        cancels=CancelWatch(bus),
        warm=spec,
    )
    await actor.on_start(bus)
    try:
        assert actor._warming is not None
        async with asyncio.timeout(30):
            await actor._warming
        hub = actor.sources._hub()
        warmed = hub._connections.get(("logs", "fixture"))
        assert warmed is not None  # started with the worker, no request yet
        assert not actor.sources._prestarted._waiting  # its process, started first, was adopted
        pid = await pid_of((await tools_of(hub, stdio()))["pid"], ctx)
        assert alive(pid)
        assert hub._connections[("logs", "fixture")] is warmed  # the request used it
    finally:
        await actor.on_stop()
    assert not alive(pid)


async def test_a_process_started_ahead_is_adopted_only_by_the_same_settings_and_killed_if_never() -> None:
    from actors.agent.tools.mcp_spawn import Prestarted, inherited_environment, stdio_argv

    prestarted = Prestarted()
    argv = stdio_argv(["python", SERVER, "stdio"])
    env = inherited_environment()
    await prestarted.start("logs", "fixture", argv, env)
    await prestarted.start("logs", "other", argv, env)
    assert prestarted.adopt("metrics", "fixture", argv, env) is None  # another agent's
    assert prestarted.adopt("logs", "fixture", argv, {**env, "X": "1"}) is None  # other env
    adopted = prestarted.adopt("logs", "fixture", argv, env)
    assert adopted is not None
    assert alive(adopted.pid)
    assert prestarted.adopt("logs", "fixture", argv, env) is None  # once
    never = prestarted._waiting[Prestarted.key("logs", "other", argv, env)]
    await prestarted.close()
    assert not alive(never.pid)
    adopted.kill()
    await adopted.wait()
