"""The pool's request/reply protocol on ``<root>.api.pool`` (not logged): the gateway asks a pool to
serve a session's agents before it answers the submit, and the pool answers once it does."""

from __future__ import annotations

import msgspec

from schemas.base import Message, Token


class PoolServe(Message, frozen=True, kw_only=True, tag="pool.serve.v1"):
    """Serve these agents of a session: make sure each agent's consumer exists and pull from it."""

    #: the agents' names, as the session's team names them
    agents: list[Token] = msgspec.field(default_factory=list)


class PoolServed(Message, frozen=True, kw_only=True, tag="pool.served.v1"):
    """The answer to a :class:`PoolServe`: which of its agents the pool serves now, and which not."""

    #: the agents the pool pulls for now (their consumers exist, its workers wait for their tasks)
    agents: list[str] = msgspec.field(default_factory=list)
    #: the agents it does not serve: over its bound of agents, or their worker failed to start
    refused: list[str] = msgspec.field(default_factory=list)
    #: why the request was not understood ("" when it was)
    error: str = ""


__all__ = ["PoolServe", "PoolServed"]
