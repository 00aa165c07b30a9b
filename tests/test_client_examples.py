"""The client examples (``examples/clients``, shown verbatim in the README's "Start sessions from
other systems") run as real processes against a real stack: a nats-server of their own, the incident
team registered as ``staffwork up`` registers it, and the lead, the team's workers and the grader on
the offline model. Each hands in the incident example's data as the session's inputs; the report must
name what the data shows (the generator's ground truth), so an example that forgot its inputs fails."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from actors.agent.models.offline import OfflineModel
from actors.client import Client
from actors.roles import RoleConfig, serve_roles
from actors.sessions.teams import register_team
from bus.connection import Bus
from bus.provision import provision
from examples.incident.generate import GroundTruth, generate
from schemas import SessionResult
from schemas.team import parse_team
from tests.helpers import ROOT_DIR, need_tool, npm_ci, start_nats_server, stop_nats_server

CLIENTS = ROOT_DIR / "examples" / "clients"
TEAM_FILE = ROOT_DIR / "examples" / "incident" / "team.toml"
README = ROOT_DIR / "README.md"
#: Debian's nats.go (golang-github-nats-io-go-nats-dev), built in GOPATH mode: CI has no module proxy
GOPATH = Path("/usr/share/gocode")
#: the command that runs each example, in examples/clients
EXAMPLES = {
    "submit.mjs": ["node", "submit.mjs"],
    "submit.go": ["go", "run", "submit.go"],
    "submit.py": [sys.executable, "submit.py"],
    "submit_nats.py": [sys.executable, "submit_nats.py"],
}
#: a file line of the README (``nats.js ([examples/clients/submit.mjs](examples/clients/submit.mjs)):``)
#: and the code block after it
SHOWN = re.compile(
    r"\(\[examples/clients/([^\]]+)\]\(examples/clients/\1\)\):\n\n```\w+\n(.*?)^```", re.S | re.M
)


def test_the_readme_shows_every_client_example_verbatim() -> None:
    shown = dict(SHOWN.findall(README.read_text()))
    assert sorted(shown) == sorted(EXAMPLES)
    for name, text in shown.items():
        assert text == (CLIENTS / name).read_text(), f"README.md's copy of examples/clients/{name} differs"


# --- the clients' toolchains ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def clients_node_modules() -> Path:
    """``npm ci`` in ``examples/clients`` once per test session."""
    return npm_ci(CLIENTS, "the nats.js client example needs it")


@pytest.fixture(scope="session")
def go_nats() -> Path:
    """Debian's Go toolchain and nats.go (``.ci/run`` installs both)."""
    need_tool("go", "the nats.go client example needs it")
    if not (GOPATH / "src" / "github.com" / "nats-io" / "nats.go").is_dir():
        if os.environ.get("CI"):
            pytest.fail(
                f"nats.go must be under {GOPATH} in CI (apt-get install golang-github-nats-io-go-nats-dev)"
            )
        pytest.skip(f"nats.go is not under {GOPATH}")
    return GOPATH


@pytest.fixture
def toolchain(request: pytest.FixtureRequest, example: str) -> dict[str, str]:
    """What ``example`` needs to run: its packages installed; the variables its toolchain reads."""
    if example == "submit.mjs":
        request.getfixturevalue("clients_node_modules")
    if example == "submit.go":
        return {"GO111MODULE": "off", "GOPATH": str(request.getfixturevalue("go_nats"))}
    return {}


# --- the stack: nats-server, and the actors in a thread of this process ----------------------------------


@contextmanager
def serving_incident(url: str) -> Iterator[None]:
    """What ``staffwork up`` runs for the incident team, on ``url`` under the root ``sw``: the team
    registered; the lead (with its gateway), the team's workers and the grader, on the offline model,
    in a thread with its own event loop (the examples run while the tests wait on them)."""
    team = parse_team(TEAM_FILE.read_bytes(), source=str(TEAM_FILE))
    config = RoleConfig(model=OfflineModel(), agents=[agent.name for agent in team.agents], team=team)
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    ready = threading.Event()
    failed: list[BaseException] = []

    async def serve() -> None:
        async with await Bus.connect(url, root="sw", name="test-clients-stack") as bus:
            await provision(bus)
            await register_team(bus, team)
            await serve_roles(bus, ["lead", "subagent", "grader"], config, stop, on_ready=ready.set)

    def run() -> None:
        try:
            loop.run_until_complete(serve())
        except BaseException as exc:  # re-raised in the test's thread
            failed.append(exc)
        finally:
            ready.set()
            loop.close()

    thread = threading.Thread(target=run, name="incident-stack")
    thread.start()
    try:
        assert ready.wait(30), "the actors were not ready within 30 s"
        if failed:
            raise failed[0]
        yield
    finally:
        if not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        thread.join(60)
    assert not thread.is_alive(), "the actors did not stop within 60 s"
    if failed:
        raise failed[0]


@pytest.fixture(scope="module")
def incident(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    """The incident example's data (what ``staffwork up`` generates), and what happened in it."""
    directory = tmp_path_factory.mktemp("incident") / "data"
    return directory, generate(directory)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, incident: tuple[Path, GroundTruth]) -> Iterator[str]:
    """A server of its own, with the incident team served on it: its URL."""
    data, _ = incident
    server = start_nats_server(tmp_path_factory.mktemp("nats"))
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("INCIDENT_DATA", str(data))  # where the deploys worker's deploy API reads
            with serving_incident(server.url):
                yield server.url
    finally:
        stop_nats_server(server)


def run_example(example: str, url: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EXAMPLES[example], *args],
        cwd=CLIENTS,
        env={**os.environ, **env, "STAFFWORK_NATS_URL": url},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def stored_result(url: str, session_id: str) -> SessionResult:
    async with await Client.connect(url, name="test-clients") as client:
        return await client.wait(session_id, timeout=10)


@pytest.mark.slow
@pytest.mark.parametrize("example", list(EXAMPLES))
def test_an_example_hands_in_a_directory_and_prints_the_report(
    stack: str, incident: tuple[Path, GroundTruth], example: str, toolchain: dict[str, str]
) -> None:
    directory, truth = incident
    done = run_example(example, stack, toolchain, str(directory))

    assert done.returncode == 0, done.stderr
    status = re.search(r"^session (ses_[0-9a-f]{16}): (\w+)$", done.stdout, re.M)
    assert status is not None, done.stdout
    assert status.group(2) == "idle"
    result = asyncio.run(stored_result(stack, status.group(1)))
    assert result.status == "idle"
    assert result.outcome is not None
    assert result.outcome.result == "satisfied", result.final_text
    # what only the data shows: the agents read the files the example put (as test_incident checks)
    for fact in (truth.deploy_id, truth.deployed_at, truth.service, truth.error_signature, truth.metric):
        assert fact in result.final_text, result.final_text
    # the example's own lines and nothing else (submit.py: no log lines from the staffwork client)
    assert done.stdout == f"{status.group(0)}\n{result.final_text}\n"


@pytest.mark.slow
@pytest.mark.parametrize("example", list(EXAMPLES))
def test_an_example_says_why_a_request_is_refused(
    stack: str, tmp_path: Path, example: str, toolchain: dict[str, str]
) -> None:
    (tmp_path / "notes.txt").write_text("checkout failed at 14:05\n")
    done = run_example(example, stack, toolchain, str(tmp_path), "nosuchteam")

    assert done.returncode == 1, done.stdout + done.stderr
    assert "refused: unknown_team: team 'nosuchteam' is not registered (known: incident)\n" in done.stderr
    assert done.stdout == ""


@pytest.mark.slow
@pytest.mark.parametrize("example", list(EXAMPLES))
def test_an_example_submits_nothing_without_files(
    stack: str, tmp_path: Path, example: str, toolchain: dict[str, str]
) -> None:
    (tmp_path / "empty").mkdir()
    done = run_example(example, stack, toolchain, str(tmp_path))

    assert done.returncode == 1, done.stdout + done.stderr
    assert f"no files below {tmp_path}\n" in done.stderr
    assert done.stdout == ""
