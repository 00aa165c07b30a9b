"""The model boundary: a small protocol every provider implements, and its errors.

A model takes a request (model name, system prompt, the conversation, the tools on offer, a token
limit) and returns content blocks, a stop reason and usage. Providers translate their SDK's errors
here: :class:`ModelRetryable` (rate limits, overload, connection trouble: worth retrying with
backoff) or :class:`ModelFatal` (authentication, a bad request: retrying will not help).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from schemas.base import Usage
from schemas.conversation import ContentBlock, ToolSpec, ToolUseBlock, Turn
from schemas.errors import StaffworkError
from schemas.prices import ModelPrice
from schemas.team import Playbook

#: Stop reasons of the Messages API that the loops handle.
END_TURN = "end_turn"
TOOL_USE = "tool_use"
MAX_TOKENS = "max_tokens"
STOP_SEQUENCE = "stop_sequence"
PAUSE_TURN = "pause_turn"
REFUSAL = "refusal"


class ModelRequest(msgspec.Struct, frozen=True, kw_only=True):
    model: str
    system: str
    messages: list[Turn]
    tools: list[ToolSpec] = msgspec.field(default_factory=list)
    #: the tool the model must call (a structured answer, like the grader's grades); "" = its choice
    force_tool: str = ""
    max_tokens: int = 4096
    #: who is asking, for logs, traces and the offline model
    agent: str = ""
    thread_id: str = ""
    session_id: str = ""
    #: the team's own model prices, which win over the known ones when the call's cost is reckoned
    prices: list[ModelPrice] = msgspec.field(default_factory=list)
    #: hints for the offline model (real providers ignore them): the lead's roster, the playbook
    roster: list[str] = msgspec.field(default_factory=list)
    playbook: Playbook | None = None


class ModelResponse(msgspec.Struct, frozen=True, kw_only=True):
    content: list[ContentBlock]
    stop_reason: str
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str = ""

    @property
    def text(self) -> str:
        return Turn(role="assistant", content=self.content).text

    @property
    def tool_uses(self) -> list[ToolUseBlock]:
        return Turn(role="assistant", content=self.content).tool_uses


class Model(Protocol):
    """A model provider. ``name`` says which (``anthropic``, ``offline``, ``scripted``)."""

    name: str

    async def complete(self, request: ModelRequest) -> ModelResponse: ...


class ModelError(StaffworkError):
    """A model call failed."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class ModelRetryable(ModelError):
    """Rate limited, overloaded, or the connection failed: try again later."""


class ModelFatal(ModelError):
    """Authentication failed or the request was refused as invalid: retrying will not help."""
