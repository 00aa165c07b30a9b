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
    """Text, from the model or the user."""

    #: the text
    text: str


class ThinkingBlock(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="thinking"):
    """The model's visible reasoning."""

    #: the model's reasoning
    thinking: str
    #: the provider's signature of it (sent back unchanged)
    signature: str = ""


class ToolUseBlock(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_use"):
    """A tool call the model made."""

    #: the call's id
    id: str
    #: the tool's name
    name: str
    #: the tool's input
    input: dict[str, Any] = msgspec.field(default_factory=dict)


class ToolResultBlock(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="tool_result"):
    """A tool's result, given back to the model."""

    #: the id of the call answered
    tool_use_id: str
    #: the result
    content: str
    #: the call failed; ``content`` says why
    is_error: bool = False


ContentBlock = TextBlock | ThinkingBlock | ToolUseBlock | ToolResultBlock
Role = Literal["user", "assistant"]


class Turn(msgspec.Struct, frozen=True, kw_only=True):
    """One message of a conversation: a role and its content blocks."""

    #: who speaks: ``user`` (tasks, tool results) or ``assistant`` (the model)
    role: Role
    #: the turn's content blocks, in order
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

    #: the thread whose history it is
    thread_id: str
    #: the thread's agent
    agent: str
    #: the turn's place in the history, from 0
    index: int
    #: the turn
    turn: Turn
    #: the ``msg_id`` that caused a user turn (a delegation or a follow-up)
    trigger: str = ""
    #: tokens and cost of the model call that made an assistant turn
    usage: Usage = msgspec.field(default_factory=Usage)
    #: the model that made an assistant turn
    model: str = ""
    #: why the model stopped, for an assistant turn
    stop_reason: str = ""
