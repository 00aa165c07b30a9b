"""The base message and the small value types every message shares."""

from __future__ import annotations

from typing import Annotated

import msgspec

from schemas.ids import new_id

#: An id usable as a NATS subject token: letters, digits, ``_`` and ``-``.
Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
#: A session id is a token; empty only on events that belong to no session.
SessionId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,128}$")]


def _msg_id() -> str:
    return new_id("msg")


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type"):
    """Every message on the bus.

    ``type`` is a dotted, versioned tag (``session.submit.v1``). Fields are only ever added with
    defaults; a breaking change gets a new tag. ``msg_id`` is the JetStream dedup id
    (``Nats-Msg-Id``): publishing the same message twice stores it once.
    """

    #: the session the message belongs to (a subject token); empty only on events that belong to no session
    session_id: SessionId
    #: the message's unique id, JetStream's ``Nats-Msg-Id``: the same id published twice is stored once
    msg_id: str = msgspec.field(default_factory=_msg_id)


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Token usage and estimated cost of one or more model calls."""

    #: input tokens billed at the full rate
    input_tokens: int = 0
    #: output tokens the model generated
    output_tokens: int = 0
    #: input tokens written to the prompt cache
    cache_creation_input_tokens: int = 0
    #: input tokens read from the prompt cache
    cache_read_input_tokens: int = 0
    #: estimated cost, in US dollars
    cost_usd: float = 0.0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
            cost_usd=self.cost_usd + other.cost_usd,
        )


class ErrorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A failure as data: what kind, what happened (one line), and whether a retry may help."""

    #: what kind of failure, a snake_case word (``invalid_request``, ``no_worker``, ``query_failed``...)
    kind: str
    #: what happened, in one line naming the offending value
    message: str
    #: whether the same request may succeed if tried again
    retryable: bool = False
