"""The incident example's deploy API: the real MCP server, started over stdio by the SDK's client, over
data generated here (whose answer, the GroundTruth, the generator returns)."""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.types import TextContent

from examples.incident.deploy_api import data_folder
from examples.incident.generate import FILES, GroundTruth, generate

ROOT = Path(__file__).resolve().parents[1]
WAIT = 10.0  # the longest a test waits for the server: its start, its calls and its stop


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    directory = tmp_path_factory.mktemp("incident")
    return directory, generate(directory)


@asynccontextmanager
async def deploy_api(
    log: Path, *args: str, env: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    """A session with ``python -m examples.incident.deploy_api ARGS`` (its stderr goes to ``log``)."""
    command = ["-m", "examples.incident.deploy_api", *args]
    params = StdioServerParameters(command=sys.executable, args=command, cwd=ROOT, env=env)
    with log.open("w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> tuple[bool, str]:
    result = await session.call_tool(tool, arguments)
    return result.is_error, "".join(c.text for c in result.content if isinstance(c, TextContent))


async def answer(session: ClientSession, tool: str, **arguments: Any) -> Any:
    """The tool's JSON answer (the call must succeed)."""
    failed, text = await call(session, tool, **arguments)
    assert not failed, text
    return json.loads(text)


async def refusal(session: ClientSession, tool: str, **arguments: Any) -> str:
    """The tool's error (the call must fail, with one line)."""
    failed, text = await call(session, tool, **arguments)
    assert failed, text
    assert text, "an error without a message"
    assert "\n" not in text, text
    return text


def csv_rows(directory: Path) -> list[dict[str, str]]:
    with (directory / "deploys.csv").open(newline="") as file:
        return list(csv.DictReader(file))


async def test_it_offers_three_read_only_tools(data: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    directory, _ = data
    async with asyncio.timeout(WAIT), deploy_api(tmp_path / "stderr", "--data", str(directory)) as api:
        tools = {tool.name: tool for tool in (await api.list_tools()).tools}
    assert sorted(tools) == ["get_deploy", "list_deploys", "list_rollbacks"]
    for tool in tools.values():
        assert tool.description, tool.name
        assert tool.annotations is not None, tool.name
        assert tool.annotations.read_only_hint, tool.name
    assert list(tools["list_deploys"].input_schema["properties"]) == [
        "service",
        "status",
        "since",
        "until",
        "limit",
    ]
    assert tools["get_deploy"].input_schema["required"] == ["deploy_id"]
    assert list(tools["list_rollbacks"].input_schema["properties"]) == ["service"]


async def test_the_rollback_names_the_bad_deploy(data: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    directory, truth = data
    async with asyncio.timeout(WAIT), deploy_api(tmp_path / "stderr", "--data", str(directory)) as api:
        every = await answer(api, "list_rollbacks")
        of_the_service = await answer(api, "list_rollbacks", service=truth.service)
        of_another = await answer(api, "list_rollbacks", service="search")
        bad = await answer(api, "get_deploy", deploy_id=truth.deploy_id)

    assert every == of_the_service
    assert of_another == {"count": 0, "rollbacks": []}
    assert every["count"] == 1
    (rollback,) = every["rollbacks"]
    assert rollback["reverted_deploy_id"] == truth.deploy_id
    assert rollback["reverted_deployed_at"] == truth.deployed_at
    assert rollback["service"] == truth.service
    assert rollback["from_version"] == truth.version
    # the rollback ends the burst: it went out after the first error, and the last one soon after it
    assert truth.first_error_at < rollback["rolled_back_at"] < truth.last_error_at
    assert rollback["reverted_after_s"] > 0
    # the version it went back to is the one that ran before the bad deploy
    assert bad["deploy"]["deploy_id"] == truth.deploy_id
    assert bad["previous"]["version"] == rollback["to_version"] != truth.version
    assert bad["previous"]["deploy_id"] == rollback["restored_deploy_id"]
    assert bad["next"]["deploy_id"] == bad["rolled_back_by"] == rollback["rollback_deploy_id"]
    assert bad["rolls_back"] is None


async def test_list_deploys_filters(data: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    directory, truth = data
    rows = csv_rows(directory)
    async with asyncio.timeout(WAIT), deploy_api(tmp_path / "stderr", "--data", str(directory)) as api:
        every = await answer(api, "list_deploys")
        of_the_service = await answer(api, "list_deploys", service=truth.service)
        failed = await answer(api, "list_deploys", status="failed")
        from_the_bad_one = await answer(api, "list_deploys", since=truth.deployed_at, limit=2)
        before_it = await answer(api, "list_deploys", until=truth.deployed_at, service=truth.service)
        window = await answer(
            api, "list_deploys", since="2024-05-14T12:00:00Z", until="2024-05-14T18:00:00.000Z"
        )

    assert every["count"] == every["total"] == len(rows)
    assert sorted(every["deploys"], key=lambda d: d["deployed_at"]) == every["deploys"]
    assert sorted(every["deploys"], key=lambda d: d["deploy_id"]) == sorted(
        rows, key=lambda d: d["deploy_id"]
    )
    assert of_the_service["deploys"] == [d for d in every["deploys"] if d["service"] == truth.service]
    assert [d["status"] for d in failed["deploys"]] == ["failed"] * failed["total"]
    assert failed["total"] == sum(r["status"] == "failed" for r in rows) >= 1
    # since is inclusive, until exclusive; limit keeps the oldest and says how many matched
    assert (from_the_bad_one["count"], from_the_bad_one["deploys"][0]["deploy_id"]) == (2, truth.deploy_id)
    assert from_the_bad_one["total"] == sum(r["deployed_at"] >= truth.deployed_at for r in rows)
    assert truth.deploy_id not in {d["deploy_id"] for d in before_it["deploys"]}
    assert before_it["total"] == of_the_service["total"] - 3  # then the bad deploy, the rollback, the fix
    assert all("2024-05-14T12" <= d["deployed_at"] < "2024-05-14T18" for d in window["deploys"])
    assert window["total"] == sum("2024-05-14T12" <= r["deployed_at"] < "2024-05-14T18" for r in rows)


async def test_bad_input_is_an_error_result_of_one_line(
    data: tuple[Path, GroundTruth], tmp_path: Path
) -> None:
    directory, _ = data
    async with asyncio.timeout(WAIT), deploy_api(tmp_path / "stderr", "--data", str(directory)) as api:
        unknown = await refusal(api, "get_deploy", deploy_id="dpl-000000")
        bad_time = await refusal(api, "list_deploys", since="2024-05-14 14:00")
        no_such_day = await refusal(api, "list_deploys", until="2024-05-32T00:00:00Z")
        bad_status = await refusal(api, "list_deploys", status="ok")
        bad_service = await refusal(api, "list_rollbacks", service="paymnts")
        empty_window = await refusal(
            api, "list_deploys", since="2024-05-14T15:00:00Z", until="2024-05-14T14:00:00Z"
        )
        bad_limit = await refusal(api, "list_deploys", limit=0)
        not_a_number = await refusal(api, "list_deploys", limit="ten")
        misspelt = await refusal(api, "list_deploys", services="payments")
        missing = await refusal(api, "get_deploy")
    assert "no deploy 'dpl-000000'" in unknown
    assert "since: '2024-05-14 14:00' is not an ISO time in UTC like 2024-05-14T14:00:00Z" in bad_time
    assert "until: '2024-05-32T00:00:00Z' is not an ISO time" in no_such_day
    assert "status 'ok' is not one of succeeded, failed" in bad_status
    assert "service 'paymnts' has no deploys (services: accounts, catalog, " in bad_service
    assert "the window is empty" in empty_window
    assert "limit 0 is out of range" in bad_limit
    assert "limit: Input should be a valid integer" in not_a_number
    assert "no argument 'services' (it takes: service, status, since, until, limit)" in misspelt
    assert "deploy_id: Field required" in missing


async def test_it_reads_the_folder_in_incident_data(data: tuple[Path, GroundTruth], tmp_path: Path) -> None:
    directory, truth = data
    async with (
        asyncio.timeout(WAIT),
        deploy_api(tmp_path / "stderr", env={"INCIDENT_DATA": str(directory)}) as api,
    ):
        rollbacks = await answer(api, "list_rollbacks")
    assert rollbacks["rollbacks"][0]["reverted_deploy_id"] == truth.deploy_id


def test_without_a_folder_it_uses_the_examples_own_generating_it_once(
    data: tuple[Path, GroundTruth], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, _ = data
    monkeypatch.setenv("STAFFWORK_HOME", str(tmp_path))
    monkeypatch.delenv("INCIDENT_DATA", raising=False)
    folder = data_folder(None)
    assert folder == tmp_path / "examples" / "incident"
    assert sorted(p.name for p in folder.iterdir()) == sorted(FILES)
    assert (folder / "deploys.csv").read_bytes() == (directory / "deploys.csv").read_bytes()
    (folder / "deploys.csv").write_text("kept\n")  # it is not generated again
    assert data_folder(None) == folder
    assert (folder / "deploys.csv").read_text() == "kept\n"
    monkeypatch.setenv("INCIDENT_DATA", str(directory))
    assert data_folder(None) == directory
    assert data_folder(tmp_path / "given") == tmp_path / "given"


def test_a_folder_without_the_data_is_one_line_and_exit_1(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "examples.incident.deploy_api", "--data", str(tmp_path / "none")],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.splitlines() == [
        f"python -m examples.incident.deploy_api: error: {tmp_path / 'none' / 'deploys.csv'}: no such file "
        "(python -m examples.incident.generate DIR makes it)"
    ]
