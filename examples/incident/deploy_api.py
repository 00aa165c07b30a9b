"""The deploy system's API, for the incident example: an MCP server (stdio) over deploys.csv.

    python -m examples.incident.deploy_api [--data DIR]

It serves what a deploy system knows, from the same generated data the team investigates: the
deploys (``list_deploys``), one deploy with the service's deploys before and after it
(``get_deploy``), and the rollbacks: deploys that took a service back to an earlier version, each with
the deploy it reverted (``list_rollbacks``). Every tool answers JSON text; bad input is an ``isError``
result of one line. A team file gives it to an agent as an MCP server (``[[agents.mcp_servers]]``);
the model sees its tools as ``<server name>__<tool>``, e.g. ``deployapi__list_rollbacks``.

The data folder is ``--data DIR``, else ``$INCIDENT_DATA``, else the example's standard folder (the
one ``staffwork run --example incident`` uses, ``data_dir()/examples/incident``), generated there with
the default seed if it does not exist yet. The file is read once, when the server starts.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

from examples.incident import ensure_data, standard_data
from examples.mcp_server import StrictServer

STATUSES = ("succeeded", "failed")
COLUMNS = ("deploy_id", "service", "version", "deployed_at", "author", "status")
MAX_LIMIT = 1000
EXAMPLE_TIME = "2024-05-14T14:00:00Z"
#: an ISO time in UTC as the data writes it, with or without fractions of a second (app.jsonl has them)
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|\+00:00)")
_NUMERIC_VERSION = re.compile(r"\d+(?:\.\d+)*")


class DataError(Exception):
    """The deploy data cannot be read (one line naming the file)."""


def parse_time(value: str, name: str) -> datetime:
    """``value`` as an aware UTC datetime; :class:`ToolError` naming ``name`` if it is not one."""
    if _TIME.fullmatch(value):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            pass  # the right shape, but no such time (month 13, 25 o'clock)
    raise ToolError(f"{name}: {value!r} is not an ISO time in UTC like {EXAMPLE_TIME}")


def _version_key(version: str) -> tuple[int, ...] | None:
    return tuple(int(n) for n in version.split(".")) if _NUMERIC_VERSION.fullmatch(version) else None


def _duration(seconds: int) -> str:
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m {secs}s"
    return f"{minutes}m {secs}s" if minutes else f"{secs}s"


@dataclass(frozen=True)
class Deploy:
    deploy_id: str
    service: str
    version: str
    deployed_at: str  # as the data writes it
    author: str
    status: str
    at: datetime

    def row(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in COLUMNS}


@dataclass(frozen=True)
class Rollback:
    deploy: Deploy  # the deploy that went back
    reverted: Deploy  # the deploy that was running when it did
    restored: Deploy | None  # the earlier deploy that first shipped the version it went back to

    def row(self) -> dict[str, Any]:
        seconds = round((self.deploy.at - self.reverted.at).total_seconds())
        return {
            "rollback_deploy_id": self.deploy.deploy_id,
            "service": self.deploy.service,
            "rolled_back_at": self.deploy.deployed_at,
            "rollback_author": self.deploy.author,
            "from_version": self.reverted.version,
            "to_version": self.deploy.version,
            "reverted_deploy_id": self.reverted.deploy_id,
            "reverted_deployed_at": self.reverted.deployed_at,
            "reverted_author": self.reverted.author,
            "reverted_after_s": seconds,
            "reverted_after": _duration(seconds),
            "restored_deploy_id": self.restored.deploy_id if self.restored else None,
        }


class DeployHistory:
    """Every deploy, in time order, and what follows from their order: the rollbacks."""

    def __init__(self, deploys: list[Deploy]) -> None:
        self.deploys = sorted(deploys, key=lambda d: d.at)  # stable: ties keep the file's order
        self.by_id = {d.deploy_id: d for d in self.deploys}
        self.services = sorted({d.service for d in self.deploys})
        self.rollbacks = self._find_rollbacks()

    @classmethod
    def read(cls, path: Path) -> DeployHistory:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(
                f"{path}: no such file (python -m examples.incident.generate DIR makes it)"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read {path}: {exc}") from None
        reader = csv.DictReader(text.splitlines())
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: no column {', '.join(missing)} (the columns are {', '.join(COLUMNS)})")
        deploys: list[Deploy] = []
        for line, record in enumerate(reader, start=2):
            values = {c: (record.get(c) or "").strip() for c in COLUMNS}
            try:
                at = parse_time(values["deployed_at"], "deployed_at")
            except ToolError as exc:
                raise DataError(f"{path}:{line}: {exc}") from None
            if values["status"] not in STATUSES:
                raise DataError(
                    f"{path}:{line}: status {values['status']!r} is not one of {', '.join(STATUSES)}"
                )
            if values["deploy_id"] in {d.deploy_id for d in deploys}:
                raise DataError(f"{path}:{line}: deploy {values['deploy_id']!r} is listed twice")
            deploys.append(Deploy(**values, at=at))
        return cls(deploys)

    def _find_rollbacks(self) -> list[Rollback]:
        """A successful deploy is a rollback when its version is earlier than the version its service ran
        (versions compared as numbers, 1.22.10 after 1.22.9; a version that is not dotted numbers counts
        as earlier when the service ran it before). A failed deploy changed nothing."""
        found: list[Rollback] = []
        running: dict[str, Deploy] = {}
        shipped: dict[str, list[Deploy]] = {}
        for deploy in self.deploys:
            if deploy.status != "succeeded":
                continue
            current = running.get(deploy.service)
            history = shipped.setdefault(deploy.service, [])
            if current is not None and deploy.version != current.version:
                new, old = _version_key(deploy.version), _version_key(current.version)
                earlier = [d for d in history if d.version == deploy.version]
                went_back = new < old if new is not None and old is not None else bool(earlier)
                if went_back:
                    found.append(Rollback(deploy, current, earlier[-1] if earlier else None))
            running[deploy.service] = deploy
            history.append(deploy)
        return found

    def check_service(self, service: str | None) -> None:
        if service is not None and service not in self.services:
            raise ToolError(f"service {service!r} has no deploys (services: {', '.join(self.services)})")

    def list_deploys(
        self, service: str | None, status: str | None, since: str | None, until: str | None, limit: int
    ) -> dict[str, Any]:
        self.check_service(service)
        if status is not None and status not in STATUSES:
            raise ToolError(f"status {status!r} is not one of {', '.join(STATUSES)}")
        start = parse_time(since, "since") if since is not None else None
        end = parse_time(until, "until") if until is not None else None
        if start is not None and end is not None and start >= end:
            raise ToolError(f"since {since} is not before until {until}: the window is empty")
        if not 1 <= limit <= MAX_LIMIT:
            raise ToolError(f"limit {limit} is out of range: 1 to {MAX_LIMIT}")
        matching = [
            d
            for d in self.deploys
            if (service is None or d.service == service)
            and (status is None or d.status == status)
            and (start is None or d.at >= start)
            and (end is None or d.at < end)
        ]
        shown = matching[:limit]
        return {"count": len(shown), "total": len(matching), "deploys": [d.row() for d in shown]}

    def get_deploy(self, deploy_id: str) -> dict[str, Any]:
        deploy = self.by_id.get(deploy_id)
        if deploy is None:
            raise ToolError(f"no deploy {deploy_id!r} (list_deploys lists the deploy ids)")
        same = [d for d in self.deploys if d.service == deploy.service and d.status == "succeeded"]
        before = [d for d in same if d.at < deploy.at]
        after = [d for d in same if d.at > deploy.at]
        reverted_by = next((r.deploy.deploy_id for r in self.rollbacks if r.reverted is deploy), None)
        reverts = next((r.reverted.deploy_id for r in self.rollbacks if r.deploy is deploy), None)
        return {
            "deploy": deploy.row(),
            "previous": before[-1].row() if before else None,
            "next": after[0].row() if after else None,
            "rolled_back_by": reverted_by,
            "rolls_back": reverts,
        }

    def list_rollbacks(self, service: str | None) -> dict[str, Any]:
        self.check_service(service)
        rows = [r.row() for r in self.rollbacks if service is None or r.deploy.service == service]
        return {"count": len(rows), "rollbacks": rows}


def dumps(document: dict[str, Any]) -> str:
    """JSON text with one line per key, and one line per row of a list of rows."""

    def value(item: Any) -> str:
        if isinstance(item, list) and item and all(isinstance(row, dict) for row in item):
            return "[\n    " + ",\n    ".join(json.dumps(row) for row in item) + "\n  ]"
        return json.dumps(item)

    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {value(v)}" for k, v in document.items()) + "\n}"


ServiceArg = Annotated[str | None, Field(description="Only this service's deploys (e.g. checkout).")]
READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)


def build_server(history: DeployHistory) -> MCPServer[Any]:
    server = StrictServer(
        "deployapi",
        instructions="The deploy system: every deploy of every service, and the rollbacks among them. "
        f"Times are ISO UTC, like {EXAMPLE_TIME}.",
        log_level="WARNING",
    )

    @server.tool(annotations=READ_ONLY, structured_output=False)
    def list_deploys(
        service: ServiceArg = None,
        status: Annotated[str | None, Field(description="succeeded or failed.")] = None,
        since: Annotated[
            str | None, Field(description=f"Deployed at or after this ISO UTC time, like {EXAMPLE_TIME}.")
        ] = None,
        until: Annotated[str | None, Field(description="Deployed before this ISO UTC time.")] = None,
        limit: Annotated[int, Field(description=f"At most this many rows (1 to {MAX_LIMIT}).")] = 100,
    ) -> str:
        """The deploys, oldest first: deploy_id, service, version, deployed_at, author, status (succeeded
        or failed). `count` is how many are shown, `total` how many match (the first `limit` are shown)."""
        return dumps(history.list_deploys(service, status, since, until, limit))

    @server.tool(annotations=READ_ONLY, structured_output=False)
    def get_deploy(deploy_id: Annotated[str, Field(description="A deploy id, like dpl-1a2b3c.")]) -> str:
        """One deploy, with its service's last successful deploy before it (`previous`: what was running
        when it went out) and first successful deploy after it (`next`: what replaced it), and the
        rollback that reverted it (`rolled_back_by`) or the deploy it reverted (`rolls_back`), if any."""
        return dumps(history.get_deploy(deploy_id))

    @server.tool(annotations=READ_ONLY, structured_output=False)
    def list_rollbacks(service: ServiceArg = None) -> str:
        """The rollbacks, oldest first: successful deploys that took a service back to an earlier version.
        Each names the deploy it reverted (reverted_deploy_id, reverted_deployed_at: the version that was
        running, from_version) and the version it went back to (to_version, first shipped by
        restored_deploy_id), and how long the reverted deploy ran (reverted_after_s)."""
        return dumps(history.list_rollbacks(service))

    return server


def data_folder(given: Path | None) -> Path:
    """``--data``, else ``$INCIDENT_DATA``, else the standard folder (generated there if need be)."""
    if given is not None:
        return given
    if env := os.environ.get("INCIDENT_DATA"):
        return Path(env).expanduser()
    return ensure_data(standard_data())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m examples.incident.deploy_api", description=__doc__)
    parser.add_argument("--data", type=Path, help="the folder with deploys.csv (default: see above)")
    args = parser.parse_args(argv)
    try:
        history = DeployHistory.read(data_folder(args.data) / "deploys.csv")
    except DataError as exc:
        parser.exit(1, f"{parser.prog}: error: {exc}\n")
    build_server(history).run("stdio")


if __name__ == "__main__":
    main()
