"""The published contract, checked with real tools: the AsyncAPI catalogue parses with the official
parser, and types generated from ``staffwork schema`` (TypeScript by quicktype, Python by
datamodel-code-generator) parse every message of a whole session's live traffic."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from actors.agent.models.offline import OfflineModel
from actors.asyncapi import asyncapi_document
from actors.catalog import channels
from actors.client import Client
from actors.roles import RoleConfig, running
from bus.connection import Bus
from bus.direct import read_subject
from schemas.export import bus_messages, def_name, json_schema
from schemas.outcome import Check, Outcome
from schemas.session import SessionSubmit
from schemas.team import AgentSpec, CustomTool, Playbook, PlaybookCall, TeamSpec
from schemas.trace import CustomToolUse, SessionStatusIdle
from tests.helpers import npm_ci, submit, wait_result

CONTRACT_DIR = Path(__file__).parent / "contract"
BIN = CONTRACT_DIR / "node_modules" / ".bin"


def _run(
    *args: str | Path, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="session")
def contract_modules() -> Path:
    """``npm ci`` in ``tests/contract`` once per test session (skipped without node, unless CI)."""
    return npm_ci(CONTRACT_DIR, "the contract tests need them")


@dataclass(frozen=True)
class Generated:
    models: ModuleType  # the pydantic models
    types_js: Path  # quicktype's TypeScript, compiled
    converters: Path  # tag -> the name of quicktype's converter


@pytest.fixture(scope="session")
def generated(contract_modules: Path, tmp_path_factory: pytest.TempPathFactory) -> Generated:
    """Python and TypeScript types generated from ``staffwork schema``, once per test session."""
    out = tmp_path_factory.mktemp("generated")
    schema = out / "schema.json"
    done = _run(sys.executable, "-m", "actors.cli", "schema", "--output", schema)
    assert done.returncode == 0, done.stderr
    codegen = Path(sys.executable).parent / "datamodel-codegen"
    python = _run(
        codegen, "--input", schema, "--input-file-type", "jsonschema", "--output", out / "models.py",
        "--output-model-type", "pydantic_v2.BaseModel", "--target-python-version", "3.11",
        "--use-annotated", "--enum-field-as-literal", "all", "--use-title-as-name", "--disable-warnings",
    )  # fmt: skip
    assert python.returncode == 0, python.stderr
    document = json.loads(schema.read_text())
    names = [ref["$ref"].rsplit("/", 1)[-1] for ref in document["oneOf"]]
    sources = [f"{schema}#/$defs/{name}" for name in names]
    ts = _run(BIN / "quicktype", "--src-lang", "schema", "--lang", "ts", "--runtime-typecheck",
              "-o", out / "types.ts", *sources)  # fmt: skip
    assert ts.returncode == 0, ts.stderr
    tsc = _run(BIN / "tsc", "--strict", "--target", "es2020", "--module", "commonjs", "--outDir", out / "js",
               out / "types.ts")  # fmt: skip
    assert tsc.returncode == 0, tsc.stdout + tsc.stderr
    converters = out / "converters.json"
    tags = {document["$defs"][name]["properties"]["type"]["const"]: name for name in names}
    converters.write_text(json.dumps(tags))
    spec = importlib.util.spec_from_file_location("staffwork_generated_models", out / "models.py")
    assert spec is not None
    assert spec.loader is not None
    models = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = models  # pydantic looks its generic models up there
    spec.loader.exec_module(models)
    return Generated(models=models, types_js=out / "js" / "types.js", converters=converters)


def python_failures(generated: Generated, lines: list[dict[str, Any]]) -> list[str]:
    """Why each message does not parse with the generated pydantic models (strict: no coercion)."""
    root = generated.models.StaffworkMessage
    failures = []
    for line in lines:
        try:
            parsed = root.model_validate_json(json.dumps(line["data"]), strict=True)
            assert parsed.root.type == line["data"]["type"]
        except (ValueError, AssertionError) as exc:
            failures.append(f"{line['subject']}: {str(exc)[:300]}")
    return failures


def typescript_failures(generated: Generated, lines: list[dict[str, Any]], tmp_path: Path) -> list[Any]:
    """Why each message does not parse with quicktype's converters (run by node)."""
    jsonl = tmp_path / "messages.jsonl"
    jsonl.write_text("".join(json.dumps(line) + "\n" for line in lines))
    done = _run("node", CONTRACT_DIR / "check_types.js", generated.types_js, generated.converters, jsonl)
    summary = json.loads(done.stdout)
    assert summary["checked"] == len(lines), done.stderr
    return summary["failures"]  # type: ignore[no-any-return]


def test_the_asyncapi_document_parses_without_errors(contract_modules: Path, tmp_path: Path) -> None:
    path = tmp_path / "asyncapi.json"
    done = _run(sys.executable, "-m", "actors.cli", "schema", "--asyncapi", "--output", path)
    assert done.returncode == 0, done.stderr
    parsed = _run("node", CONTRACT_DIR / "asyncapi.mjs", path, cwd=CONTRACT_DIR)
    summary = json.loads(parsed.stdout)
    assert summary["errors"] == [], summary
    assert parsed.returncode == 0, parsed.stderr
    addresses = {asyncapi_document()["channels"][c.id]["address"] for c in channels()}
    assert addresses <= set(summary["channels"])
    assert "{root}.s.{session}.task.{agent}" in addresses


def test_every_message_travels_on_some_channel_and_every_channel_says_who_uses_it() -> None:
    document = asyncapi_document()
    carried = {name for channel in document["channels"].values() for name in channel["messages"]}
    assert {def_name(cls) for cls in bus_messages()} <= carried
    for channel_id, channel in document["channels"].items():
        assert channel["tags"][0]["name"] in ("public", "internal"), channel_id
        used = [
            op for op in document["operations"].values() if op["channel"]["$ref"].endswith(f"/{channel_id}")
        ]
        if channel["address"] is not None:  # an answer travels as its request's operation's reply
            assert {op["action"] for op in used} == {"send", "receive"}, channel_id
    assert document["channels"]["submit"]["address"] == "{root}.submit"
    assert document["channels"]["apiSubmit"]["tags"] == [{"name": "public"}]
    assert document["channels"]["task"]["tags"] == [{"name": "internal"}]


APPROVE = CustomTool(name="approve", description="Ask a person to approve a change.")


def busy_team() -> TeamSpec:
    """A team whose session shows most kinds of traffic: delegations, tool calls (built-in and
    custom), files, an outcome graded by the grader."""
    ops = AgentSpec(
        name="ops",
        description="makes changes, with approval",
        tools=["list_files"],
        custom_tools=[APPROVE],
        playbook=Playbook(
            calls=[PlaybookCall(tool="approve", input={"change": "{task}"}), PlaybookCall(tool="list_files")],
            answer="approval: {result[0]}",
        ),
    )
    notes = AgentSpec(
        name="notes",
        description="writes notes",
        tools=["write_file", "read_file"],
        playbook=Playbook(
            calls=[PlaybookCall(tool="write_file", input={"path": "notes.md", "content": "{task}"})]
        ),
    )
    outcome = Outcome(checks=[Check(name="the report exists", kind="file_exists", path="report.md")])
    return TeamSpec(name="busy", lead=AgentSpec(name="lead"), agents=[ops, notes], outcome=outcome)


async def a_whole_session(bus: Bus) -> list[dict[str, Any]]:
    """Run a session on the real bus; every message of it in the log stream, in order."""
    client = Client(bus)
    config = RoleConfig(model=OfflineModel(), agents=("ops", "notes"))
    async with running(bus, ["lead", "subagent", "grader"], config):
        session_id = await submit(bus, SessionSubmit(task="roll back payments", team_spec=busy_team()))
        async with asyncio.timeout(30):
            async for event in client.events(session_id):
                if isinstance(event, CustomToolUse):
                    await client.answer_tool(session_id, event.tool_use_id, "approved by dana")
                    break
        result = await wait_result(bus, session_id, timeout=30)
        assert result.status == "idle", result
        async with asyncio.timeout(30):
            async for event in client.events(session_id):
                if isinstance(event, SessionStatusIdle):
                    break
    stream, subjects = bus.subjects.log_stream, bus.subjects
    lines = []
    for subject in (subjects.submit, subjects.session(session_id)):
        async for msg in read_subject(bus, stream, subject):
            data = json.loads(msg.data)
            if subject != subjects.submit or data.get("session_id") == session_id:
                lines.append({"subject": msg.subject, "data": data})
    return lines


async def test_generated_types_parse_a_whole_sessions_live_traffic(
    bus: Bus, generated: Generated, tmp_path: Path
) -> None:
    lines = await a_whole_session(bus)
    kinds = {line["subject"].split(".")[3] if ".s." in line["subject"] else "submit" for line in lines}
    assert kinds >= {"submit", "task", "reply", "evt", "hist", "out", "grade", "in"}, kinds
    types = {line["data"]["type"] for line in lines}
    assert len(types) >= 20, types  # delegation, tool use, threads, model requests, files, grading...
    assert python_failures(generated, lines) == []
    assert typescript_failures(generated, lines, tmp_path) == []


def test_generated_types_refuse_a_wrong_type_and_an_unknown_message(
    generated: Generated, tmp_path: Path
) -> None:
    usage = {"input_tokens": "12", "output_tokens": 1, "cache_creation_input_tokens": 0,
             "cache_read_input_tokens": 0, "cost_usd": 0.0}  # fmt: skip
    idle = json.loads(json.dumps(json_schema()["$defs"]["SessionStatusIdleV1"]["properties"]))
    wrong = {name: prop.get("default") for name, prop in idle.items()}
    wrong |= {"type": "session.status_idle.v1", "session_id": "ses_1", "msg_id": "msg_1", "usage": usage,
              "time": "2025-01-01T00:00:00Z", "stop_reason": "end_turn"}  # fmt: skip
    lines = [
        {"subject": "sw.s.ses_1.evt.session.status_idle", "data": wrong},
        {
            "subject": "sw.s.ses_1.evt.session.new",
            "data": {**wrong, "usage": {**usage, "input_tokens": 12}, "type": "session.new.v1"},
        },
    ]
    assert len(python_failures(generated, lines)) == 2
    assert len(typescript_failures(generated, lines, tmp_path)) == 2


def test_the_readmes_type_generation_commands_run_as_written(contract_modules: Path, tmp_path: Path) -> None:
    """The README's "Schemas and the event catalogue" block, run by bash as it is written, with the
    installed staffwork, datamodel-codegen and quicktype on PATH."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme[readme.index("### Schemas and the event catalogue") :]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    path = os.pathsep.join([str(Path(sys.executable).parent), str(BIN), os.environ.get("PATH", "")])
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", block],
        cwd=tmp_path,
        env={**os.environ, "PATH": path},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((tmp_path / "staffwork.asyncapi.json").read_text())["asyncapi"] == "3.0.0"
    assert "class SessionResultV1(" in (tmp_path / "staffwork_models.py").read_text()
    assert "toSessionResultV1" in (tmp_path / "staffwork.ts").read_text()
