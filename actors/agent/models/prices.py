"""What a model call cost, in USD: the team file's ``[[prices]]`` first, then ``genai-prices``.

:func:`cost_usd` prices one call's usage by the model id the API answered with (or, failing that,
the id that was asked for): a team price (:class:`~schemas.prices.ModelPrice`) for that id wins;
else the price table that ships inside the ``genai-prices`` package, which knows every Anthropic
model by its id, its aliases and its dated ids, long-context tiers included. Nothing is fetched:
this module never starts the package's updater. A model priced by neither costs ``None``, never a
guess; :func:`check_team_prices` refuses a team with a budget in dollars whose models are not all
priced, so such a budget always counts. The only module that imports ``genai_prices``.
"""

from __future__ import annotations

from collections.abc import Sequence

import genai_prices

from schemas.base import Usage
from schemas.errors import SpecError
from schemas.prices import ModelPrice
from schemas.team import TeamSpec

__all__ = ["check_team_prices", "cost_usd", "is_priced", "unpriced_hint"]

#: genai-prices' provider id for the Messages API.
PROVIDER = "anthropic"


def cost_usd(
    usage: Usage, model: str, prices: Sequence[ModelPrice] = (), *, requested: str = ""
) -> float | None:
    """The cost in USD of ``usage`` on ``model`` (the id the API answered with; ``requested``, the id
    asked for, is tried next), or None when neither id has a price."""
    names = [model] if not requested or requested == model else [model, requested]
    for name in names:
        if (own := _team_price(name, prices)) is not None:
            return _cost(usage, own)
    for name in names:
        if (cost := _known_cost(usage, name)) is not None:
            return cost
    return None


def is_priced(model: str, prices: Sequence[ModelPrice] = ()) -> bool:
    """Whether :func:`cost_usd` has a price for ``model``."""
    return cost_usd(Usage(), model, prices) is not None


def unpriced_hint(model: str) -> str:
    """How to price ``model`` in a team file, in one line."""
    return (
        f"add a [[prices]] table with model = {model!r}, input_per_mtok and output_per_mtok "
        "(USD per million tokens) to the team file"
    )


def check_team_prices(team: TeamSpec, *, source: str = "") -> None:
    """Raise :class:`SpecError` if ``team`` prices a model twice, or has a budget in dollars
    (``budget_usd``) and a model of its lead or of an agent has no price."""
    where = source or (team.origin.file if team.origin else f"team {team.name!r}")
    lines = team.origin.lines if team.origin else {}

    def error(message: str, path: str, value: str) -> SpecError:
        return SpecError(message, source=where, path=path, value=value, line=lines.get(path))

    first: dict[str, int] = {}
    for index, price in enumerate(team.prices):
        if price.model in first:
            path = f"prices[{index}].model"
            message = (
                f"model {price.model!r} is priced twice (prices[{first[price.model]}] and prices[{index}])"
            )
            raise error(message, path, price.model)
        first[price.model] = index
    if team.budget_usd is None:
        return
    for path, spec in [("lead", team.lead)] + [(f"agents[{i}]", a) for i, a in enumerate(team.agents)]:
        model = team.model_of(spec)
        if not is_priced(model, team.prices):
            message = (
                f"model {model!r} has no known price, so budget_usd = {team.budget_usd:g} could not "
                f"count its calls: {unpriced_hint(model)}"
            )
            raise error(message, f"{path}.model" if spec.model else "model", model)


def _team_price(model: str, prices: Sequence[ModelPrice]) -> ModelPrice | None:
    exact = next((p for p in prices if p.model == model), None)
    return exact if exact is not None else next((p for p in prices if p.matches(model)), None)


def _cost(usage: Usage, price: ModelPrice) -> float:
    return (
        usage.input_tokens * price.input_per_mtok
        + usage.output_tokens * price.output_per_mtok
        + usage.cache_creation_input_tokens * price.cache_write
        + usage.cache_read_input_tokens * price.cache_read
    ) / 1_000_000


def _known_cost(usage: Usage, model: str) -> float | None:
    # genai-prices counts every input token in input_tokens and prices the cached ones apart; the
    # Messages API's input_tokens are only the uncached ones.
    total_input = usage.input_tokens + usage.cache_creation_input_tokens + usage.cache_read_input_tokens
    counted = genai_prices.Usage(
        input_tokens=total_input,
        output_tokens=usage.output_tokens,
        cache_write_tokens=usage.cache_creation_input_tokens,
        cache_read_tokens=usage.cache_read_input_tokens,
    )
    try:
        price = genai_prices.calc_price(counted, model, provider_id=PROVIDER)
    except LookupError:
        return None
    return float(price.total_price)
