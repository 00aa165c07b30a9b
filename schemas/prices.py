"""A team file's own model prices, which win over the prices staffwork knows (``genai-prices``).

One ``[[prices]]`` table per model, in USD per million tokens::

    [[prices]]
    model = "claude-sonnet-4-6"
    input_per_mtok = 3.0
    output_per_mtok = 15.0
    cache_write_per_mtok = 3.75
    cache_read_per_mtok = 0.30
"""

from __future__ import annotations

from typing import Annotated

import msgspec

__all__ = ["ModelPrice", "UsdPerMtok"]

#: A price in USD per million tokens: finite, not negative.
UsdPerMtok = Annotated[float, msgspec.Meta(ge=0, le=1_000_000)]


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What one model costs, in USD per million tokens. The prices of a cache write and a cache read
    default to Anthropic's multipliers of the input price (1.25 for a five-minute cache write, 0.1 for
    a cache hit)."""

    #: the model id as the team names it or the API answers with it; also prices the id with a date
    #: suffix (``claude-sonnet-4-5`` prices ``claude-sonnet-4-5-20250929``)
    model: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    #: USD per million input tokens not read from or written to the prompt cache
    input_per_mtok: UsdPerMtok
    #: USD per million output tokens (thinking included)
    output_per_mtok: UsdPerMtok
    #: USD per million input tokens written to the prompt cache (absent: 1.25 x input_per_mtok)
    cache_write_per_mtok: UsdPerMtok | None = None
    #: USD per million input tokens read from the prompt cache (absent: 0.1 x input_per_mtok)
    cache_read_per_mtok: UsdPerMtok | None = None

    @property
    def cache_write(self) -> float:
        """USD per million cache-write tokens, given or derived."""
        return self.input_per_mtok * 1.25 if self.cache_write_per_mtok is None else self.cache_write_per_mtok

    @property
    def cache_read(self) -> float:
        """USD per million cache-read tokens, given or derived."""
        return self.input_per_mtok * 0.1 if self.cache_read_per_mtok is None else self.cache_read_per_mtok

    def matches(self, model: str) -> bool:
        """Whether this price is for ``model``: the same id, or it with a ``-YYYYMMDD`` date suffix."""
        if model == self.model:
            return True
        rest = model.removeprefix(self.model + "-")
        return rest != model and len(rest) == 8 and rest.isdigit()
