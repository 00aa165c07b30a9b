"""Memory stores through the ordinary file tools: ``/memory/<store>/...``, access enforced by the worker."""

from __future__ import annotations

import msgspec

from actors.agent.models.scripted import ScriptedModel, calls, text
from actors.roles import running_agents
from bus.connection import Bus
from bus.memory import Memory
from schemas import AgentSpec, SessionSubmit, TeamSpec
from schemas.memory import Writer
from schemas.team import MemoryAttachment
from tests.helpers import fan_out_lead, submit_and_wait, tool_results

TOOLS = ["list_files", "read_file", "write_file"]
RUNBOOK = "/memory/runbooks/payments.md"
LESSON = "check deploys"


def team_with_memory() -> TeamSpec:
    memory = [
        MemoryAttachment(store="runbooks", access="read_only", instructions="How we handle incidents."),
        MemoryAttachment(store="notes", access="read_write"),
    ]
    return TeamSpec(
        name="memteam",
        lead=AgentSpec(name="lead"),
        agents=[AgentSpec(name="logs", description="the logs specialist", tools=TOOLS, memory=memory)],
    )


async def test_an_agent_reads_and_writes_its_stores_and_a_read_only_one_stays_untouched(bus: Bus) -> None:
    memory = Memory(bus)
    await memory.create("runbooks", "incident runbooks")
    await memory.create("notes")
    await memory.create("secrets")  # exists, but not attached to the agent
    user = Writer(kind="user", user="ops")
    await memory.write("runbooks", "payments.md", "Roll back payments first.\n", writer=user)
    model = ScriptedModel(
        {
            "lead": fan_out_lead(["logs"]),
            "logs": [
                calls(
                    ("toolu_ls", "list_files", {"prefix": "/memory/"}),
                    ("toolu_read", "read_file", {"path": "/memory/runbooks/payments.md"}),
                    (
                        "toolu_ro",
                        "write_file",
                        {"path": "/memory/runbooks/payments.md", "content": "ignore it"},
                    ),
                    (
                        "toolu_rw",
                        "write_file",
                        {"path": "/memory/notes/lessons.md", "content": "check deploys"},
                    ),
                    ("toolu_no", "read_file", {"path": "/memory/secrets/key.txt"}),
                    ("toolu_ws", "write_file", {"path": "scratch.md", "content": "workspace, not memory"}),
                ),
                text("done"),
            ],
        }
    )
    async with running_agents(bus, model, agents=["logs"]):
        result = await submit_and_wait(bus, SessionSubmit(task="x", team_spec=team_with_memory()))
    assert result.status == "idle"

    listed, read, read_only, written, unattached, workspace = tool_results(model.calls_by("logs")[1].request)
    assert listed.content == "/memory/runbooks/  (read_only)\n/memory/notes/  (read_write)"
    assert read.content == "     1\tRoll back payments first."
    assert read_only.is_error
    assert (
        read_only.content
        == f"memory store 'runbooks' is read-only for agent 'logs': {RUNBOOK!r} was not written"
    )
    assert not written.is_error
    assert written.content.startswith("wrote 13 bytes to /memory/notes/lessons.md (memory version ")
    assert unattached.is_error
    assert unattached.content == (
        "no memory store 'secrets' is attached to agent 'logs' (attached: /memory/runbooks/, /memory/notes/)"
    )
    assert not workspace.is_error

    # the read-only store is untouched; the write is a version that names who wrote it
    assert (await memory.read("runbooks", "payments.md")).content == "Roll back payments first.\n"
    [version] = await memory.versions("notes", "lessons.md")
    assert (version.writer.kind, version.writer.agent, version.writer.session_id) == (
        "session",
        "logs",
        result.session_id,
    )
    assert version.writer.thread_id.startswith("t-")
    assert (await memory.read("notes", "lessons.md")).content == "check deploys"

    # the agent's system prompt lists its stores, their access and instructions
    system = model.calls_by("logs")[0].request.system
    assert "- /memory/runbooks/ (read only): How we handle incidents." in system
    assert "- /memory/notes/ (read and write)" in system


async def test_sql_reads_the_data_files_of_the_attached_stores(bus: Bus) -> None:
    """A CSV in an attached store is a table beside the workspace's; an unattached store's is not."""
    memory = Memory(bus)
    user = Writer(kind="user", user="ops")
    await memory.create("runbooks")  # "notes", attached too, does not exist: sql goes on without it
    await memory.create("secrets")
    await memory.write("runbooks", "deals/past.csv", "vendor,cap_months\nacme,12\nglobex,6\n", writer=user)
    await memory.write("secrets", "keys.csv", "name,key\nprod,hunter2\n", writer=user)
    query = "SELECT vendor FROM past WHERE cap_months >= 12"
    model = ScriptedModel(
        {
            "lead": fan_out_lead(["logs"]),
            "logs": [
                calls(
                    ("toolu_q", "sql", {"query": query}), ("toolu_k", "sql", {"query": "SELECT * FROM keys"})
                ),
                text("done"),
            ],
        }
    )
    spec = team_with_memory()
    logs = spec.agents[0]
    spec = TeamSpec(
        name=spec.name,
        lead=spec.lead,
        agents=[AgentSpec(**{**msgspec.structs.asdict(logs), "tools": [*TOOLS, "sql"]})],
    )
    async with running_agents(bus, model, agents=["logs"]):
        result = await submit_and_wait(bus, SessionSubmit(task="x", team_spec=spec))
    assert result.status == "idle"
    past, keys = tool_results(model.calls_by("logs")[1].request)
    assert past.content == "vendor\nacme\n\n1 row"
    assert keys.is_error
    assert "no such table: keys" in keys.content
    assert "past (/memory/runbooks/deals/past.csv, 2 rows)" in keys.content
