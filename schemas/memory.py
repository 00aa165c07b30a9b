"""Memory stores: named trees of small text files that outlive sessions, every change an immutable
version saying who made it.

A store is registered once (:class:`MemoryStoreInfo`); each write or delete of a file becomes a
:class:`MemoryVersion` numbered by its stream sequence (unique across all stores, increasing), and
reading a file gives a :class:`MemoryFile`: the content of one version.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from schemas.team import Name

#: A memory file's content is at most this many bytes (UTF-8).
MAX_MEMORY_BYTES = 100 * 1024


class Writer(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who made a change: an agent in a session (its thread and name), or a user."""

    kind: Literal["session", "user"]
    session_id: str = ""
    thread_id: str = ""
    agent: str = ""
    user: str = ""

    def describe(self) -> str:
        """One short phrase: ``user alice`` or ``agent logs (session ses_1, thread th_2)``."""
        if self.kind == "user":
            return f"user {self.user or '?'}"
        where = ", ".join(
            f"{label} {value}"
            for label, value in (("session", self.session_id), ("thread", self.thread_id))
            if value
        )
        who = f"agent {self.agent}" if self.agent else "session"
        return f"{who} ({where})" if where else who


class MemoryStoreInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A registered memory store. ``description`` is what agents are told the store is for."""

    name: Name
    description: str = ""
    created: datetime


class MemoryVersion(msgspec.Struct, frozen=True, kw_only=True):
    """One change to one file: a write (the new content's digest and size) or a delete."""

    store: str
    path: str
    version: int  # the stream sequence: globally unique and increasing
    op: Literal["write", "delete"]
    sha256: str  # hex of the content ("" for a delete, whose content is empty)
    size: int
    writer: Writer
    time: datetime


class MemoryFile(msgspec.Struct, frozen=True, kw_only=True):
    """A file's content as of one version."""

    store: str
    path: str
    content: str
    sha256: str
    version: int
    size: int
    writer: Writer
    time: datetime
