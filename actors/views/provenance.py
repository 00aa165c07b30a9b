"""Where a file came from: the thread, agent and tool call that wrote it, and what that thread had
read before writing it, followed into the subagent threads whose replies it read.

Built from a session's trace events alone (the stream or the collector's store), so any number in a
deliverable can be traced back to the tool call that produced it: the lead read a subagent's reply
(its ``delegate`` or ``message_agent`` result), and the subagent had read its own tool results
(a ``sql`` query, a ``grep``) before it replied.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import msgspec
from rich.text import Text
from rich.tree import Tree

from bus.errors import StaffworkError
from schemas.thread import thread_id_for
from schemas.trace import (
    AgentToolResult,
    AgentToolUse,
    AnyTraceEvent,
    FileOriginReport,
    FileWritten,
    OriginSource,
    ThreadCreated,
    ThreadRef,
    ToolCallRef,
)

DELEGATING_TOOLS = ("delegate", "message_agent")


@dataclass
class Source:
    """A tool call whose result a thread read; for a delegation, the other thread's own sources."""

    use: AgentToolUse
    result: AgentToolResult
    thread_id: str = ""  # the thread that answered a delegate/message_agent call
    agent: str = ""
    sources: list[Source] = field(default_factory=list)

    def report(self) -> OriginSource:
        return OriginSource(
            tool_use_id=self.use.tool_use_id,
            name=self.use.name,
            input=self.use.input,
            called=self.use.time,
            returned=self.result.time,
            is_error=self.result.is_error,
            result=self.result.content,
            thread=ThreadRef(thread_id=self.thread_id, agent=self.agent) if self.thread_id else None,
            sources=[source.report() for source in self.sources],
        )


@dataclass
class FileOrigin:
    written: FileWritten
    write_call: AgentToolUse | None  # None when the worker wrote it (the lead's report, a long answer)
    task: str  # what the writing thread was asked to do
    sources: list[Source]
    earlier_writes: int

    def report(self) -> FileOriginReport:
        """The origin as the trace API's typed answer (``staffwork trace --file --json`` prints it)."""
        w = self.written
        return FileOriginReport(
            path=w.path,
            size=w.size,
            digest=w.digest,
            written=w.time,
            thread_id=w.provenance.thread_id or w.thread_id,
            agent=w.provenance.agent or w.agent,
            tool_call=None
            if self.write_call is None
            else ToolCallRef(tool_use_id=self.write_call.tool_use_id, name=self.write_call.name),
            task=self.task,
            earlier_writes=self.earlier_writes,
            sources=[source.report() for source in self.sources],
        )

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = msgspec.to_builtins(self.report())
        return document


def file_origin(events: list[AnyTraceEvent], path: str) -> FileOrigin:
    """The latest write of ``path`` in these events, with what its thread had read before it.

    ``events`` are in stream order (the log stream's, or the collector's by sequence). Positions in
    that order, not timestamps, decide what was read before what: a subagent's clock is another
    host's, but its results are stored before its reply, and its reply before the lead's result."""
    wanted = path.lstrip("/")
    writes = [(i, e) for i, e in enumerate(events) if isinstance(e, FileWritten) and e.path == wanted]
    if not writes:
        paths = sorted({e.path for e in events if isinstance(e, FileWritten)})
        listing = ", ".join(paths) if paths else "none"
        raise StaffworkError(f"no file {path!r} was written in this session (files written: {listing})")
    at, written = writes[-1]
    thread = written.provenance.thread_id or written.thread_id
    uses: dict[str, tuple[int, AgentToolUse]] = {}
    results: dict[str, list[tuple[int, AgentToolResult]]] = defaultdict(list)  # by thread, in order
    answers: dict[str, list[int]] = defaultdict(
        list
    )  # thread -> positions of the results that read its replies
    for i, event in enumerate(events):
        if isinstance(event, AgentToolUse):
            uses.setdefault(event.tool_use_id, (i, event))
        elif isinstance(event, AgentToolResult):
            results[event.thread_id].append((i, event))
            used = uses.get(event.tool_use_id)
            if used and used[1].name in DELEGATING_TOOLS and not event.is_error:
                answers[_answering_thread(used[1])].append(i)
    created = {e.thread_id: e.task for e in events if isinstance(e, ThreadCreated)}
    call = written.provenance.tool_call_id
    write_call = uses[call][1] if call in uses else None
    until = uses[call][0] if call in uses else at

    def sources(thread_id: str, after: int, before: int, seen: frozenset[str]) -> list[Source]:
        """The tool results ``thread_id`` read between two positions, delegations followed."""
        read = results.get(thread_id, [])
        first = bisect.bisect_right(read, after, key=lambda item: item[0])
        found: list[Source] = []
        for position, result in read[first:]:
            if position >= before:
                break
            used = uses.get(result.tool_use_id)
            if used is None or used[1] is write_call:
                continue
            source = Source(use=used[1], result=result)
            other = _answering_thread(used[1]) if used[1].name in DELEGATING_TOOLS else ""
            if other and not result.is_error and other not in seen:
                earlier = [p for p in answers.get(other, []) if p < position]  # its previous answers
                source.thread_id = other
                source.agent = str(used[1].input.get("agent", "")) or _agent_of(events, other)
                source.sources = sources(other, earlier[-1] if earlier else -1, position, seen | {other})
            found.append(source)
        return found

    return FileOrigin(
        written=written,
        write_call=write_call,
        task=created.get(thread, ""),
        sources=sources(thread, -1, until, frozenset({thread})),
        earlier_writes=len(writes) - 1,
    )


def _answering_thread(use: AgentToolUse) -> str:
    if use.name == "message_agent":
        return str(use.input.get("thread_id", ""))
    return thread_id_for(use.tool_use_id)  # the lead names a delegation's thread after its call


def _agent_of(events: list[AnyTraceEvent], thread_id: str) -> str:
    return next((e.agent for e in events if e.thread_id == thread_id and e.agent), "")


def _clip(text: str, width: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def render_origin(origin: FileOrigin) -> Tree:
    w = origin.written
    agent = w.provenance.agent or w.agent or "user"
    thread = w.provenance.thread_id or w.thread_id or "-"
    head = Text.assemble(
        (w.path, "bold"), f" · {w.size:,} bytes · {w.digest} · {w.time.astimezone():%Y-%m-%d %H:%M:%S}"
    )
    tree = Tree(head)
    how = (
        f"tool call {origin.write_call.name} ({origin.write_call.tool_use_id})"
        if origin.write_call
        else "no tool call (written by the agent's worker: a report or a long answer)"
    )
    tree.add(Text(f"written by {agent} (thread {thread}) · {how}"))
    if origin.earlier_writes:
        tree.add(Text(f"written {origin.earlier_writes} time(s) before; this is the latest"))
    if origin.task:
        tree.add(Text(f"task: {_clip(origin.task, 160)}"))
    read = tree.add(Text(f"read before writing: {len(origin.sources)} tool result(s)"))

    def add(parent: Tree, source: Source) -> None:
        arguments = ", ".join(f"{k}={_clip(repr(v), 60)}" for k, v in source.use.input.items())
        mark = "✗" if source.result.is_error else "✓"
        at = source.result.time.astimezone().strftime("%H:%M:%S.%f")[:-3]
        branch = parent.add(
            Text(f"{mark} {source.use.name}({arguments}) · {source.use.tool_use_id} · {at}", style="bold")
        )
        branch.add(Text(f"result: {_clip(source.result.content, 200)}", style="dim"))
        if source.thread_id:
            nested = branch.add(
                Text(f"answered by {source.agent} (thread {source.thread_id}), which had read:")
            )
            for inner in source.sources:
                add(nested, inner)

    for source in origin.sources:
        add(read, source)
    return tree
