"""A program written for Claude Managed Agents with the official anthropic SDK, run against staffwork
unchanged: only ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY point at staffwork's HTTP API.

    STAFFWORK_API_KEYS=demo=sk-demo-0123456789abcdef staffwork up   # its pool serves any agent
    export ANTHROPIC_BASE_URL=http://127.0.0.1:8480 ANTHROPIC_API_KEY=sk-demo-0123456789abcdef
    python managed_agents.py
"""

import anthropic
from anthropic.types.beta import BetaManagedAgentsAgentToolset20260401Params as Toolset

client = anthropic.Anthropic()  # reads ANTHROPIC_BASE_URL and ANTHROPIC_API_KEY
beta = client.beta
tools: list[Toolset] = [{"type": "agent_toolset_20260401"}]

env = beta.environments.create(name="ci", config={"type": "cloud", "networking": {"type": "unrestricted"}})
specialists = [
    beta.agents.create(name=name, model="claude-sonnet-4-6", system=f"You investigate {name}.", tools=tools)
    for name in ("deploys", "logs", "metrics")
]
lead = beta.agents.create(
    name="lead",
    model="claude-opus-4-7",
    system="Split the investigation, delegate it, and merge the findings.",
    tools=tools,
    multiagent={"type": "coordinator", "agents": [agent.id for agent in specialists]},
)
roster = lead.multiagent
assert roster is not None
assert roster.type == "coordinator"
pinned = [agent.id for agent in roster.agents if agent.type == "agent"]  # each pinned to its version
print("coordinator", lead.id, "version", lead.version, "with", pinned)


def said(event: anthropic.types.beta.sessions.BetaManagedAgentsAgentMessageEvent) -> str:
    return " ".join("".join(block.text for block in event.content if block.type == "text").split())


session = beta.sessions.create(agent=lead.id, environment_id=env.id, title="Why did the builds fail?")
with beta.sessions.events.stream(session.id) as stream:  # open it first, then send
    beta.sessions.events.send(
        session.id,
        events=[{"type": "user.message", "content": [{"type": "text", "text": "Why did builds 1-3 fail?"}]}],
    )
    for event in stream:
        if event.type == "session.thread_created":
            print("thread", event.session_thread_id, "for", event.agent_name)
        elif event.type == "agent.message":
            print("lead:", said(event)[:72])
        elif event.type == "session.status_idle":
            break
with beta.sessions.events.stream(session.id) as stream:  # idle now: it streams from here on
    follow_up = "Which failure should we fix first?"  # the lead goes on with everything so far
    beta.sessions.events.send(
        session.id, events=[{"type": "user.message", "content": [{"type": "text", "text": follow_up}]}]
    )
    for event in stream:
        if event.type == "agent.message":
            print("follow-up:", said(event)[:60])
        elif event.type == "session.status_idle":
            break
history = [event.type for event in beta.sessions.events.list(session.id, limit=1000)]
print("threads:", len(list(beta.sessions.threads.list(session.id))), "events:", len(history))

store = beta.memory_stores.create(name="team-notes", description="Findings shared across runs")
note = beta.memory_stores.memories.create(store.id, path="/style.md", content="Cite a log line.")
beta.memory_stores.memories.update(
    note.id,
    memory_store_id=store.id,
    content="Cite one log line per claim.",
    precondition={"type": "content_sha256", "content_sha256": note.content_sha256},
)
try:  # the same precondition again is stale now: a conflict, which the SDK does not retry
    beta.memory_stores.memories.update(
        note.id,
        memory_store_id=store.id,
        content="Cite nothing.",
        precondition={"type": "content_sha256", "content_sha256": note.content_sha256},
    )
except anthropic.ConflictError as exc:
    print("conflict:", exc.status_code, exc.message)
print("memories:", [m.path for m in beta.memory_stores.memories.list(store.id, path_prefix="/")])
try:
    beta.agents.retrieve("agent_does_not_exist")
except anthropic.NotFoundError as exc:
    print("not found:", exc.message)
