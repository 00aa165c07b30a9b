"""The vendor-contract compliance example end to end: a generated MSA, policy and regulations, the past
deals seeded into a memory store only the precedent analyst reads, the example team on the offline
model, and the memo checked against the ground truth."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

from bus.connection import Bus
from bus.workspace import Workspace
from examples.compliance import INPUTS, MEMORY, TASK
from examples.compliance.generate import RULES, GroundTruth, generate
from tests.helpers import run_example


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GroundTruth]:
    directory = tmp_path_factory.mktemp("compliance")
    return directory, generate(directory)


async def test_the_memo_flags_exactly_the_breaches_with_changes_backed_by_past_deals(
    bus: Bus, data: tuple[Path, GroundTruth]
) -> None:
    directory, truth = data
    inputs = directory / INPUTS
    names = sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*") if p.is_file())
    memory = {store: directory / folder for store, folder in MEMORY.items()}
    result, session_id = await run_example(bus, "compliance", inputs, names, TASK, memory=memory)
    assert result.status == "idle", result.final_text
    assert result.outcome is not None
    assert result.outcome.result == "satisfied"
    memo = result.final_text

    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in memo.split("## Flagged clauses")[1].split("## References")[0].splitlines()
        if line.startswith("| ") and not line.startswith(("| Clause", "| ---"))
    ]
    flagged = [(int(r[0]), r[1]) for r in rows]
    assert flagged == [(b.clause, b.heading) for b in truth.breaches]
    assert [r[6] for r in rows] == [truth.precedents[b.heading] for b in truth.breaches]
    rules = {r.heading: r for r in RULES}
    for row in rows:
        rule = rules[row[1]]
        assert row[2] == (
            f"Procurement policy {rule.rule_id}" if rule.source == "policy" else rule.regulation
        )
        change = row[5]
        if rule.kind == "phrase":
            assert change == f'Add "{rule.value}" to the clause'
        else:  # the recommended number meets the rule
            number = int(change.split()[2])
            assert number >= int(rule.value) if rule.kind == "min" else number <= int(rule.value)
    assert f"{len(truth.breaches)} failed" in memo
    assert "Breaches without a recommended change: 0." in memo

    workspace = Workspace(bus)
    written = {f.path for f in await workspace.list(session_id)}
    assert not any(path.startswith("memory/") for path in written)  # past deals stay in the store
    checks = list(
        csv.DictReader(io.StringIO((await workspace.get(session_id, "findings/policy.csv")).decode()))
    )
    assert len(checks) == sum(r.source == "policy" for r in RULES)
