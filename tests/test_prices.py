"""Model prices: genai-prices' table for the ids the API answers with, cache tokens priced, a model
with no price costing 0 with one warning (and refused under a budget in dollars), and the team
file's ``[[prices]]`` winning, down to the cost on a real call's trace event and the budget."""

from __future__ import annotations

import ast
import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import genai_prices
import msgspec
import pytest
from genai_prices import data_snapshot
from structlog.testing import capture_logs

from actors.agent.models.anthropic import AnthropicModel
from actors.agent.models.base import ModelRequest
from actors.agent.models.prices import check_team_prices, cost_usd, is_priced
from actors.roles import RoleConfig, running
from bus.connection import Bus
from bus.direct import read_subject
from schemas import SessionSubmit
from schemas.base import Usage
from schemas.conversation import TextBlock, Turn
from schemas.errors import SpecError
from schemas.prices import ModelPrice
from schemas.team import TeamSpec, parse_team
from tests.fake_messages_api import FakeMessagesAPI, text, tool_use
from tests.helpers import submit_and_wait

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-test-fake"
MODEL = "claude-sonnet-4-6"
#: a call's usage as the Messages API reports it: input_tokens are the uncached ones only
USAGE = Usage(
    input_tokens=1000, output_tokens=2000, cache_creation_input_tokens=3000, cache_read_input_tokens=4000
)
WIRE_USAGE: dict[str, int | None] = {
    "input_tokens": 1000,
    "output_tokens": 100,
    "cache_creation_input_tokens": 2000,
    "cache_read_input_tokens": 3000,
}
#: the team's own prices, far from the real ones so a test can tell which were used
TEAM_PRICES = """
[[prices]]
model = "claude-sonnet-4-6"
input_per_mtok = 100.0
output_per_mtok = 200.0
cache_write_per_mtok = 125.0
cache_read_per_mtok = 10.0
"""
#: WIRE_USAGE at TEAM_PRICES: (1000 * 100 + 100 * 200 + 2000 * 125 + 3000 * 10) / 1e6
TEAM_COST = 0.4


def known(model: str, usage: Usage = USAGE) -> float:
    """genai-prices' own figure, with its usage convention (input_tokens counts the cached ones)."""
    counted = genai_prices.Usage(
        input_tokens=usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens,
        output_tokens=usage.output_tokens,
        cache_write_tokens=usage.cache_creation_input_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
    )
    return float(genai_prices.calc_price(counted, model, provider_id="anthropic").total_price)


# -- genai-prices --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "prices"),
    [  # USD per million tokens: input, output, cache write, cache read
        ("claude-sonnet-4-6", (3.0, 15.0, 3.75, 0.30)),
        ("claude-opus-4-7", (5.0, 25.0, 6.25, 0.50)),
        ("claude-opus-4-6", (5.0, 25.0, 6.25, 0.50)),
        ("claude-haiku-4-5", (1.0, 5.0, 1.25, 0.10)),
        ("claude-haiku-4-5-20251001", (1.0, 5.0, 1.25, 0.10)),  # a dated id
        ("claude-opus-4-1-20250805", (15.0, 75.0, 18.75, 1.50)),
        ("claude-sonnet-4-20250514", (3.0, 15.0, 3.75, 0.30)),
        ("claude-3-5-haiku-20241022", (0.80, 4.0, 1.0, 0.08)),
    ],
)
def test_current_and_older_models_are_priced_by_genai_prices(model: str, prices: tuple[float, ...]) -> None:
    counts = (1000, 2000, 3000, 4000)
    expected = sum(count * price for count, price in zip(counts, prices, strict=True)) / 1e6
    assert cost_usd(USAGE, model) == pytest.approx(expected)
    assert cost_usd(USAGE, model) == pytest.approx(known(model))


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        (Usage(cache_read_input_tokens=1_000_000), 0.30),
        (Usage(cache_creation_input_tokens=1_000_000), 3.75),
        (Usage(input_tokens=1_000_000), 3.0),
        (Usage(output_tokens=1_000_000), 15.0),
    ],
)
def test_cache_tokens_are_priced_apart_and_never_as_input(usage: Usage, expected: float) -> None:
    assert cost_usd(usage, MODEL) == pytest.approx(expected)


def test_a_long_prompt_is_priced_at_its_tier() -> None:
    """genai-prices knows long-context tiers: over 200k input tokens on Sonnet 4.5, every token costs more."""
    short = Usage(input_tokens=200_000)
    long = Usage(input_tokens=100_000, cache_read_input_tokens=100_001)
    assert cost_usd(short, "claude-sonnet-4-5-20250929") == pytest.approx(0.6)
    assert cost_usd(long, "claude-sonnet-4-5-20250929") == pytest.approx(known("claude-sonnet-4-5", long))
    assert cost_usd(long, "claude-sonnet-4-5-20250929") == pytest.approx(100_000 * 6e-6 + 100_001 * 0.6e-6)


@pytest.mark.parametrize("model", ["some-future-model", "claude-nonexistent-9", "gpt-4o", ""])
def test_a_model_with_no_price_has_no_cost(model: str) -> None:
    assert cost_usd(USAGE, model) is None
    assert not is_priced(model)


def test_prices_ship_inside_the_package_and_are_never_fetched() -> None:
    cost_usd(USAGE, MODEL)
    assert data_snapshot.get_snapshot().from_auto_update is False
    names: set[str] = set()
    for package in ("schemas", "bus", "actors"):
        for path in (ROOT / package).rglob("*.py"):
            tree = ast.parse(path.read_text(), str(path))
            names.update(n.id for n in ast.walk(tree) if isinstance(n, ast.Name))
            names.update(n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute))
            if any(
                (isinstance(n, ast.ImportFrom) and (n.module or "").startswith("genai_prices"))
                or (isinstance(n, ast.Import) and any(a.name.startswith("genai_prices") for a in n.names))
                for n in ast.walk(tree)
            ):
                assert path.relative_to(ROOT).as_posix() == "actors/agent/models/prices.py"
    assert not names & {"UpdatePrices", "update_prices", "wait_prices_updated_sync", "set_custom_snapshot"}


# -- the team's prices ---------------------------------------------------------------------------------


def priced_team(extra: str = "", *, head: str = "") -> TeamSpec:
    return parse_team(
        f'name = "priced"\nmodel = "{MODEL}"\n{head}\n[lead]\nname = "lead"\n{TEAM_PRICES}{extra}',
        source="team.toml",
    )


def test_a_team_price_wins_over_the_known_one() -> None:
    prices = priced_team().prices
    assert prices == [
        ModelPrice(
            model=MODEL,
            input_per_mtok=100.0,
            output_per_mtok=200.0,
            cache_write_per_mtok=125.0,
            cache_read_per_mtok=10.0,
        )
    ]
    expected = (1000 * 100 + 2000 * 200 + 3000 * 125 + 4000 * 10) / 1e6
    assert cost_usd(USAGE, MODEL, prices) == pytest.approx(expected)
    assert cost_usd(USAGE, MODEL + "-20260101", prices) == pytest.approx(expected)  # its dated id
    assert cost_usd(USAGE, "claude-sonnet-4-6-fast", prices) == pytest.approx(known(MODEL))  # not a date
    assert cost_usd(USAGE, "claude-haiku-4-5", prices) == pytest.approx(known("claude-haiku-4-5"))


def test_a_team_price_prices_an_unknown_model_and_the_cache_defaults_to_anthropics_multipliers() -> None:
    prices = [ModelPrice(model="house-model", input_per_mtok=2.0, output_per_mtok=8.0)]
    expected = (1000 * 2.0 + 2000 * 8.0 + 3000 * 2.5 + 4000 * 0.2) / 1e6
    assert cost_usd(USAGE, "house-model", prices) == pytest.approx(expected)
    assert is_priced("house-model", prices)
    # the id asked for prices an answer under an id nobody knows (a gateway's, say)
    assert cost_usd(USAGE, "gateway-xyz", prices, requested="house-model") == pytest.approx(expected)


#: a team file whose line 6 and 7 are the test's (line 4 is the table's header)
PRICED_HOUSE_MODEL = 'name = "priced"\n[lead]\nname = "lead"\n[[prices]]\nmodel = "house-model"\n{}\n'


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "inptu_per_mtok = 3.0\noutput_per_mtok = 15.0",
            "team.toml:6: prices[0].inptu_per_mtok: unknown field 'inptu_per_mtok' = 3.0 "
            "(did you mean 'input_per_mtok'?)",
        ),
        (
            "input_per_mtok = 3.0\noutput_per_mtok = -15.0",
            "team.toml:7: prices[0].output_per_mtok: expected float >= 0.0, got -15.0",
        ),
        (
            'input_per_mtok = "3"\noutput_per_mtok = 15.0',
            "team.toml:6: prices[0].input_per_mtok: expected float, got str '3'",
        ),
        (
            "input_per_mtok = 3.0",
            "team.toml:4: prices[0].output_per_mtok: missing required field 'output_per_mtok'",
        ),
    ],
)
def test_a_mistake_in_a_team_price_is_one_line_with_file_and_line(table: str, message: str) -> None:
    with pytest.raises(SpecError) as caught:
        parse_team(PRICED_HOUSE_MODEL.format(table), source="team.toml")
    assert str(caught.value) == message


def test_a_model_priced_twice_is_refused() -> None:
    team = priced_team(f'\n[[prices]]\nmodel = "{MODEL}"\ninput_per_mtok = 1.0\noutput_per_mtok = 2.0\n')
    with pytest.raises(
        SpecError, match=r"^team\.toml: prices\[1\]\.model: model 'claude-sonnet-4-6' is priced twice"
    ):
        check_team_prices(team)


def test_a_budget_in_dollars_needs_a_price_for_every_model() -> None:
    text = 'name = "t"\nbudget_usd = 5.0\n[lead]\nname = "lead"\n'
    team = parse_team(text + '[[agents]]\nname = "logs"\nmodel = "house-model"\n', source="team.toml")
    with pytest.raises(SpecError) as caught:
        check_team_prices(team)
    assert str(caught.value) == (
        "team.toml: agents[0].model: model 'house-model' has no known price, so budget_usd = 5 could not "
        "count its calls: add a [[prices]] table with model = 'house-model', input_per_mtok and "
        "output_per_mtok (USD per million tokens) to the team file"
    )
    check_team_prices(msgspec.structs.replace(team, budget_usd=None))  # no budget: nothing to count
    priced = [ModelPrice(model="house-model", input_per_mtok=1.0, output_per_mtok=2.0)]
    check_team_prices(msgspec.structs.replace(team, prices=priced))


# -- through the real SDK, and a session --------------------------------------------------------------


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No credentials, profiles, base URL or proxy from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("ANTHROPIC_") or name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def api() -> Iterator[FakeMessagesAPI]:
    with FakeMessagesAPI(api_key=KEY) as fake:
        yield fake
        assert fake.pending == 0, "the test left queued replies unconsumed"


@pytest.fixture
async def claude(api: FakeMessagesAPI) -> AsyncIterator[AnthropicModel]:
    model = AnthropicModel(api_key=KEY, base_url=api.url, max_retries=0)
    try:
        yield model
    finally:
        await model.close()


def ask(model: str = MODEL, prices: list[ModelPrice] | None = None) -> ModelRequest:
    hi = Turn(role="user", content=[TextBlock(text="Hi.")])
    return ModelRequest(model=model, system="", messages=[hi], prices=prices or [])


async def test_the_request_prices_win_in_a_real_call(api: FakeMessagesAPI, claude: AnthropicModel) -> None:
    api.reply(text("ok"), usage=WIRE_USAGE)
    api.reply(text("ok"), usage=WIRE_USAGE)
    priced = await claude.complete(ask(prices=priced_team().prices))
    known_cost = await claude.complete(ask())
    assert priced.usage.cost_usd == pytest.approx(TEAM_COST)
    wire = Usage(
        input_tokens=1000, output_tokens=100, cache_creation_input_tokens=2000, cache_read_input_tokens=3000
    )
    assert known_cost.usage.cost_usd == pytest.approx(known(MODEL, wire))


async def test_an_unpriced_model_costs_nothing_and_is_warned_about_once(
    api: FakeMessagesAPI, claude: AnthropicModel
) -> None:
    for _ in range(2):
        api.reply(text("ok"), usage=WIRE_USAGE, model="claude-future-9")
    with capture_logs() as logs:
        answers = [await claude.complete(ask("claude-future-9")) for _ in range(2)]
    assert [a.usage.cost_usd for a in answers] == [0.0, 0.0]
    assert [a.usage.input_tokens for a in answers] == [1000, 1000]  # the tokens still count
    warnings = [e for e in logs if e["event"] == "model_unpriced"]
    assert len(warnings) == 1
    assert warnings[0]["model"] == "claude-future-9"
    assert "[[prices]] table with model = 'claude-future-9'" in warnings[0]["hint"]


async def model_ends(bus: Bus, session_id: str) -> list[dict[str, object]]:
    subject = bus.subjects.event(session_id, "span.model_request_end")
    return [json.loads(m.data) async for m in read_subject(bus, bus.subjects.log_stream, subject)]


def session_team(head: str) -> TeamSpec:
    return parse_team(
        f'name = "priced"\nmodel = "{MODEL}"\n{head}\n'
        '[lead]\nname = "lead"\n'
        '[[agents]]\nname = "logs"\ndescription = "reads the logs"\n'
        f"{TEAM_PRICES}",
        source="team.toml",
    )


async def test_team_prices_reach_the_lead_the_subagent_and_the_grader(
    bus: Bus, api: FakeMessagesAPI, claude: AnthropicModel
) -> None:
    grades = {"criteria": [{"index": 1, "passed": True, "explanation": "named"}], "contradiction": ""}
    api.reply(
        tool_use("toolu_1", "delegate", {"agent": "logs", "task": "find the error"}),
        stop_reason="tool_use",
        usage=WIRE_USAGE,
    )
    api.reply(text("the error is E42"), usage=WIRE_USAGE)
    api.reply(text("E42 broke it."), usage=WIRE_USAGE)
    api.reply(tool_use("toolu_g", "submit_grades", grades), stop_reason="tool_use", usage=WIRE_USAGE)
    team = session_team('budget_usd = 10.0\n[outcome]\nrubric = "- The answer names the error."')
    config = RoleConfig(model=claude, agents=("logs",))
    async with running(bus, ["lead", "subagent", "grader"], config):
        result = await submit_and_wait(bus, SessionSubmit(task="What broke?", team_spec=team))

    assert result.status == "idle", result.error
    ends = await model_ends(bus, result.session_id)
    assert [e["agent"] for e in ends] == ["lead", "logs", "lead", "grader"]
    for end in ends:
        assert end["usage"]["cost_usd"] == pytest.approx(TEAM_COST)  # type: ignore[index]
    assert result.usage.cost_usd == pytest.approx(4 * TEAM_COST)


async def test_a_budget_in_dollars_counts_the_team_prices(
    bus: Bus, api: FakeMessagesAPI, claude: AnthropicModel
) -> None:
    """At genai-prices' figures the two calls cost about $0.03 and the session would go on; at the
    team's they cost $0.80, past the $0.50 budget, so the lead makes no third call."""
    api.reply(
        tool_use("toolu_1", "delegate", {"agent": "logs", "task": "find the error"}),
        stop_reason="tool_use",
        usage=WIRE_USAGE,
    )
    api.reply(text("the error is E42"), usage=WIRE_USAGE)
    config = RoleConfig(model=claude, agents=("logs",))
    async with running(bus, ["lead", "subagent"], config):
        result = await submit_and_wait(
            bus, SessionSubmit(task="x", team_spec=session_team("budget_usd = 0.5"))
        )

    assert result.status == "budget_reached"
    assert result.usage.cost_usd == pytest.approx(2 * TEAM_COST)
    assert len(api.requests) == 2


async def test_a_session_with_a_budget_and_an_unpriced_model_is_refused(bus: Bus) -> None:
    team = parse_team('name = "t"\nmodel = "house-model"\nbudget_usd = 1.0\n[lead]\nname = "lead"\n')
    async with running(bus, ["lead"], RoleConfig(model=None)):
        with pytest.raises(AssertionError, match="model 'house-model' has no known price"):
            await submit_and_wait(bus, SessionSubmit(task="x", team_spec=team))
