"""compose.yaml and the Dockerfile, checked without a container engine: every role has a service,
every agent of a bundled team is served by a group of workers, every command and healthcheck is a
staffwork invocation the CLI accepts, credentials stay with their group.

PyYAML is not a dependency, so :func:`read_yaml` reads the subset of YAML compose.yaml keeps to
(block mappings and sequences, plain and quoted scalars, JSON-style flow lists, comments) and refuses
anything else. ``scripts/container-test`` checks that it reads compose.yaml as PyYAML does, and runs
the stack for real.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any

import pytest
import typer

from actors.cli import app
from actors.cli.common import EXAMPLES, load_team
from actors.roles import ROLES

ROOT = Path(__file__).resolve().parents[1]
NATS_URL = "nats://nats:4222"

# --- a reader for the YAML compose.yaml is written in -------------------------------------------

_KEY = re.compile(r'(?P<key>[A-Za-z0-9_.-]+|"[^"]*"):(?:\s+(?P<rest>.*))?$')
_UNSUPPORTED = re.compile(r"^[&*!|>{]|^<<")


def read_yaml(text: str) -> Any:
    """The value of a YAML document in the subset described in the module docstring."""
    lines: list[tuple[int, str, int]] = []  # (indent, content, line number)
    for number, raw in enumerate(text.splitlines(), 1):
        if "\t" in raw[: len(raw) - len(raw.lstrip())]:
            raise ValueError(f"line {number}: tab in indentation")
        content = _strip_comment(raw).rstrip()
        if content.strip():
            lines.append((len(content) - len(content.lstrip(" ")), content.strip(), number))
    if not lines:
        return None
    value, end = _block(lines, 0, lines[0][0])
    if end != len(lines):
        raise ValueError(f"line {lines[end][2]}: unexpected indentation")
    return value


def _strip_comment(line: str) -> str:
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
            elif char == "\\" and quote == '"':
                continue
        elif char in "\"'" and (i == 0 or line[i - 1] in " \t[,:-"):
            quote = char
        elif char == "#" and (i == 0 or line[i - 1] in " \t"):
            return line[:i]
    return line


def _block(lines: list[tuple[int, str, int]], i: int, indent: int) -> tuple[Any, int]:
    if lines[i][1] == "-" or lines[i][1].startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _sequence(lines: list[tuple[int, str, int]], i: int, indent: int) -> tuple[list[Any], int]:
    items: list[Any] = []
    while i < len(lines) and lines[i][0] == indent and (lines[i][1] == "-" or lines[i][1].startswith("- ")):
        item = lines[i][1][1:].lstrip()
        if not item:
            if i + 1 < len(lines) and lines[i + 1][0] > indent:
                value, i = _block(lines, i + 1, lines[i + 1][0])
            else:
                value, i = None, i + 1
        elif _KEY.match(item):  # a mapping whose first key is on the dash's line
            column = indent + len(lines[i][1]) - len(item)
            lines = [*lines[:i], (column, item, lines[i][2]), *lines[i + 1 :]]
            value, i = _mapping(lines, i, column)
        else:
            value, i = _scalar(item, lines[i][2]), i + 1
        items.append(value)
    return items, i


def _mapping(lines: list[tuple[int, str, int]], i: int, indent: int) -> tuple[dict[str, Any], int]:
    mapping: dict[str, Any] = {}
    while i < len(lines) and lines[i][0] == indent:
        _, content, number = lines[i]
        match = _KEY.match(content)
        if match is None:
            raise ValueError(f"line {number}: expected 'key: value', got {content!r}")
        key = match["key"].strip('"')
        if key in mapping:
            raise ValueError(f"line {number}: duplicate key {key!r}")
        rest = match["rest"]
        i += 1
        if rest:
            mapping[key] = _scalar(rest, number)
        elif i < len(lines) and lines[i][0] > indent:
            mapping[key], i = _block(lines, i, lines[i][0])
        else:
            mapping[key] = None
    return mapping, i


def _scalar(text: str, number: int) -> Any:
    if _UNSUPPORTED.match(text):
        raise ValueError(f"line {number}: {text!r} is outside the YAML subset tests/test_compose.py reads")
    if text.startswith(('"', "[")):
        return json.loads(text)  # double-quoted strings and ["flow", "lists"] are JSON here
    if text.startswith("'"):
        if not text.endswith("'") or len(text) < 2:
            raise ValueError(f"line {number}: unterminated quote in {text!r}")
        return text[1:-1].replace("''", "'")
    if text in ("true", "false"):
        return text == "true"
    if text in ("null", "~"):
        return None
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return text


def test_reader_reads_the_subset_and_refuses_the_rest() -> None:
    text = """
# a comment
a:
  b: 1  # trailing comment
  c: "x # not a comment"
  d: ["CMD", "staffwork"]
  e:
    - plain:with:colons
    - path: secrets/x.env
      required: false
    - 'it''s'
  f:
g: true
"""
    assert read_yaml(text) == {
        "a": {
            "b": 1,
            "c": "x # not a comment",
            "d": ["CMD", "staffwork"],
            "e": ["plain:with:colons", {"path": "secrets/x.env", "required": False}, "it's"],
            "f": None,
        },
        "g": True,
    }
    for unsupported in ("a: &x 1", "a: *x", "a: |", "a: {b: 1}"):
        with pytest.raises(ValueError, match="outside the YAML subset"):
            read_yaml(unsupported)


# --- compose.yaml ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    compose = read_yaml((ROOT / "compose.yaml").read_text())
    assert set(compose) == {"name", "services", "volumes"}
    return dict(compose["services"])


@functools.cache
def _cli() -> Any:
    return typer.main.get_command(app)  # a group of typer's own (vendored) click


def _parse(args: list[str]) -> Any:
    """Parse ``staffwork ARGS`` as the CLI would, without running it: the command's context, whose
    ``params`` are its parsed options. Raises the CLI's usage error where it would refuse them."""
    group = _cli()
    parent = group.make_context("staffwork", list(args))
    name, command, rest = group.resolve_command(parent, list(args))  # no global options in compose.yaml
    return command.make_context(name, rest, parent=parent)


def _actors(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: s for name, s in services.items() if s["command"][0] == "actor"}


def test_every_command_is_a_staffwork_invocation(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        command = service["command"]
        context = _parse(command)
        if command[0] == "actor":
            assert context.params["role"] in ROLES, name
            assert context.params["nats"] == NATS_URL, name
        else:
            assert name == "nats"
            assert command[0] == "server"
            assert (context.params["host"], context.params["port"]) == ("0.0.0.0", 4222)


def test_every_role_has_a_service(services: dict[str, dict[str, Any]]) -> None:
    served = {_parse(s["command"]).params["role"] for s in _actors(services).values()}
    assert served == set(ROLES)
    for name, role in ROLES.items():
        if not role.per_agent:  # one service per role, named after it
            assert _parse(services[name]["command"]).params["role"] == name


def test_every_agent_of_a_bundled_team_is_served_by_a_group(services: dict[str, dict[str, Any]]) -> None:
    groups: dict[str, set[str]] = {}
    for name, service in _actors(services).items():
        params = _parse(service["command"]).params
        if params["role"] == "subagent":
            assert name.startswith("workers-"), name
            assert params["agents"], f"{name}: a group names its agents (--agents a,b)"
            groups[name] = set(params["agents"].split(","))
    teams = [load_team(path) for path in sorted(EXAMPLES.glob("*/team.toml"))]
    assert teams
    for team in teams:
        for agent in team.agents:
            serving = [group for group, agents in groups.items() if agent.name in agents]
            assert serving, f"agent {agent.name!r} of team {team.name!r} has no workers-* service"
    assert groups["workers-incident"] == {"deploys", "logs", "metrics", "tickets"}


def test_services_restart_wait_for_nats_and_check_health(services: dict[str, dict[str, Any]]) -> None:
    images = {service["image"] for service in services.values()}
    assert len(images) == 1, "every service runs the one staffwork image"
    builds = [name for name, service in services.items() if "build" in service]
    assert builds == ["lead"], "one service builds the image (compose builds it once)"
    assert "BASE_IMAGE" in services["lead"]["build"]["args"]
    assert "nats-data:/data" in services["nats"]["volumes"]
    assert "collector-data:/data" in services["collector"]["volumes"]
    for name, service in services.items():
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"][:2] == ["CMD", "staffwork"], name
        if name != "nats":
            assert service["depends_on"] == {"nats": {"condition": "service_healthy"}}, name
            assert service["environment"]["STAFFWORK_NATS_URL"] == NATS_URL, name  # for healthchecks


def test_healthchecks_are_staffwork_invocations(services: dict[str, dict[str, Any]]) -> None:
    """Each actor's healthcheck asks for its own role: ``staffwork health --role ROLE``."""
    for name, service in _actors(services).items():
        test = service["healthcheck"]["test"]
        role = _parse(service["command"]).params["role"]
        assert test[2:] == ["health", "--role", role], name
        _parse(test[2:])  # UsageError until the CLI has `staffwork health --role`
    assert _parse(services["nats"]["healthcheck"]["test"][2:]).info_name == "doctor"


def test_credentials_stay_with_their_group(services: dict[str, dict[str, Any]]) -> None:
    def env_files(service: dict[str, Any]) -> list[str]:
        return [entry["path"] if isinstance(entry, dict) else entry for entry in service.get("env_file", [])]

    model_users = {"lead", "grader", "dreamer", "pool"} | {n for n in services if n.startswith("workers-")}
    for name, service in services.items():
        files = env_files(service)
        assert ("secrets/model.env" in files) == (name in model_users), name
        for path in files:
            assert re.fullmatch(r"secrets/[a-z0-9-]+\.env", path), f"{name}: {path}"
            assert (ROOT / f"{path}.example").is_file(), f"{name}: {path}.example is missing"
            group = Path(path).stem
            if group != "model":  # a group's own file: only that service reads it
                assert group == name, f"{name} reads {path}"
    assert "secrets/*.env" in (ROOT / ".gitignore").read_text().splitlines()


def test_dockerfile_takes_a_base_image_and_runs_staffwork() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "ARG BASE_IMAGE=python:3.12-slim\n" in dockerfile
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["staffwork"]' in dockerfile
    users = re.findall(r"^USER (\S+)", dockerfile, re.MULTILINE)
    assert users, "the image names its user"
    assert users[-1] not in ("root", "0"), "the image runs as a user, not root"
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    for path in (".git", ".venv", "secrets", "**/node_modules"):
        assert path in ignored, path
