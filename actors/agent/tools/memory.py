"""Memory stores in the file tools: ``/memory/<store>/<path>`` reaches an attached store.

An agent's team spec attaches stores (``[[agents.memory]]``: ``store``, ``access``, ``instructions``).
``list_files``, ``read_file`` and ``write_file`` route a path under ``/memory/`` to that store, as the
hosted service mounts them; everything else stays in the session's workspace. The worker enforces the
access: writing to a ``read_only`` store, or touching a store that is not attached, is an error the
model sees, whatever its prompt says. Every write is a new version that records the session, thread
and agent that wrote it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from actors.agent.tools.base import ToolContext, ToolError
from bus.memory import Memory
from schemas.memory import Writer
from schemas.team import AgentSpec, MemoryAttachment

MOUNT = "/memory/"


def mounted(path: str) -> bool:
    return path.startswith(MOUNT) or path.rstrip("/") == MOUNT.rstrip("/")


def memory_note(spec: AgentSpec) -> str:
    """The system prompt's note on the agent's stores ("" when it has none)."""
    if not spec.memory:
        return ""
    lines = [
        "Memory stores (persistent across sessions) are files under /memory/<store>/; use the file "
        "tools on those paths. Read what is relevant before you start; keep entries short and current."
    ]
    for attached in spec.memory:
        access = "read and write" if attached.access == "read_write" else "read only"
        line = f"- /memory/{attached.store}/ ({access})"
        if attached.instructions:
            line += f": {attached.instructions}"
        lines.append(line)
    return "\n".join(lines)


def _target(ctx: ToolContext, path: str) -> tuple[MemoryAttachment, str]:
    """The attachment and the path inside the store of a ``/memory/<store>/<path>`` path."""
    rest = path[len(MOUNT) :] if path.startswith(MOUNT) else ""
    store, _, inner = rest.partition("/")
    attached = ctx.memory.get(store)
    if attached is None:
        known = ", ".join(f"/memory/{name}/" for name in ctx.memory) or "none"
        raise ToolError(f"no memory store {store!r} is attached to agent {ctx.agent!r} (attached: {known})")
    return attached, inner


async def list_memory(ctx: ToolContext, prefix: str) -> str:
    if prefix.rstrip("/") == MOUNT.rstrip("/"):
        if not ctx.memory:
            return f"agent {ctx.agent!r} has no memory stores"
        return "\n".join(f"/memory/{name}/  ({a.access})" for name, a in ctx.memory.items())
    attached, inner = _target(ctx, prefix)
    entries = await Memory(ctx.bus).list(attached.store, inner)
    if not entries:
        return f"no files under {prefix!r}"
    width = max(len(str(e.size)) for e in entries)
    lines = [f"{e.size:>{width}}  /memory/{attached.store}/{e.path}" for e in entries]
    lines.append(f"{len(entries)} file{'s' if len(entries) != 1 else ''} in memory store {attached.store!r}")
    return "\n".join(lines)


async def read_memory(ctx: ToolContext, path: str) -> AsyncIterator[bytes]:
    attached, inner = _target(ctx, path)
    found = await Memory(ctx.bus).read(attached.store, inner)

    async def chunks() -> AsyncIterator[bytes]:
        yield found.content.encode()

    return chunks()


async def write_memory(ctx: ToolContext, path: str, content: str) -> str:
    attached, inner = _target(ctx, path)
    if attached.access != "read_write":
        raise ToolError(
            f"memory store {attached.store!r} is read-only for agent {ctx.agent!r}: {path!r} was not written"
        )
    writer = Writer(kind="session", session_id=ctx.session_id, thread_id=ctx.thread_id, agent=ctx.agent)
    version = await Memory(ctx.bus).write(attached.store, inner, content, writer=writer)
    return f"wrote {version.size} bytes to {path} (memory version {version.version})"
