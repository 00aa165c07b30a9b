"""Files in a session's workspace (the shared filesystem) and where they came from."""

from __future__ import annotations

from datetime import datetime

import msgspec


class Provenance(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Who wrote a file: the session, and the thread, agent and tool call when an agent did."""

    #: the session the file belongs to
    session_id: str
    #: the thread that wrote it (empty: not an agent)
    thread_id: str = ""
    #: that thread's agent
    agent: str = ""
    #: the tool call that wrote it
    tool_call_id: str = ""


class FileInfo(msgspec.Struct, frozen=True, kw_only=True):
    """A file's metadata as stored with it."""

    path: str
    size: int
    digest: str
    modified: datetime
    provenance: Provenance
