"""What ``staffwork run`` does with tool calls that wait for a person's confirmation
(:class:`Confirmations`): on a terminal it asks about each, one at a time in the order they came,
while the session goes on; elsewhere (a pipe, ``--json``) it prints the commands that answer them."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import sys
import termios
from collections.abc import Iterator
from typing import Literal

from rich.console import Console
from rich.live import Live

from actors.cli.progress import confirmation_answer, confirmation_hint, confirmation_request
from actors.sessions import approvals
from bus.connection import Bus
from bus.errors import StaffworkError
from schemas.trace import AgentToolResult, AnyTraceEvent, ToolConfirmationAnswered, ToolConfirmationRequested


class _Lines:
    """Lines typed at the terminal, read without blocking the event loop: the terminal stays in its
    normal mode (its own line editing; Ctrl-C interrupts the process as it does anywhere in ``run``)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = b""
        self.closed = False

    def discard_typed_ahead(self) -> None:
        """Forget what was typed before a question was shown: a stray Enter answers nothing."""
        self.buffer = b""
        with contextlib.suppress(termios.error, OSError):
            termios.tcflush(self.fd, termios.TCIFLUSH)

    async def readline(self) -> str | None:
        """The next line, without its end; None once the input is closed (Ctrl-D)."""
        loop = asyncio.get_running_loop()
        while b"\n" not in self.buffer and not self.closed:
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.fd, _settle, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)
            chunk = os.read(self.fd, 4096)
            self.buffer += chunk
            self.closed = not chunk
        if not self.buffer:
            return None
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line.decode(errors="replace").strip()


def _settle(ready: asyncio.Future[None]) -> None:
    if not ready.done():
        ready.set_result(None)


@contextlib.contextmanager
def _paused(display: Live | None) -> Iterator[None]:
    """The live table erased while a question is open, and drawn again below it after."""
    if display is None or not display.is_started:
        yield
        return
    display.transient = True
    display.stop()
    try:
        yield
    finally:  # the end of the session (or Ctrl-C) draws its last frame, as without a question
        display.transient, display.vertical_overflow = False, "ellipsis"
        display.start(refresh=True)


_CHOICES: dict[str, Literal["allow", "deny"]] = {
    "y": "allow",
    "yes": "allow",
    "allow": "allow",
    "n": "deny",
    "no": "deny",
    "deny": "deny",
}


class Confirmations:
    """What ``run`` does with tool calls that wait for a person's confirmation.

    With ``ask`` (stdin and the console are a terminal), it asks about each call, one at a time in
    the order they came, and answers with :func:`actors.sessions.approvals.answer` as
    ``run:<user>``. While a question is open the live table is paused and other lines are held; the
    session goes on. A call answered meanwhile (by ``staffwork approve``, the API, a timeout, an
    interrupt) is said so, and the next one asked. Without ``ask``, one line per call says how to
    answer it, and one line per answer who gave it."""

    def __init__(
        self, bus: Bus, session_id: str, console: Console, display: Live | None, *, ask: bool
    ) -> None:
        self.bus, self.session_id, self.console, self.display = bus, session_id, console, display
        self.stdin = _Lines(sys.stdin.fileno()) if ask else None
        self.by = f"run:{getpass.getuser()}"
        self.waiting: asyncio.Queue[ToolConfirmationRequested] = asyncio.Queue()  # unbounded: one per call
        self.seen: set[str] = set()
        self.ended: dict[str, str] = {}  # call -> how it ended without this prompt (an answer, a result)
        self.asking = ""
        self.meanwhile = asyncio.Event()  # the call being asked about ended elsewhere
        self.held: list[str] = []

    def say(self, line: str) -> None:
        """Print ``line`` above the table, or after the open question."""
        if self.asking:
            self.held.append(line)
        else:
            self.console.print(line, highlight=False, markup=False)

    def see(self, event: AnyTraceEvent) -> None:
        """Follow the session's events: requests to ask about, answers and results that end them."""
        call = getattr(event, "tool_use_id", "")
        match event:
            case ToolConfirmationRequested() if call not in self.seen:
                self.seen.add(call)
                if self.stdin is None:
                    self.say(confirmation_hint(event))
                else:
                    self.waiting.put_nowait(event)
            case ToolConfirmationAnswered() if call in self.seen and call not in self.ended:
                self.ended[call] = confirmation_answer(event)
                if self.stdin is None:
                    self.say(self.ended[call])
            case AgentToolResult() if call in self.seen and call not in self.ended:
                self.ended[call] = f"{event.name} ({call}) was closed without an answer: {event.content}"
            case _:
                return
        if call == self.asking and call in self.ended:
            self.meanwhile.set()

    async def run(self) -> None:
        """Ask about each waiting call in turn (until the input closes or the task is cancelled)."""
        while self.stdin is not None:
            request = await self.waiting.get()
            if request.tool_use_id in self.ended:
                self.say(f"answered meanwhile: {self.ended[request.tool_use_id]}")
                continue
            self.asking, self.held = request.tool_use_id, []
            self.meanwhile.clear()
            lines: list[str] = []
            with _paused(self.display):
                try:
                    lines.append(await self._ask(request, self.stdin))
                except asyncio.CancelledError:
                    self.console.print()  # ends the open question's line
                    raise
                finally:
                    self.asking = ""
                    for line in [*lines, *self.held]:
                        self.say(line)

    async def _ask(self, request: ToolConfirmationRequested, stdin: _Lines) -> str:
        """One call's question and answer; the line that says how it ended."""
        self.console.print(confirmation_request(request), highlight=False, markup=False)
        stdin.discard_typed_ahead()
        question = "allow it? [y]es, allow / [n]o, deny: "
        while (typed := await self._line(stdin, question)) is not None:
            if (choice := _CHOICES.get(typed.lower())) is not None:
                break
            question = "y to allow it, n to deny it: "
        else:
            return self._gave_up(request)
        reason = ""
        if choice == "deny":
            typed = await self._line(stdin, "why (the model reads it; Enter for no reason): ")
            if typed is None:
                return self._gave_up(request)
            reason = typed
        if self.meanwhile.is_set():
            return f"answered meanwhile: {self.ended[request.tool_use_id]}"
        try:
            async with asyncio.timeout(30):
                await approvals.answer(
                    self.bus, self.session_id, request.tool_use_id, choice, deny_message=reason, by=self.by
                )
        except (StaffworkError, TimeoutError) as exc:
            return f"{request.name} ({request.tool_use_id}) not answered: {exc or 'no reply within 30s'}"
        return f"{request.name} ({request.tool_use_id}) {'allowed' if choice == 'allow' else 'denied'}" + (
            f": {reason}" if reason else ""
        )

    async def _line(self, stdin: _Lines, prompt: str) -> str | None:
        """A line typed after ``prompt``; None when the input closed or the call ended meanwhile."""
        if self.meanwhile.is_set():
            return None
        self.console.print(prompt, end="", highlight=False, markup=False)
        read = asyncio.ensure_future(stdin.readline())
        ended = asyncio.ensure_future(self.meanwhile.wait())
        try:
            await asyncio.wait({read, ended}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            read.cancel()
            ended.cancel()
            await asyncio.gather(read, ended, return_exceptions=True)
        if read.cancelled():
            self.console.print()
            return None
        return read.result()

    def _gave_up(self, request: ToolConfirmationRequested) -> str:
        """The line for a question that got no answer here: the call ended elsewhere, or the input
        closed (then the other calls are only listed, with how to answer them)."""
        call = request.tool_use_id
        if call in self.ended:
            return f"answered meanwhile: {self.ended[call]}"
        self.stdin = None
        while not self.waiting.empty():
            self.held.append(confirmation_hint(self.waiting.get_nowait()))
        return f"stdin is closed: not asking any more\n{confirmation_hint(request)}"
