"""The vendor-contract compliance example end to end: a generated MSA, policy and regulations, the past
deals seeded into a memory store only the precedent analyst reads, the example team on the offline
model, and the memo checked against the ground truth."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path

import pytest

from actors.agent.models.offline import OfflineModel
from actors.dreamer.dream import Dreamer
from bus.connection import Bus
from bus.memory import Memory
from bus.workspace import Workspace
from examples.compliance import INPUTS, MEMORY, TASK
from examples.compliance.generate import RULES, GroundTruth, generate
from schemas.dream import DreamRequest
from tests.helpers import NatsServer, run_example, staffwork

BLOCKING = "regulatory breaches are marked blocking"


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
    # no lessons yet: the memo does not mark the regulatory breaches blocking, on either attempt
    assert result.outcome.result == "max_iterations_reached"
    for attempt in result.outcome.iterations:
        assert [c.criterion for c in attempt.criteria if c.status == "failed"] == [BLOCKING]
    memo = result.final_text

    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in memo.split("## Flagged clauses")[1].split("## References")[0].splitlines()
        if line.startswith("| ") and not line.startswith(("| Clause", "| ---"))
    ]
    flagged = [(int(r[0]), r[1]) for r in rows]
    assert all(r[7] == "" for r in rows)  # the Blocking column, empty without the lesson
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


async def test_a_dream_over_the_rejections_makes_the_next_series_pass(
    bus: Bus, nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The issue's measurable dream: three reviews (three contracts) fail the same criterion on both
    attempts; an offline dream over them writes lessons.csv; the same three reviews with the dreamed
    store pass on the first attempt; `staffwork dream report` shows the before and after."""
    folders = [tmp_path_factory.mktemp(f"contract-{seed}") for seed in (7, 8, 9)]
    truths = [generate(folder, seed=seed) for folder, seed in zip(folders, (7, 8, 9), strict=True)]
    assert len({tuple(t.breaches) for t in truths}) == 3  # three different contracts

    async def series(store: str) -> list[str]:
        ids = []
        for folder in folders:
            inputs = folder / INPUTS
            names = sorted(str(p.relative_to(inputs)) for p in inputs.rglob("*") if p.is_file())
            seeds = {"deals": folders[0] / MEMORY["deals"]}  # one company, one store of past deals
            result, session_id = await run_example(
                bus, "compliance", inputs, names, TASK, memory=seeds, stores={"deals": store}
            )
            assert result.status == "idle", result.final_text
            ids.append(session_id)
        return ids

    before = await series("deals")
    dreamer = Dreamer(bus, OfflineModel())
    first = await dreamer.dream(DreamRequest(store="deals", session_ids=before))
    assert first.status == "completed", first.error
    lessons = list(
        csv.DictReader(io.StringIO((await Memory(bus).read(first.output_store, "lessons.csv")).content))
    )
    assert [(r["criterion"], r["failed"], r["sessions"]) for r in lessons] == [(BLOCKING, "6", "3")]

    after = await series(first.output_store)
    second = await dreamer.dream(DreamRequest(store=first.output_store, session_ids=after))
    assert second.status == "completed", second.error
    assert first.report is not None
    assert second.report is not None
    assert (first.report.pass_rate, first.report.avg_revisions) == (0.0, 1.0)
    assert (second.report.pass_rate, second.report.avg_revisions) == (1.0, 0.0)
    lead = {
        r.dream_id: next(a for a in r.report.agents if a.agent == "lead") for r in (first, second) if r.report
    }
    assert (lead[first.dream_id].avg_revisions, lead[second.dream_id].avg_revisions) == (1.0, 0.0)

    home = tmp_path_factory.mktemp("home")
    shown = await asyncio.to_thread(
        staffwork,
        "dream",
        "report",
        "deals",
        "--nats",
        nats_server.url,
        "--root",
        bus.subjects.root,
        home=home,
    )
    assert shown.returncode == 0, shown.stderr
    rows = [line.split() for line in shown.stdout.splitlines() if line.startswith("drm_")]
    assert [(r[0], r[-3], r[-2]) for r in rows] == [
        (first.dream_id, "0%", "1.00"),
        (second.dream_id, "100%", "0.00"),
    ]
