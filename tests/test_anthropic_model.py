"""AnthropicModel through the real SDK against a local fake of the Messages API: the wire format,
cache_control, usage and cost, stop reasons, retries, and errors translated at the boundary."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from actors.agent.models.anthropic import AnthropicModel
from actors.agent.models.base import ModelFatal, ModelRequest, ModelRetryable
from actors.agent.models.prices import cost_usd
from schemas.base import Usage
from schemas.conversation import (
    ContentBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    Turn,
)
from tests.fake_messages_api import FakeMessagesAPI, InvalidRequest, text, thinking, tool_use, validate
from tests.helpers import free_port

KEY = "sk-test-fake"
MODEL = "claude-sonnet-4-6"
EPHEMERAL = {"type": "ephemeral"}


def user(*blocks: ContentBlock | str) -> Turn:
    return Turn(role="user", content=[TextBlock(text=b) if isinstance(b, str) else b for b in blocks])


def assistant(*blocks: ContentBlock | str) -> Turn:
    return Turn(role="assistant", content=[TextBlock(text=b) if isinstance(b, str) else b for b in blocks])


def ask(*turns: Turn, **fields: Any) -> ModelRequest:
    return ModelRequest(model=MODEL, system="You are terse.", messages=list(turns), **fields)


def tool(name: str) -> ToolSpec:
    return ToolSpec(
        name=name,
        description=f"the {name} tool",
        input_schema={"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]},
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials, profiles, base URL or proxy from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("ANTHROPIC_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no credentials profile under ~/.config/anthropic
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def api() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI(api_key=KEY) as fake:
        yield fake
        assert fake.pending == 0, "the test left queued replies or failures unconsumed"


@pytest.fixture
async def model(api: FakeMessagesAPI) -> AsyncIterator[AnthropicModel]:
    claude = AnthropicModel(api_key=KEY, base_url=api.url, max_retries=3, retry_base_delay=0.001)
    try:
        yield claude
    finally:
        await claude.close()


# -- success -------------------------------------------------------------------------------------------


async def test_text_response(api: FakeMessagesAPI, model: AnthropicModel) -> None:
    api.reply(text("Hello there."))

    response = await model.complete(ask(user("Say hello.")))

    assert response.content == [TextBlock(text="Hello there.")]
    assert response.text == "Hello there."
    assert response.stop_reason == "end_turn"
    assert response.model == MODEL
    [request] = api.requests
    assert (request.method, request.path) == ("POST", "/v1/messages")
    assert request.credential == KEY
    assert "anthropic-version" in request.headers
    assert request.body["model"] == MODEL
    assert request.body["max_tokens"] == 4096
    assert request.body["messages"] == [{"role": "user", "content": [{"type": "text", "text": "Say hello."}]}]


async def test_parallel_tool_calls_then_both_results_are_accepted(
    api: FakeMessagesAPI, model: AnthropicModel
) -> None:
    api.reply(
        text("Checking both."),
        tool_use("toolu_a", "logs", {"q": "errors"}),
        tool_use("toolu_b", "metrics", {"q": "p99"}),
        stop_reason="tool_use",
    )
    question = user("What broke?")
    first = await model.complete(ask(question, tools=[tool("logs"), tool("metrics")]))

    assert first.stop_reason == "tool_use"
    assert first.tool_uses == [
        ToolUseBlock(id="toolu_a", name="logs", input={"q": "errors"}),
        ToolUseBlock(id="toolu_b", name="metrics", input={"q": "p99"}),
    ]

    api.reply(text("The deploy at 12:00."))
    results = user(
        ToolResultBlock(tool_use_id="toolu_a", content="3 errors"),
        ToolResultBlock(tool_use_id="toolu_b", content="timeout", is_error=True),
    )
    second = await model.complete(
        ask(question, assistant(*first.content), results, tools=[tool("logs"), tool("metrics")])
    )

    assert second.text == "The deploy at 12:00."
    body = api.requests[1].body
    assert "tool_choice" not in body  # parallel tool use stays allowed
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {"type": "text", "text": "Checking both."},
            {"type": "tool_use", "id": "toolu_a", "name": "logs", "input": {"q": "errors"}},
            {"type": "tool_use", "id": "toolu_b", "name": "metrics", "input": {"q": "p99"}},
        ],
    }
    assert body["messages"][2]["content"] == [
        {"type": "tool_result", "tool_use_id": "toolu_a", "content": "3 errors", "is_error": False},
        {"type": "tool_result", "tool_use_id": "toolu_b", "content": "timeout", "is_error": True},
    ]


async def test_thinking_blocks_map_and_go_back_unchanged(api: FakeMessagesAPI, model: AnthropicModel) -> None:
    api.reply(
        thinking("Let me think.", "sig-1"),
        {"type": "redacted_thinking", "data": "opaque-data"},
        text("Done."),
    )
    question = user("Think first.")
    response = await model.complete(ask(question))

    assert response.content == [
        ThinkingBlock(thinking="Let me think.", signature="sig-1"),
        ThinkingBlock(thinking="", signature="opaque-data"),
        TextBlock(text="Done."),
    ]

    api.reply(text("Sure."))
    await model.complete(ask(question, assistant(*response.content), user("And then?")))
    assert api.requests[1].body["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Let me think.", "signature": "sig-1"},
        {"type": "redacted_thinking", "data": "opaque-data"},
        {"type": "text", "text": "Done."},
    ]


@pytest.mark.parametrize(
    "stop_reason", ["max_tokens", "refusal", "pause_turn", "stop_sequence", "model_context_window_exceeded"]
)
async def test_stop_reasons_pass_through(
    api: FakeMessagesAPI, model: AnthropicModel, stop_reason: str
) -> None:
    api.reply(text("Partial"), stop_reason=stop_reason)
    response = await model.complete(ask(user("Go on.")))
    assert response.stop_reason == stop_reason


# -- usage, cost and caching ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("billed_model", "prices"),
    [  # USD per million tokens: input, output, cache write, cache read (genai-prices' figures)
        ("claude-opus-4-6", (5.0, 25.0, 6.25, 0.50)),
        ("claude-sonnet-4-6", (3.0, 15.0, 3.75, 0.30)),
        ("claude-haiku-4-5-20251001", (1.0, 5.0, 1.25, 0.10)),
    ],
)
async def test_usage_and_cost(
    api: FakeMessagesAPI, model: AnthropicModel, billed_model: str, prices: tuple[float, ...]
) -> None:
    usage = {
        "input_tokens": 1000,
        "output_tokens": 2000,
        "cache_creation_input_tokens": 3000,
        "cache_read_input_tokens": 4000,
    }
    api.reply(text("ok"), usage=dict(usage), model=billed_model)

    response = await model.complete(ask(user("Hi.")))

    counts = (1000, 2000, 3000, 4000)
    expected = sum(count * price for count, price in zip(counts, prices, strict=True)) / 1e6
    assert response.model == billed_model
    assert response.usage == Usage(**usage, cost_usd=response.usage.cost_usd)
    assert response.usage.cost_usd == pytest.approx(expected)
    assert cost_usd(response.usage, billed_model) == pytest.approx(expected)


async def test_missing_cache_counts_are_zero(api: FakeMessagesAPI, model: AnthropicModel) -> None:
    api.reply(
        text("ok"),
        usage={
            "input_tokens": 100,
            "output_tokens": 10,
            "cache_creation_input_tokens": None,
            "cache_read_input_tokens": None,
        },
    )
    response = await model.complete(ask(user("Hi.")))
    assert response.usage.cache_creation_input_tokens == 0
    assert response.usage.cache_read_input_tokens == 0
    assert response.usage.cost_usd == pytest.approx((100 * 3 + 10 * 15) / 1e6)


async def test_cache_control_on_the_system_block_and_the_last_tool_only(
    api: FakeMessagesAPI, model: AnthropicModel
) -> None:
    api.reply(text("ok"))
    await model.complete(ask(user("Hi."), tools=[tool("logs"), tool("metrics"), tool("deploys")]))

    body = api.requests[0].body
    assert body["system"] == [{"type": "text", "text": "You are terse.", "cache_control": EPHEMERAL}]
    assert [t.get("cache_control") for t in body["tools"]] == [None, None, EPHEMERAL]
    assert body["tools"][0] == {
        "name": "logs",
        "description": "the logs tool",
        "input_schema": tool("logs").input_schema,
    }
    assert all("cache_control" not in block for m in body["messages"] for block in m["content"])


async def test_empty_system_and_tools_are_omitted(api: FakeMessagesAPI, model: AnthropicModel) -> None:
    api.reply(text("ok"))
    await model.complete(ModelRequest(model=MODEL, system="", messages=[user("Hi.")]))
    body = api.requests[0].body
    assert "system" not in body
    assert "tools" not in body


# -- configuration -------------------------------------------------------------------------------------


async def test_api_key_and_base_url_come_from_the_environment(
    api: FakeMessagesAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_BASE_URL", api.url)
    api.reply(text("from env"))
    claude = AnthropicModel(retry_base_delay=0.001)
    try:
        response = await claude.complete(ask(user("Hi.")))
    finally:
        await claude.close()
    assert response.text == "from env"
    assert api.requests[0].credential == KEY


async def test_no_api_key_is_fatal_before_any_request(api: FakeMessagesAPI) -> None:
    claude = AnthropicModel(base_url=api.url)
    try:
        with pytest.raises(ModelFatal, match="no anthropic API key: pass api_key or set ANTHROPIC_API_KEY"):
            await claude.complete(ask(user("Hi.")))
    finally:
        await claude.close()
    assert api.requests == []


def test_a_broken_credentials_profile_is_fatal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_PROFILE", "nosuchprofile")
    with pytest.raises(ModelFatal, match="anthropic client setup failed: Config file not found") as info:
        AnthropicModel()
    assert "\n" not in str(info.value)


# -- malformed conversations ---------------------------------------------------------------------------

A = ToolUseBlock(id="toolu_a", name="logs", input={"q": "x"})
B = ToolUseBlock(id="toolu_b", name="metrics", input={"q": "y"})
RESULT_A = ToolResultBlock(tool_use_id="toolu_a", content="a")
RESULT_B = ToolResultBlock(tool_use_id="toolu_b", content="b")
RESULT_Z = ToolResultBlock(tool_use_id="toolu_z", content="z")

MALFORMED = {
    "no messages": ([], "messages: at least one message is required"),
    "assistant first": ([assistant("Hi.")], 'messages: first message must use the "user" role'),
    "two user turns": (
        [user("Hi."), user("Hello?")],
        'messages: roles must alternate between "user" and "assistant", but found multiple "user" roles',
    ),
    "two assistant turns": (
        [user("Hi."), assistant("One."), assistant("Two."), user("?")],
        'but found multiple "assistant" roles in a row',
    ),
    "empty content": (
        [user("Hi."), Turn(role="assistant", content=[]), user("?")],
        "messages.1: all messages must have non-empty content except for the optional final assistant",
    ),
    "empty text block": ([user("")], "messages: text content blocks must be non-empty"),
    "missing tool_result": (
        [user("Go."), assistant(A, B), user(RESULT_A)],
        "messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_b",
    ),
    "text instead of tool_results": (
        [user("Go."), assistant(A), user("Never mind.")],
        "messages.2: `tool_use` ids were found without `tool_result` blocks immediately after: toolu_a",
    ),
    "unknown tool_use_id": (
        [user("Go."), assistant(A), user(RESULT_A, RESULT_Z)],
        "messages.2.content.1: unexpected `tool_use_id` found in `tool_result` blocks: toolu_z",
    ),
    "text before tool_results": (
        [user("Go."), assistant(A, B), user("Here:", RESULT_A, RESULT_B)],
        "messages.2.content.1: `tool_result` blocks must come first in the user message",
    ),
    "tool_result answering no tool_use": (
        [user("Go."), assistant("Nothing to call."), user(RESULT_A)],
        "messages.2.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_a",
    ),
    "tool_result in the first turn": (
        [user(RESULT_A)],
        "messages.0.content.0: unexpected `tool_use_id` found in `tool_result` blocks: toolu_a",
    ),
    "tool_result answered twice": (
        [user("Go."), assistant(A), user(RESULT_A, RESULT_A)],
        "messages.2.content.1: `tool_use` id toolu_a has more than one `tool_result` block",
    ),
}


@pytest.mark.parametrize(("turns", "message"), list(MALFORMED.values()), ids=list(MALFORMED))
async def test_malformed_conversation_is_fatal(
    api: FakeMessagesAPI, model: AnthropicModel, turns: list[Turn], message: str
) -> None:
    with pytest.raises(ModelFatal) as info:
        await model.complete(ask(*turns))

    assert info.value.status == 400
    assert str(info.value).startswith("anthropic API 400 invalid_request_error: ")
    assert message in str(info.value)
    assert "\n" not in str(info.value)
    assert len(api.requests) == 1  # a bad request is never retried


async def test_non_int_max_tokens_is_fatal(api: FakeMessagesAPI, model: AnthropicModel) -> None:
    with pytest.raises(ModelFatal) as info:
        await model.complete(ask(user("Hi."), max_tokens="lots"))
    assert str(info.value) == (
        "anthropic API 400 invalid_request_error: max_tokens: Input should be a valid integer"
    )


async def test_empty_model_is_fatal(api: FakeMessagesAPI, model: AnthropicModel) -> None:
    with pytest.raises(ModelFatal, match="model: Input should be a valid string"):
        await model.complete(ModelRequest(model="", system="", messages=[user("Hi.")]))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}, "max_tokens: Field required"),
        (
            {"model": MODEL, "max_tokens": 1.5, "messages": [{"role": "user", "content": "Hi"}]},
            "max_tokens: Input should be a valid integer",
        ),
        (
            {"model": MODEL, "max_tokens": True, "messages": [{"role": "user", "content": "Hi"}]},
            "max_tokens: Input should be a valid integer",
        ),
        ({"max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}, "model: Field required"),
        ({"model": MODEL, "max_tokens": 10}, "messages: Field required"),
        (
            {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}], "x": 1},
            "x: Extra inputs are not permitted",
        ),
        (
            {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": ""}]},
            "messages.0: all messages must have non-empty content",
        ),
    ],
)
def test_fake_api_validates_what_the_sdk_cannot_send(body: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        validate(body)


def test_fake_api_speaks_the_wire_format(api: FakeMessagesAPI) -> None:
    """Raw HTTP, no SDK: the 400 error body and a full success message, field by field."""

    def post(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        host, port = api.url.removeprefix("http://").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            headers = {
                "x-api-key": KEY,
                "anthropic-version": "2023-06-01",
                "content-type": "application/json",
            }
            conn.request("POST", "/v1/messages", json.dumps(body), headers)
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    status, error = post({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]})
    assert status == 400
    assert error == {
        "type": "error",
        "error": {"type": "invalid_request_error", "message": "max_tokens: Field required"},
    }

    api.reply(text("Hi!"), usage={"input_tokens": 7, "output_tokens": 3})
    status, message = post(
        {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": "Hi"}]}
    )
    assert status == 200
    assert message == {
        "id": message["id"],
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hi!", "citations": None}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {
            "input_tokens": 7,
            "output_tokens": 3,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    }
    assert message["id"].startswith("msg_")


def test_fake_api_caps_cache_breakpoints() -> None:
    block = {"type": "text", "text": "x", "cache_control": EPHEMERAL}
    body = {"model": MODEL, "max_tokens": 10, "messages": [{"role": "user", "content": [block] * 5}]}
    with pytest.raises(
        InvalidRequest, match=r"A maximum of 4 blocks with cache_control may be provided\. Found 5\."
    ):
        validate(body)


# -- retries and errors --------------------------------------------------------------------------------


async def test_rate_limited_twice_then_success(api: FakeMessagesAPI, model: AnthropicModel) -> None:
    api.fail_next(2, 429)
    api.reply(text("Finally."))

    response = await model.complete(ask(user("Hi.")))

    assert response.text == "Finally."
    assert len(api.requests) == 3
    assert all(r.body == api.requests[0].body for r in api.requests)


@pytest.mark.parametrize("status", [529, 500, 503, 408, 409])
async def test_overload_and_server_errors_are_retried(
    api: FakeMessagesAPI, model: AnthropicModel, status: int
) -> None:
    api.fail_next(1, status)
    api.reply(text("Recovered."))
    response = await model.complete(ask(user("Hi.")))
    assert response.text == "Recovered."
    assert len(api.requests) == 2


async def test_retry_after_is_honoured(api: FakeMessagesAPI, model: AnthropicModel) -> None:
    api.fail_next(1, 429, retry_after="0.3")
    api.reply(text("ok"))
    loop = asyncio.get_running_loop()
    started = loop.time()
    await model.complete(ask(user("Hi.")))
    assert loop.time() - started >= 0.3  # retry_base_delay alone would wait at most 1 ms
    assert len(api.requests) == 2


async def test_retries_exhausted_is_retryable(api: FakeMessagesAPI) -> None:
    api.fail_next(3, 529, message="Overloaded")
    claude = AnthropicModel(api_key=KEY, base_url=api.url, max_retries=2, retry_base_delay=0.001)
    try:
        with pytest.raises(ModelRetryable) as info:
            await claude.complete(ask(user("Hi.")))
    finally:
        await claude.close()

    assert info.value.status == 529
    assert str(info.value) == "anthropic API 529 overloaded_error: Overloaded (gave up after 3 attempts)"
    assert info.value.__cause__ is not None
    assert len(api.requests) == 3


async def test_unreachable_server_is_retryable() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    claude = AnthropicModel(api_key=KEY, base_url=url, max_retries=1, retry_base_delay=0.001)
    try:
        with pytest.raises(
            ModelRetryable, match=r"anthropic API unreachable at http://127\.0\.0\.1:\d+"
        ) as info:
            await claude.complete(ask(user("Hi.")))
    finally:
        await claude.close()
    assert info.value.status is None
    assert "gave up after 2 attempts" in str(info.value)


async def test_timeout_is_retryable(api: FakeMessagesAPI) -> None:
    api.delay_next(30)
    claude = AnthropicModel(api_key=KEY, base_url=api.url, max_retries=0, timeout=0.2)
    try:
        with pytest.raises(ModelRetryable, match=r"anthropic API timed out after 0\.2s") as info:
            await claude.complete(ask(user("Hi.")))
    finally:
        await claude.close()
    assert "gave up after 1 attempt)" in str(info.value)


async def test_wrong_api_key_is_fatal_with_one_clear_line(api: FakeMessagesAPI) -> None:
    claude = AnthropicModel(api_key="sk-wrong", base_url=api.url, retry_base_delay=0.001)
    try:
        with pytest.raises(ModelFatal) as info:
            await claude.complete(ask(user("Hi.")))
    finally:
        await claude.close()

    assert str(info.value) == "anthropic API 401 authentication_error: invalid x-api-key"
    assert info.value.status == 401
    assert info.value.__cause__ is not None
    assert len(api.requests) == 1


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (403, "permission_error"),
        (404, "not_found_error"),
        (413, "request_too_large"),
        (422, "invalid_request_error"),
    ],
)
async def test_client_errors_are_fatal_at_once(
    api: FakeMessagesAPI, model: AnthropicModel, status: int, error_type: str
) -> None:
    api.fail_next(1, status, message="refused")
    with pytest.raises(ModelFatal) as info:
        await model.complete(ask(user("Hi.")))
    assert str(info.value) == f"anthropic API {status} {error_type}: refused"
    assert info.value.status == status
    assert len(api.requests) == 1


async def test_a_forced_tool_is_sent_as_tool_choice(api: FakeMessagesAPI, model: AnthropicModel) -> None:
    api.reply(tool_use("toolu_g", "submit_grades", {"criteria": []}), stop_reason="tool_use")
    request = msgspec.structs.replace(
        ask(user("Grade it."), tools=[tool("submit_grades")]), force_tool="submit_grades"
    )
    answer = await model.complete(request)
    assert api.requests[0].body["tool_choice"] == {"type": "tool", "name": "submit_grades"}
    assert answer.tool_uses[0].name == "submit_grades"
    api.reply(text("ok"))
    await model.complete(ask(user("Hi."), tools=[tool("logs")]))
    assert "tool_choice" not in api.requests[1].body  # the model's own choice otherwise
