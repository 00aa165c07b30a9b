"""``staffwork run``'s prompt for tool calls that wait for a person's confirmation, driven as a person
would: through a pseudo-terminal, reading what it prints (with deadlines, waiting on patterns) and
typing answers. Two agents each ask for a tool in parallel threads; one call is allowed, the other
denied with a reason the model reads; the trace says who answered. Without a terminal, ``run`` only
says how to answer each call."""

from __future__ import annotations

import fcntl
import getpass
import json
import os
import re
import select
import signal
import struct
import subprocess
import termios
import time
from pathlib import Path
from typing import IO

import pytest

from tests.helpers import ROOT_DIR, STAFFWORK, NatsServer

ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[()][0-9A-Za-z]|\r")
WAIT = 12.0  # the longest any one pattern may take to appear

TEAM = """
name = "approvals"

[lead]
name = "lead"

[[agents]]
name = "lister"
description = "Lists the workspace."
tools = ["list_files"]
permissions = {{ always_ask = ["list_files"], timeout_s = {timeout} }}
playbook = {{ calls = [{{ tool = "list_files", input = {{}} }}], answer = "listed: {{result[0]}}" }}

[[agents]]
name = "reader"
description = "Reads the notes."
tools = ["read_file"]
permissions = {{ always_ask = ["read_file"], timeout_s = {timeout} }}

[agents.playbook]
calls = [{{ tool = "read_file", input = {{ path = "notes.txt" }} }}]
answer = "read: {{result[0]}}"
"""


class Output:
    """What a process prints on one file descriptor, read as it comes, with a deadline per wait."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.raw = b""
        self.pos = 0  # where the next expect starts looking
        self.closed = False

    @property
    def text(self) -> str:
        return ANSI.sub("", self.raw.decode(errors="replace"))

    def _read(self, timeout: float) -> None:
        ready, _, _ = select.select([self.fd], [], [], max(timeout, 0.0))
        if not ready:
            return
        try:
            chunk = os.read(self.fd, 65536)
        except OSError:  # EIO: the terminal's other side is gone
            chunk = b""
        self.raw += chunk
        self.closed = not chunk

    def expect(self, pattern: str, timeout: float = WAIT) -> re.Match[str]:
        """The first match of ``pattern`` after the last one, waiting at most ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            found = re.compile(pattern).search(self.text, self.pos)
            if found is not None:
                self.pos = found.end()
                return found
            if self.closed or time.monotonic() > deadline:
                raise AssertionError(f"no {pattern!r} within {timeout:g}s; output so far:\n{self.text}")
            self._read(deadline - time.monotonic())

    def drain(self, process: subprocess.Popen[bytes], timeout: float = WAIT) -> int:
        """Read until ``process`` exits (at most ``timeout`` seconds); its exit code."""
        deadline = time.monotonic() + timeout
        while process.poll() is None or not self.closed:
            if time.monotonic() > deadline:
                process.kill()
                raise AssertionError(f"still running after {timeout:g}s; output:\n{self.text}")
            self._read(min(0.2, deadline - time.monotonic()))
            if process.poll() is not None and not select.select([self.fd], [], [], 0)[0]:
                break
        return process.wait(timeout=5)


def team_file(tmp_path: Path, timeout: float = 60) -> tuple[Path, Path]:
    team = tmp_path / "team.toml"
    team.write_text(TEAM.format(timeout=timeout))
    data = tmp_path / "data"
    data.mkdir()
    (data / "notes.txt").write_text("the notes\n")
    return team, data


def environment(home: Path) -> dict[str, str]:
    env = {**os.environ, "STAFFWORK_HOME": str(home), "TERM": "xterm-256color"}
    for name in ("STAFFWORK_NATS_URL", "COLUMNS", "LINES", "ANTHROPIC_API_KEY"):
        env.pop(name, None)
    return env


def run_args(team: Path, data: Path, server: NatsServer, root: str, *more: str) -> list[str]:
    return [*STAFFWORK, "run", "--team", str(team), "--input", str(data), "check the notes",
            "--nats", server.url, "--root", root, *more]  # fmt: skip


def staffwork_json(home: Path, *args: str) -> list[dict[str, object]]:
    """``staffwork ARGS`` (a command printing JSON lines), run to its end."""
    done = subprocess.run(
        [*STAFFWORK, *args], capture_output=True, text=True, timeout=30, env=environment(home), cwd=ROOT_DIR
    )
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _controlling_terminal() -> None:
    """In the child, after its new session: stdin's terminal becomes its own, so Ctrl-C typed there
    interrupts it as in a real terminal. SIGINT starts at its default, as a shell gives its foreground
    job: a suite started in the background by a non-interactive shell ignores SIGINT, and a child
    would inherit that and take Ctrl-C for nothing."""
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def on_a_terminal(args: list[str], home: Path) -> tuple[subprocess.Popen[bytes], int]:
    """``args`` started on a new pseudo-terminal (200 columns) as its controlling terminal; the
    process and the terminal's other side."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    process = subprocess.Popen(
        args,
        stdin=follower,
        stdout=follower,
        stderr=follower,
        env=environment(home),
        cwd=ROOT_DIR,
        start_new_session=True,
        preexec_fn=_controlling_terminal,
    )
    os.close(follower)
    return process, leader


def test_run_asks_on_a_terminal_and_answers_as_the_user(
    tmp_path: Path, nats_server: NatsServer, root: str
) -> None:
    team, data = team_file(tmp_path)
    process, leader = on_a_terminal(run_args(team, data, nats_server, root), tmp_path)
    terminal = Output(leader)
    typed: IO[bytes] = os.fdopen(os.dup(leader), "wb", buffering=0)
    try:
        asked = []
        for _ in range(2):  # the two threads ask at about the same time: one question at a time
            question = terminal.expect(r"confirm: (\w+) \((t-\S+)\) wants to call (\w+) with (.*)\n")
            terminal.expect(r"denied without an answer in 60s \(at [\d:]+\) · session ses_\w+ · call \S+")
            asked.append(question.group(3))
            terminal.expect(r"allow it\? \[y\]es, allow / \[n\]o, deny: ")
            if question.group(3) == "list_files":
                assert question.group(1) == "lister"
                typed.write(b"y\n")
                terminal.expect(r"list_files \(\S+\) allowed\n")
            else:
                assert (question.group(1), question.group(4)) == ("reader", '{"path": "notes.txt"}')
                typed.write(b"n\n")
                terminal.expect(r"why \(the model reads it; Enter for no reason\): ")
                typed.write(b"not the notes, not today\n")
                terminal.expect(r"read_file \(\S+\) denied: not the notes, not today\n")
        assert sorted(asked) == ["list_files", "read_file"]
        session = terminal.expect(r"status: idle   session: (ses_\w+)").group(1)
        code = terminal.drain(process)
    finally:
        if process.poll() is None:
            process.kill()
        typed.close()
        os.close(leader)
    assert code == 0, terminal.text
    report = terminal.text[terminal.text.rindex("# Report") :]  # the lead's, from its agents' answers
    assert "listed: " in report
    assert re.search(r"read: .*not the notes, not today", report), report  # the model read the reason

    answers = staffwork_json(tmp_path, "tail", "--session", session, "--kind",
                             "agent.tool_confirmation_answered", "--since", "1h", "--no-follow", "--json",
                             "--nats", nats_server.url, "--root", root)  # fmt: skip
    by = f"run:{getpass.getuser()}"
    assert sorted((a["name"], a["result"], a["deny_message"], a["by"]) for a in answers) == [
        ("list_files", "allow", "", by),
        ("read_file", "deny", "not the notes, not today", by),
    ]
    tree = subprocess.run(
        [*STAFFWORK, "trace", session, "--nats", nats_server.url, "--root", root],
        capture_output=True, text=True, timeout=30, env=environment(tmp_path), cwd=ROOT_DIR,
    )  # fmt: skip
    assert tree.returncode == 0, tree.stderr
    assert re.search(rf"✓ list_files allowed by {by} after [\d.]+s", tree.stdout), tree.stdout
    assert re.search(rf"✗ read_file denied by {by} after [\d.]+s: not the notes, not today", tree.stdout)


def test_a_call_answered_elsewhere_meanwhile_is_not_asked_again(
    tmp_path: Path, nats_server: NatsServer, root: str
) -> None:
    team, data = team_file(tmp_path)
    process, leader = on_a_terminal(run_args(team, data, nats_server, root), tmp_path)
    terminal = Output(leader)
    try:
        question = terminal.expect(r"wants to call (\w+) with .*\n.* · session (ses_\w+) · call (\S+)")
        tool, session, call = question.groups()
        terminal.expect(r"allow it\? \[y\]es, allow / \[n\]o, deny: ")
        elsewhere = subprocess.run(
            [*STAFFWORK, "approve", session, call, "--nats", nats_server.url, "--root", root],
            capture_output=True, text=True, timeout=30, env=environment(tmp_path), cwd=ROOT_DIR,
        )  # fmt: skip
        assert elsewhere.returncode == 0, elsewhere.stderr
        terminal.expect(rf"answered meanwhile: {tool} \({re.escape(call)}\) allowed by {getpass.getuser()}\n")
        other = terminal.expect(r"wants to call (\w+) with ").group(1)  # the next call is asked
        assert other != tool
        terminal.expect(r"allow it\? \[y\]es, allow / \[n\]o, deny: ")
        os.write(leader, b"y\n")
        terminal.expect(rf"{other} \(\S+\) allowed\n")
        terminal.expect(r"status: idle")
        code = terminal.drain(process)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    assert code == 0, terminal.text


def test_ctrl_c_at_the_prompt_ends_run_as_anywhere_else(
    tmp_path: Path, nats_server: NatsServer, root: str
) -> None:
    # run stops its actors as after any Ctrl-C: in-flight work gets their grace period (30 s), and a
    # call waiting for a confirmation waits on; a short policy timeout ends the wait sooner
    team, data = team_file(tmp_path, timeout=4)
    process, leader = on_a_terminal(run_args(team, data, nats_server, root), tmp_path)
    terminal = Output(leader)
    try:
        terminal.expect(r"allow it\? \[y\]es, allow / \[n\]o, deny: ")
        os.write(leader, b"\x03")  # the terminal sends SIGINT to its foreground process group
        code = terminal.drain(process)
    finally:
        if process.poll() is None:
            process.kill()
        os.close(leader)
    assert code == 130, terminal.text  # as Ctrl-C anywhere in run
    assert "Traceback" not in terminal.text
    assert "allowed" not in terminal.text
    assert "denied:" not in terminal.text  # nothing was answered


@pytest.mark.parametrize("as_json", [False, True], ids=["pipe", "json"])
def test_without_a_terminal_run_says_how_to_answer(
    tmp_path: Path, nats_server: NatsServer, root: str, as_json: bool
) -> None:
    team, data = team_file(tmp_path, timeout=60)
    process = subprocess.Popen(
        run_args(team, data, nats_server, root, *(["--json"] if as_json else [])),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=environment(tmp_path),
        cwd=ROOT_DIR,
        start_new_session=True,
    )
    assert process.stderr is not None
    output = Output(process.stderr.fileno())
    try:
        hints = {}
        for _ in range(2):
            hint = output.expect(
                r"waiting for confirmation: (\w+) \(t-\S+\) calls (\w+) .*; answer with "
                r"staffwork approve (ses_\w+) (\S+), or staffwork deny \3 \4 --reason TEXT "
                r"\(denied without an answer in 60s"
            )
            hints[hint.group(2)] = (hint.group(3), hint.group(4))
        assert sorted(hints) == ["list_files", "read_file"]
        assert "allow it?" not in output.text  # nothing asks
        for verb, tool in (("approve", "list_files"), ("deny", "read_file")):
            session, call = hints[tool]
            done = subprocess.run(
                [*STAFFWORK, verb, session, call, "--nats", nats_server.url, "--root", root],
                capture_output=True, text=True, timeout=30, env=environment(tmp_path), cwd=ROOT_DIR,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        output.expect(r"list_files \(\S+\) allowed by \S+")
        output.expect(r"read_file \(\S+\) denied by \S+", timeout=WAIT)
        code = output.drain(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    assert code == 0, output.text
