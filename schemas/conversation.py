"""A conversation as the Messages API shapes it: turns of content blocks, and the tools on offer.

These are the wire types of a thread's history log (``thread.turn.v1`` entries) and what the model
providers translate to and from. Field names follow the Messages API so a turn reads the same in
our log, in the trace and on the wire to Claude.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from schemas.base import Message, Usage


class TextBlock(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="text"):
    text: str


class ThinkingBlock(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="thinking"):
    thinking: str
    signature: str = ""


class ToolUseBlock(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolResultBlock(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_result"):
    tool_use_id: str
    content: str
    is_error: bool = False


ContentBlock = TextBlock | ThinkingBlock | ToolUseBlock | ToolResultBlock
Role = Literal["user", "assistant"]


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a conversation: a role and its content blocks."""

    role: Role
    content: list[ContentBlock]

    @property
    def text(self) -> str:
        return "".join(b.text for b in self.content if isinstance(b, TextBlock))

    @property
    def tool_uses(self) -> list[ToolUseBlock]:
        return [b for b in self.content if isinstance(b, ToolUseBlock)]


class ToolSpec(msgspec.Struct, frozen=True, kw_only=True):
    """A tool as the model sees it: name, description and JSON Schema of its input."""

    name: str
    description: str
    input_schema: dict[str, Any]


class ThreadTurn(Message, frozen=True, kw_only=True, tag="thread.turn.v1"):
    """One entry of a thread's append-only history log (``<root>.s.<session>.hist.<thread>``).

    ``index`` counts from 0 and the log refuses a gap or a repeat, so two workers can never both
    extend a thread. ``trigger`` is the message id that caused a user turn (a delegation or a
    follow-up), so a redelivered follow-up is recognised and not appended twice.
    """

    thread_id: str
    agent: str
    index: int
    turn: Turn
    trigger: str = ""
    usage: Usage = msgspec.field(default_factory=Usage)
    model: str = ""
    stop_reason: str = ""
