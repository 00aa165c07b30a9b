"""Messages between the lead and its subagents: delegations, follow-ups and replies, and the
thread id a delegation gets."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.base import ErrorInfo, Message, Usage

#: The lead's own thread in every session.
LEAD_THREAD = "lead"


def thread_id_for(tool_use_id: str) -> str:
    """The thread a lead's ``delegate`` call creates: derived from the call's id, so a replay finds it."""
    safe = "".join(c if c.isalnum() or c in "_-" else "_" for c in tool_use_id)
    return f"t-{safe}"[:128]


class Delegation(Message, frozen=True, kw_only=True, tag="thread.delegate.v1"):
    """The lead's ``delegate(agent, task)`` call: start a new thread of ``agent`` on ``task``."""

    #: the new thread's id (``t-<tool_use_id>``)
    thread_id: str
    #: the roster agent that works on it
    agent: str
    #: what the agent is asked to do
    task: str
    #: the thread that delegated (the lead's: ``lead``)
    parent_thread_id: str = ""
    #: the id of the lead's ``delegate`` tool call
    tool_use_id: str = ""


class FollowUp(Message, frozen=True, kw_only=True, tag="thread.follow_up.v1"):
    """The lead's ``message_agent(thread_id, message)`` call: continue a thread with its history."""

    #: the thread to continue
    thread_id: str
    #: the agent whose thread it is
    agent: str
    #: what the lead says to it
    message: str
    #: the thread that sent it (the lead's: ``lead``)
    parent_thread_id: str = ""
    #: the id of the lead's ``message_agent`` tool call
    tool_use_id: str = ""


ThreadOutcome = Literal["completed", "failed", "canceled", "max_turns_reached", "interrupted"]


class ThreadReply(Message, frozen=True, kw_only=True, tag="thread.reply.v1"):
    """A subagent's answer to a delegation or follow-up."""

    #: the thread that answers
    thread_id: str
    #: the agent whose thread it is
    agent: str
    #: how the thread's turn ended
    status: ThreadOutcome = "completed"
    #: the agent's answer
    text: str = ""
    #: paths of the files the thread wrote to the workspace
    files: list[str] = msgspec.field(default_factory=list)
    #: model calls the thread made for this answer
    turns: int = 0
    #: tokens and cost of those model calls
    usage: Usage = msgspec.field(default_factory=Usage)
    #: why the thread failed, when it did
    error: ErrorInfo | None = None
    #: the ``msg_id`` of the delegation or follow-up answered
    in_reply_to: str = ""


class CustomToolResult(Message, frozen=True, kw_only=True, tag="user.custom_tool_result.v1"):
    """The caller's answer to a custom tool call (``agent.custom_tool_use``), published on
    ``<root>.s.<session>.in.tool_result.<custom_tool_use_id>``: the waiting thread continues with it.
    Shaped as the hosted service's ``user.custom_tool_result`` event."""

    #: the ``tool_use_id`` of the ``agent.custom_tool_use`` event answered
    custom_tool_use_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    #: the tool's result, as the model will read it
    content: str = ""
    #: the call failed; ``content`` says why
    is_error: bool = False

    def mismatch(self, session_id: str, tool_use_id: str) -> str:
        """Why this is not the answer to call ``tool_use_id`` of ``session_id`` ("" if it is)."""
        if self.session_id != session_id:
            return f"names session {self.session_id!r}, not {session_id!r}"
        if self.custom_tool_use_id != tool_use_id:
            return f"answers {self.custom_tool_use_id!r}, not {tool_use_id!r}"
        return ""


ConfirmationResult = Literal["allow", "deny"]


class ToolConfirmation(Message, frozen=True, kw_only=True, tag="user.tool_confirmation.v1"):
    """A person's answer to a tool call that waits for confirmation (``agent.tool_confirmation_requested``),
    published on ``<root>.s.<session>.in.confirm.<tool_use_id>``: ``allow`` runs the call, ``deny``
    gives the model an error result with ``deny_message``. The first answer stored counts; another is
    refused. Shaped as the hosted service's ``user.tool_confirmation`` event."""

    #: the id of the tool call answered (the request's ``tool_use_id``)
    tool_use_id: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    #: ``allow`` or ``deny``
    result: ConfirmationResult
    #: why it was denied: the model reads it as the call's error result
    deny_message: str = ""
    #: who answered (a user name, ``run``, ``api:<workspace>``...), kept in the trace
    by: str = ""

    def mismatch(self, session_id: str, tool_use_id: str) -> str:
        """Why this is not the answer to call ``tool_use_id`` of ``session_id`` ("" if it is)."""
        if self.session_id != session_id:
            return f"names session {self.session_id!r}, not {session_id!r}"
        if self.tool_use_id != tool_use_id:
            return f"answers {self.tool_use_id!r}, not {tool_use_id!r}"
        return ""
