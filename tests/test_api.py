"""The HTTP API with the official ``anthropic`` SDK as its client: a real server (uvicorn) on a random
port in front of a real nats-server, exactly as a program written for the hosted service reaches it,
but for ``base_url`` and the key."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import anthropic
import pytest

from actors.agent.models.offline import OfflineModel
from actors.api.actor import ApiActor
from actors.api.auth import ENV as API_KEYS_ENV
from actors.api.auth import ApiKeys
from actors.roles import RoleConfig, running, running_agents
from bus.connection import Bus
from tests.helpers import API_KEY as KEY
from tests.helpers import OTHER_API_KEY as OTHER_KEY
from tests.helpers import ROOT_DIR, NatsServer, free_port, ready_process, run_cli
from tests.helpers import api_client as client


async def test_a_wrong_key_is_the_sdks_authentication_error(api: ApiActor) -> None:
    async with client(api, "sk-nobody-0123456789abcdef") as stranger:
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await stranger.beta.environments.retrieve("env_x")
    assert caught.value.status_code == 401
    assert caught.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
    assert str(caught.value.request_id).startswith("req_")


async def test_an_unknown_endpoint_is_the_sdks_not_found_error(sdk: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.NotFoundError, match="no such endpoint: GET /v1/vaults"):
        await sdk.beta.vaults.list()


def test_api_keys_name_the_offending_entry() -> None:
    with pytest.raises(Exception, match="entry 2 is not WORKSPACE=KEY"):
        ApiKeys.parse(f"acme={KEY},oops")
    with pytest.raises(Exception, match="the key of 'acme' is shorter than 16 characters"):
        ApiKeys.parse("acme=short")
    keys = ApiKeys.parse(f"acme={KEY}, globex={OTHER_KEY}")
    assert (keys.workspace(KEY), keys.workspace(OTHER_KEY), keys.workspace("x" * 20)) == (
        "acme",
        "globex",
        None,
    )


async def test_the_api_role_is_a_process_of_its_own(
    nats_server: NatsServer, bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``staffwork actor api``: keys from the environment, never the command line; without keys, one
    line says what to set."""
    args = ["actor", "api", "--nats", nats_server.url, "--root", bus.subjects.root]
    monkeypatch.delenv(API_KEYS_ENV, raising=False)
    code, _, err = await run_cli(*args)
    assert code == 1
    assert "error: the api role needs API keys: set STAFFWORK_API_KEYS=WORKSPACE=KEY[,...]" in err
    monkeypatch.setenv(API_KEYS_ENV, f"acme={KEY}")
    port = free_port()
    async with ready_process("actors.cli", *args, "--api-port", str(port), ready_word=b"api ready"):
        url = f"http://127.0.0.1:{port}"
        async with anthropic.AsyncAnthropic(base_url=url, api_key=KEY, max_retries=0) as sdk:
            with pytest.raises(anthropic.NotFoundError, match="no such endpoint"):
                await sdk.beta.vaults.list()


async def run_program(program: Path, api: ApiActor) -> list[str]:
    """``program`` run to its end as a process, with only the base URL and the key set for it; the
    lines it printed (a failure shows its stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(program),
        env={**os.environ, "ANTHROPIC_BASE_URL": api.url, "ANTHROPIC_API_KEY": KEY},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode().splitlines()


async def test_the_readmes_sdk_program_runs_as_written(api: ApiActor, bus: Bus) -> None:
    """README's "Use it from the anthropic SDK" program is examples/sdk/managed_agents.py, verbatim,
    and runs unchanged against the API but for ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY: its session
    runs on a lead and a pool that serves its three specialists (offline)."""
    program = ROOT_DIR / "examples" / "sdk" / "managed_agents.py"
    readme = (ROOT_DIR / "README.md").read_text()
    section = readme[readme.index("## Use it from the anthropic SDK") :]
    assert section.split("```python\n", 1)[1].split("```", 1)[0] == program.read_text()
    async with running_agents(bus, OfflineModel(), pool=True):  # the pool serves the program's agents
        lines = await run_program(program, api)
    assert lines[0].startswith("coordinator agent_")
    assert lines[0].count("agent_") == 4  # the coordinator and its three specialists
    threads = sorted(line.rsplit(" ", 1)[1] for line in lines if line.startswith("thread "))
    assert threads == ["deploys", "logs", "metrics"]
    assert any(line.startswith("lead: # Report") for line in lines), lines
    summary = next(line for line in lines if line.startswith("threads: "))
    assert summary.startswith("threads: 7 events: ")  # the lead's, three per turn
    follow_ups = [line for line in lines if line.startswith("follow-up: ")]
    assert follow_ups, lines
    assert follow_ups[0].startswith("follow-up: # Report"), lines
    assert int(summary.rsplit(" ", 1)[1]) > 10
    conflict = next(line for line in lines if line.startswith("conflict: "))
    assert conflict.startswith("conflict: 409")
    assert "memory_precondition_failed_error" in conflict
    assert "memories: ['/style.md']" in lines
    assert "agent 'agent_does_not_exist' not found" in lines[-1]


async def test_the_hosted_services_minimal_program_runs_unchanged(api: ApiActor, bus: Bus) -> None:
    """tests/fixtures/hosted_program.py is the program a compatible server must run unchanged (from
    the SDK 2.16 notes): a coordinator with a specialist and ``self``, a memory store written with a
    precondition and attached read-write, a session with an outcome followed on the stream, its
    threads and their events, an interrupt, the event list, the memories, a dream. It runs as
    written, on a lead, a pool, the grader and the dreamer (offline), the key and base URL set."""
    program = ROOT_DIR / "tests" / "fixtures" / "hosted_program.py"
    roles = ["lead", "pool", "grader", "dreamer"]
    async with running(bus, roles, RoleConfig(model=OfflineModel())):
        lines = await run_program(program, api)
    assert any(line.startswith("lead: ") for line in lines), lines
    graded = [line for line in lines if line.startswith("grader: ")]
    assert graded, lines
    threads = [line.split() for line in lines if line.startswith("thread ")]
    assert [t[2] for t in threads].count("None") == 1  # the primary thread; the others its children
    assert len(threads) == 3, threads  # the lead's, log-reader's and the lead's copy (self)
    assert all(t[3] == "idle" and int(t[4]) > 0 for t in threads), threads
    memories, events = lines[-2].rsplit(" ", 2)[0], int(lines[-2].rsplit(" ", 2)[1])
    assert memories == "['/style.md']"
    assert events > 10
    assert lines[-1] in ("dream pending", "dream running", "dream completed")


@pytest.mark.parametrize("bad", ["a*b", "a.b", "x>", "a b"])
async def test_an_id_that_is_no_token_is_not_found_on_every_resource(
    sdk: anthropic.AsyncAnthropic, bad: str
) -> None:
    """A caller's id never addresses another record's key: Records answers None for it."""
    for get in (
        sdk.beta.environments.retrieve,
        sdk.beta.agents.retrieve,
        sdk.beta.memory_stores.retrieve,
        sdk.beta.sessions.retrieve,
        sdk.beta.dreams.retrieve,
    ):
        with pytest.raises(anthropic.NotFoundError):
            await get(bad)
