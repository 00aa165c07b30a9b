"""Starting MCP servers' processes, without the MCP SDK: their environment, their ``${VAR}``s, and a
start ahead of the first connection.

A server's interpreter takes about half a second to import the SDK, and so does the worker's; a
worker that knows its agents' servers before their first request (``staffwork run`` knows the team)
starts the processes at once (:meth:`Prestarted.start`), then imports the SDK while they import
theirs, and the connection adopts the waiting process (:meth:`Prestarted.adopt`) instead of starting
another. A process is adopted only by a connection with the same agent, server name, command and
environment; one never adopted is killed when the worker stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import Mapping

from schemas.team import ENV_REFERENCE, McpServer

#: What a server inherits of the worker's environment (besides its own ``env``): enough to find
#: programs and a home, nothing that could be a credential.
INHERITED = (
    (
        "APPDATA",
        "HOMEDRIVE",
        "HOMEPATH",
        "LOCALAPPDATA",
        "PATH",
        "PATHEXT",
        "PROCESSOR_ARCHITECTURE",
        "SYSTEMDRIVE",
        "SYSTEMROOT",
        "TEMP",
        "USERNAME",
        "USERPROFILE",
    )
    if sys.platform == "win32"
    else ("HOME", "LOGNAME", "PATH", "SHELL", "TERM", "USER")
)


class MissingVariable(Exception):
    """A ``${VAR}`` a server's ``env`` or ``headers`` needs is not set (the message says which)."""


def inherited_environment() -> dict[str, str]:
    """The part of this process's environment a server inherits; exported shell functions (values
    starting ``()``) are left out."""
    found = {name: os.environ.get(name, "") for name in INHERITED}
    return {name: value for name, value in found.items() if value and not value.startswith("()")}


def expand(server: McpServer, environ: Mapping[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """The server's ``env`` and ``headers`` with every ``${VAR}`` filled from ``environ``
    (``${VAR:-default}``: the default when ``VAR`` is unset or empty, as in a shell)."""

    def fill(field: str, key: str, value: str) -> str:
        def one(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            found = environ.get(name)
            if default is not None:
                return found or default
            if found is None:
                raise MissingVariable(
                    f"cannot start: {field}.{key} needs ${{{name}}}, not set in this worker's environment"
                )
            return found

        return ENV_REFERENCE.sub(one, value)

    env = {key: fill("env", key, value) for key, value in server.env.items()}
    headers = {key: fill("headers", key, value) for key, value in server.headers.items()}
    return env, headers


def stdio_argv(command: list[str]) -> list[str]:
    """``command`` with ``python``/``python3`` made the worker's own interpreter."""
    return [sys.executable, *command[1:]] if command[0] in ("python", "python3") else list(command)


def process_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The whole environment of a server's process: what it inherits, and its own (expanded) ``env``.
    A prestarted process is adopted only if this is the same when its connection starts."""
    return inherited_environment() | dict(env)


async def spawn(argv: list[str], env: Mapping[str, str]) -> asyncio.subprocess.Process:
    """A server's process, with pipes for its stdio, in its own process group (a stop reaches
    what it starts)."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
        start_new_session=True,
    )


Key = tuple[str, str, tuple[str, ...], tuple[tuple[str, str], ...]]


class Prestarted:
    """Server processes started ahead of their connection, by agent, server, command and env."""

    def __init__(self) -> None:
        self._waiting: dict[Key, asyncio.subprocess.Process] = {}

    @staticmethod
    def key(agent: str, server: str, argv: list[str], env: Mapping[str, str]) -> Key:
        return agent, server, tuple(argv), tuple(sorted(env.items()))

    async def start(self, agent: str, server: str, argv: list[str], env: Mapping[str, str]) -> None:
        """Start the process a connection with these settings will adopt (once)."""
        key = self.key(agent, server, argv, env)
        if key not in self._waiting:
            self._waiting[key] = await spawn(argv, env)

    def adopt(
        self, agent: str, server: str, argv: list[str], env: Mapping[str, str]
    ) -> asyncio.subprocess.Process | None:
        """The waiting process started with exactly these settings, if it is still running."""
        proc = self._waiting.pop(self.key(agent, server, argv, env), None)
        if proc is not None and proc.returncode is not None:
            return None  # it died waiting: the connection starts one and reports what it says
        return proc

    async def close(self) -> None:
        """Kill the processes no connection adopted (their process groups) and reap them."""
        waiting, self._waiting = list(self._waiting.values()), {}
        for proc in waiting:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL) if hasattr(os, "killpg") else proc.kill()
        for proc in waiting:
            with contextlib.suppress(ProcessLookupError):
                await proc.wait()
