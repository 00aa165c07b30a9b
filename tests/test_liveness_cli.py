"""Commands that must not interfere (issue 12): ``run`` is served by actors with its own model settings
and says which model served; ``run --json`` and the live table end a thread that failed; ``doctor``
prints whole paths when its output is piped; a machine-check process is reaped by asyncio alone."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from actors.agent.models.base import ModelRequest, ModelResponse, ModelRetryable
from actors.agent.models.scripted import ScriptedModel, calls
from actors.agent.models.scripted import text as answer
from actors.cli.progress import Progress
from actors.client import Client
from actors.grader.checks import run_checks_apart
from actors.roles import AgentSettings, running_agents
from bus.connection import Bus
from bus.server import find_server_binary
from schemas.base import ErrorInfo
from schemas.outcome import Check
from schemas.session import SessionSubmit
from schemas.trace import (
    AnyTraceEvent,
    ModelRequestEnd,
    SessionErrorEvent,
    SessionStatusIdle,
    ThreadCreated,
    ThreadStatusRunning,
    ThreadStatusTerminated,
)
from tests.fake_messages_api import FakeMessagesAPI, text
from tests.helpers import ROOT_DIR, STAFFWORK, delegate, staffwork, submit_and_wait, team

# --- case 10: two runs at once, each served by its own model ---------------------------------------

KEY = "sk-test-fake"
MODEL = "claude-sonnet-4-6"
PAIR_TEAM = f"""
name = "pair"
model = "{MODEL}"

[lead]
name = "lead"
system = "You coordinate."

[[agents]]
name = "helper"
description = "Helps with anything."
"""


def _environment(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without model settings, proxies or a NATS URL, plus ``extra``."""
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("ANTHROPIC_")
        and name.lower() not in ("http_proxy", "https_proxy", "all_proxy")
        and name not in ("STAFFWORK_NATS_URL", "STAFFWORK_ROOT")
    }
    return {**environment, "STAFFWORK_HOME": str(home), "HOME": str(home), "NO_PROXY": "127.0.0.1", **extra}


@pytest.mark.slow
def test_two_runs_at_once_are_each_served_by_their_own_model(tmp_path: Path) -> None:
    """A run with Claude (the fake Messages API) owns the embedded server and is in its lead's first
    model call when an offline run starts on the same STAFFWORK_HOME. Each session's model calls come
    from its own configuration: the fake API sees only the first run's task, with its key; the second
    is answered by the offline model, and each run's ``model`` says which model answered it."""
    team = tmp_path / "team.toml"
    team.write_text(PAIR_TEAM)
    command = [*STAFFWORK, "run", "--team", str(team), "--json"]
    with FakeMessagesAPI(api_key=KEY) as api:
        for _ in range(4):
            api.reply(text("the answer from claude"))
        api.delay_next(6.0)  # the first run's lead call stays in flight while the second run starts
        claude = subprocess.Popen(
            [*command, "task for claude"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_environment(tmp_path, ANTHROPIC_API_KEY=KEY, ANTHROPIC_BASE_URL=api.url),
            cwd=ROOT_DIR,
        )
        offline = None
        try:
            deadline = time.monotonic() + 60
            while not api.requests:  # another process's progress: nothing to subscribe to
                assert claude.poll() is None, claude.communicate()
                assert time.monotonic() < deadline, "the first run made no model call"
                time.sleep(0.05)
            offline = subprocess.Popen(
                [*command, "task for offline"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=_environment(tmp_path),
                cwd=ROOT_DIR,
            )
            outputs = [proc.communicate(timeout=120) for proc in (claude, offline)]
        finally:
            for proc in (claude, offline):
                if proc is not None and proc.poll() is None:
                    proc.kill()
                    proc.communicate()
        requests = api.requests
    for proc, (_, stderr) in zip((claude, offline), outputs, strict=True):
        assert proc.returncode == 0, stderr
    asked = [json.dumps(request.body) for request in requests]
    assert all("task for claude" in body and "task for offline" not in body for body in asked), asked
    assert {request.credential for request in requests} == {KEY}
    by_claude, by_offline = (json.loads(stdout) for stdout, _ in outputs)
    assert (by_offline["status"], by_offline["model"]) == ("idle", "offline")
    assert "[offline model]" in by_offline["final_text"]
    assert (by_claude["status"], by_claude["model"]) == ("idle", MODEL)  # the model id, not "anthropic"
    assert by_claude["final_text"] == "the answer from claude"


# --- case 12: doctor's table is not cut when piped -------------------------------------------------


def test_doctor_prints_a_long_binary_path_whole_when_piped(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(f"a-rather-long-directory-name-{n}" for n in range(6)))
    deep.mkdir(parents=True)
    binary = deep / "nats-server"
    binary.symlink_to(find_server_binary())
    result = staffwork("doctor", home=tmp_path, env={"STAFFWORK_NATS_SERVER": str(binary)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(str(binary)) > 200
    assert str(binary) in result.stdout  # whole, on one line: nothing cut, nothing folded


# --- case 12: the check process is reaped by asyncio's child watcher only -------------------------


async def test_a_crashed_check_process_keeps_its_exit_code_when_the_watcher_is_slow(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The child has exited but asyncio's watcher has not reaped it yet when the grader finds its
    output ended: the grader must not reap it behind the watcher's back (the watcher would then report
    exit code 255, "Unknown child process pid")."""
    crashing = tmp_path / "python"
    crashing.write_text("#!/bin/sh\necho 'boom' >&2\nexit 3\n")
    crashing.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crashing))
    waitpid = os.waitpid

    def slow_waitpid(pid: int, options: int) -> tuple[int, int]:
        if options == 0:  # the watcher's blocking wait (subprocess.Popen.poll binds its own waitpid)
            import time

            time.sleep(0.5)  # runs in the watcher's thread
        return waitpid(pid, options)

    monkeypatch.setattr(os, "waitpid", slow_waitpid)
    checks = [Check(name="first", kind="matches", pattern="a")]
    [verdict] = await run_checks_apart(checks, "a", {})
    assert verdict.explanation == "the check's process crashed (exit code 3): boom"


# --- case 11: a thread that failed shows as failed --------------------------------------------------

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def thread_events(*more: AnyTraceEvent) -> list[AnyTraceEvent]:
    fields: dict[str, Any] = {"session_id": "ses_1", "thread_id": "t-1", "agent": "logs"}
    return [
        ThreadCreated(time=at(0), task="look", **fields),
        ThreadStatusRunning(time=at(1), **fields),
        ModelRequestEnd(
            time=at(2), model="claude-x", error=ErrorInfo(kind="retryable", message="500"), **fields
        ),
        *more,
    ]


def test_a_thread_whose_retries_ran_out_ends_failed_in_the_table_and_json() -> None:
    progress = Progress()
    error = ErrorInfo(kind="retries_exhausted", message="logs model claude-x: 500", retryable=True)
    events = thread_events(
        SessionErrorEvent(time=at(9), session_id="ses_1", thread_id="t-1", agent="logs", error=error)
    )
    for event in events:
        progress.apply(event)
    row = progress.threads["t-1"].as_json()
    assert (row["status"], row["ended"]) == ("failed", at(9).isoformat())
    assert progress.threads["t-1"].elapsed(at(100)) == 9.0


def test_a_terminated_thread_ends_with_its_reason() -> None:
    progress = Progress()
    fields: dict[str, Any] = {"session_id": "ses_1", "thread_id": "t-1", "agent": "logs"}
    for event in thread_events(ThreadStatusTerminated(time=at(5), reason="failed", **fields)):
        progress.apply(event)
    row = progress.threads["t-1"].as_json()
    assert (row["status"], row["ended"]) == ("failed", at(5).isoformat())


async def test_a_thread_whose_model_calls_ran_out_is_failed_from_the_real_trace(bus: Bus) -> None:
    """The real events of a subagent whose model calls are exhausted (the runtime fails its delivery
    for good): the row of its thread ends ``failed``, as ``trace`` says, and the lead's goes idle."""

    def overloaded(request: ModelRequest) -> ModelResponse:
        raise ModelRetryable("fake overloaded (gave up after 5 attempts)", status=529)

    model = ScriptedModel(
        {
            "lead": [calls(delegate("toolu_1", "logs", "look")), answer("done without logs")],
            "logs": [overloaded],
        }
    )
    settings = AgentSettings(max_deliver=1)  # the first retryable failure is the last
    async with running_agents(bus, model, agents=["logs"], settings=settings):
        result = await submit_and_wait(bus, SessionSubmit(task="investigate", team_spec=team("logs")))
    assert result.status == "idle", result.final_text
    progress = Progress()
    async with asyncio.timeout(20):
        async for event in Client(bus).events(result.session_id):
            progress.apply(event)
            if isinstance(event, SessionStatusIdle):
                break
    [thread] = [row for row in progress.threads.values() if row.agent == "logs"]
    assert thread.status == "failed"
    assert thread.ended is not None
    assert progress.threads["lead"].status == "idle"
    model.assert_done()
