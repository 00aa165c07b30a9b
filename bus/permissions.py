"""Least privilege on NATS: one user per role (per agent, or group of agents, for subagent workers),
each allowed only the subjects its code uses, as nats-server ``authorization`` config.

:func:`deployment` turns a root and its agents (:class:`AgentAccess`; from a team with
:meth:`AgentAccess.of_team`) into :class:`NatsUser` s, each a list of :class:`Rule` s (a subject and
why it is allowed) and notes on where it is coarser than its role needs. :func:`render_config` writes
them as nats-server config (``authorization { users = [...] }``, for the server's config to
``include``), :func:`credentials_env` one user's ``STAFFWORK_NATS_*`` variables. Every subject comes
from ``bus/subjects.py``.

Each user has its own reply inbox, ``_INBOX.<user>`` (its client connects with that
``inbox_prefix``), so nobody reads another's replies, pulled messages or direct-get answers;
``inbox="shared"`` grants ``_INBOX.>`` instead, for clients that cannot set a prefix. Actors answer
requests (their APIs, ``$SRV`` discovery) through ``allow_responses``, never by publishing to inboxes.
"""

from __future__ import annotations

import json
import secrets
import textwrap
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from bus.errors import ConfigError
from bus.subjects import JetStreamApi as J
from bus.subjects import Subjects, check_token
from schemas.team import AgentSpec, TeamSpec
from schemas.thread import LEAD_THREAD
from schemas.trace import UserEvent, event_kind

Inbox = Literal["per_user", "shared"]

#: The roles a deployment has users for: the actor roles, the submit-only client and the admin.
ROLES = ("lead", "subagent", "pool", "grader", "collector", "webhooks", "dreamer", "api", "submit", "admin")
#: The registry key where session-serving processes note their model (``actors.roles.NOTICE_KEY``).
NOTICE_KEY = "serving"
#: Why an unnamed consumer create is granted only where the code cannot do without it (verified
#: against nats-server 2.15 in tests/test_permissions.py).
EPHEMERAL_CAUTION = (
    "the unnamed consumer create takes the whole config in its body, and a config naming an existing "
    "consumer updates it: this user can change the filter, max_deliver and ack_wait of any consumer "
    "on the stream, agent_<name> included"
)
#: Why any right to create a consumer is a right to publish (nats-server 2.15; nats-io/nats-server#8274).
PUSH_CAUTION = (
    "whoever creates a consumer picks its push deliver subject, and nats-server does not check it "
    "against the creator's publish permissions (nats-io/nats-server#8274): this user can have the "
    "server deliver messages of {stream}, content it wrote itself included, to any subject someone "
    "subscribes to, such as a forged result to a client waiting for a session's"
)
#: The built-in tools that list the workspace (``list_files`` also lists attached memory stores).
LISTING_TOOLS = frozenset({"list_files", "grep", "sql"})


@dataclass(frozen=True)
class Rule:
    subject: str
    why: str


@dataclass(frozen=True)
class Permissions:
    publish: tuple[Rule, ...] = ()
    subscribe: tuple[Rule, ...] = ()
    deny_publish: tuple[Rule, ...] = ()
    #: may answer the requests it receives (``allow_responses``: one reply each)
    responses: bool = False


@dataclass(frozen=True)
class NatsUser:
    name: str
    role: str
    permissions: Permissions
    inbox_prefix: str
    agents: tuple[str, ...] = ()
    #: where this user can do more than its role needs, and why
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentAccess:
    """What an agent's tools reach besides reading and writing the workspace: its memory stores
    (name → writable), its NATS tool services, whether it has custom tools, whether it lists the
    workspace (``list_files``, ``grep``, ``sql``) or its stores (``list_files``). ``known=False``: no
    team said; then no memory, service or custom tool is granted, and listing the workspace is."""

    name: str
    memory: Mapping[str, bool] = field(default_factory=dict)
    services: tuple[str, ...] = ()
    custom_tools: bool = False
    lists_files: bool = True
    lists_memory: bool = False
    known: bool = True

    @classmethod
    def of(cls, spec: AgentSpec) -> AgentAccess:
        return cls(
            spec.name,
            memory={m.store: m.access == "read_write" for m in spec.memory},
            services=tuple(s.name for s in spec.services),
            custom_tools=bool(spec.custom_tools),
            lists_files=bool(LISTING_TOOLS.intersection(spec.tools)),
            lists_memory=bool(spec.memory) and "list_files" in spec.tools,
        )

    @classmethod
    def of_team(cls, team: TeamSpec) -> tuple[AgentAccess, list[AgentAccess]]:
        """The lead's access and each agent's."""
        return cls.of(team.lead), [cls.of(agent) for agent in team.agents]

    def merge(self, other: AgentAccess) -> AgentAccess:
        """What either reaches (one agent serving several teams, or a group of agents)."""
        memory = dict(self.memory)
        for store, writable in other.memory.items():
            memory[store] = memory.get(store, False) or writable
        return AgentAccess(
            self.name,
            memory,
            tuple(dict.fromkeys((*self.services, *other.services))),
            self.custom_tools or other.custom_tools,
            self.lists_files or other.lists_files,
            self.lists_memory or other.lists_memory,
            self.known and other.known,
        )


@dataclass(frozen=True)
class Deployment:
    subjects: Subjects
    users: tuple[NatsUser, ...]

    def user(self, role: str, agent: str = "") -> NatsUser:
        """The user of ``role`` (of ``subagent``: the one serving ``agent``)."""
        for user in self.users:
            if user.role == role and (not agent or agent in user.agents):
                return user
        known = ", ".join(f"{u.name} ({u.role})" for u in self.users)
        serving = f" serving {agent!r}" if agent else ""
        raise KeyError(f"no user for role {role!r}{serving} (users: {known})")


class _Grants:
    """The rules of one user, in the order granted, each subject once."""

    def __init__(self, subjects: Subjects, inbox: str) -> None:
        self.s = subjects
        self.log = subjects.log_stream
        self.inbox = inbox
        self.rules: dict[str, dict[str, Rule]] = {"pub": {}, "sub": {}, "deny": {}}
        self.notes: list[str] = []
        self.responses = False

    def pub(self, subject: str, why: str) -> None:
        self.rules["pub"].setdefault(subject, Rule(subject, why))

    def sub(self, subject: str, why: str) -> None:
        self.rules["sub"].setdefault(subject, Rule(subject, why))

    def deny(self, subject: str, why: str) -> None:
        self.rules["deny"].setdefault(subject, Rule(subject, why))

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def permissions(self) -> Permissions:
        pub, sub, deny = (tuple(self.rules[kind].values()) for kind in ("pub", "sub", "deny"))
        return Permissions(pub, sub, deny, responses=self.responses)

    # --- the capabilities the roles are made of ---

    def base(self, *, process: bool = True) -> None:
        """Every client: its inbox; an actor process also is a micro service (``staffwork ps``)."""
        self.sub(f"{self.inbox}.>", "its replies: API answers, publish acks, pulled messages, direct gets")
        self.pub(J.info(), "JetStream account info")
        if process:
            self.sub(Subjects.services(), "NATS micro service discovery (answered via allow_responses)")
            self.sub(self.s.api_health, "the process's health endpoint (answered via allow_responses)")
            self.responses = True
            self.note(
                "allow_responses: it may answer once any message it receives with a reply subject, a "
                "JetStream publish it sees on a subject it subscribes to included (the reply is the "
                "publisher's ack inbox)"
            )

    def events(self) -> None:
        self.pub(self.s.events("*"), "trace events")
        self.pub(self.s.system_events(), "events of no session: rejected messages, model calls")
        self.note(
            "events: may emit any session's trace events in any agent's name (event subjects name no agent)"
        )

    def consume(self, durable: str) -> None:
        self.pub(J.durable_create(self.log, durable), f"create or update its consumer {durable} at start")
        self.pub(J.msg_next(self.log, durable), f"pull from {durable}")
        self.pub(J.ack(self.log, durable), f"ack, nak, in-progress and term {durable}'s messages")
        self.note(
            f"consumer {durable}: the admin makes it first, so this only updates it (a pull consumer "
            f"cannot become push), but the filter is in the body: it may point {durable} at other "
            "subjects of the log (a second reader of them; no other consumer changes)"
        )

    def read_log(self, what: str) -> None:
        self.pub(J.direct_get(self.log), f"read {what} (batched direct get)")
        self.note(
            f"log reads: a batched direct get names its subject in the body, so reading {what} means "
            f"reading every message of {self.log}: every agent's tasks, histories and replies"
        )

    def read_last(self, subject: str, why: str) -> None:
        self.pub(J.direct_get_last(self.log, subject), why)

    def follow(self, what: str) -> None:
        self.pub(J.ephemeral_create(self.log), f"follow {what} (an ordered consumer)")
        self.pub(J.flow_control(self.log), "flow control of its ordered consumers")
        self.note(f"following {what}: {EPHEMERAL_CAUTION}; and " + PUSH_CAUTION.format(stream=self.log))

    def kv(self, bucket: str, *, get: Sequence[str] = (), put: Sequence[str] = (), why: str) -> None:
        stream = J.kv_stream(bucket)
        self.pub(J.stream_info(stream), f"open the {bucket} bucket")
        for key in get:
            self.pub(J.direct_get_last(stream, J.kv_key(bucket, key)), f"read {why}")
        for key in put:
            self.pub(J.kv_key(bucket, key), f"write {why}")

    def listing(self, stream: str, what: str) -> None:
        """A short-lived pull consumer on a stream no durable consumer reads: a listing."""
        self.pub(J.ephemeral_create(stream), f"list {what}")
        self.pub(J.msg_next(stream, "*"), f"list {what}: pull")
        self.pub(J.consumer_delete(stream, "*"), f"list {what}: remove the consumer")
        self.note(f"listing {what}: " + PUSH_CAUTION.format(stream=stream))

    def notice(self) -> None:
        """The model notice of a session-serving process (one key of the registry)."""
        self.kv(self.s.registry_bucket, get=[NOTICE_KEY], put=[NOTICE_KEY], why="its model notice")

    def sessions(self, *, write: bool = False, listing: bool = False) -> None:
        bucket = self.s.sessions_bucket
        self.kv(bucket, get=[">"], put=[">"] if write else [], why="session records")
        if listing:
            self.listing(J.kv_stream(bucket), "the sessions")
        self.note(
            "sessions: records are keyed by session id, so it reads every session's record (team, task)"
        )

    def workspace(self, *, write: bool, listing: bool) -> None:
        bucket = self.s.files_bucket
        stream = J.object_stream(bucket)
        self.pub(J.direct_get_last(stream, J.object_meta(bucket)), "a file's metadata")
        self.pub(J.direct_get(stream), "a file's chunks (batched direct get)")
        reach = "reads"
        if write:
            self.pub(J.object_subjects(bucket), "write files (chunks and metadata)")
            self.pub(J.stream_purge(stream), "drop a replaced file's chunks")
            self.pub(J.stream_info(stream), "count the chunks of content stored once for many files")
            reach = "reads, writes and purges (the purge's filter is in its body)"
        if listing:
            self.listing(stream, "a session's files")
        self.note(
            f"workspace: one bucket of objects named <session>/<path>; it {reach} every session's files"
        )

    def memory(self, stores: Mapping[str, bool] | None, *, listing: bool) -> None:
        """Memory stores: ``stores`` maps each one reachable to whether it is writable (None: all);
        ``listing``: it lists their files. Old versions are read by the admin's commands only."""
        registry = self.s.memory_stores_bucket
        stream = self.s.memory_stream
        if stores is None:
            keys, reachable, writable = [">"], [self.s.all_memory], [self.s.all_memory]
        else:
            keys = sorted(stores)
            reachable = [self.s.memory_files(name) for name in keys]
            writable = [self.s.memory_files(name) for name in keys if stores[name]]
        self.kv(registry, get=keys, why="memory store registrations")
        for subject in reachable:
            self.pub(J.direct_get_last(stream, subject), "a memory file's latest version")
        for subject in writable:
            self.pub(subject, "write and delete memory files")
        if stores is None:
            self.listing(J.kv_stream(registry), "the memory stores")
        if listing:
            self.listing(stream, "a store's files")
        if stores is not None:
            every = "; but listing a store's files reads every store's" if listing else ""
            self.note(f"memory: reads only its stores and writes only the read_write ones{every}")

    def tools(self, access: AgentAccess, who: str) -> None:
        """What ``access``'s tools reach besides the workspace (memory, services, custom tools)."""
        if not access.known:
            self.note(
                f"tools: no team says what all of {who}'s tools reach: no memory store, tool service or "
                "custom tool is granted for them, and listing the workspace (list_files, grep, sql) is"
            )
        if access.memory:
            self.memory(access.memory, listing=access.lists_memory)
        for service in access.services:
            self.pub(Subjects.service_info(service), f"discover tool service {service}")
            self.pub(
                Subjects.service_endpoints(service), f"call tool service {service} (endpoints under its name)"
            )
        if access.custom_tools:
            self.read_last(self.s.all_tool_results, "a custom tool's answer")
            self.follow("a custom tool's answer")


# --- the roles ------------------------------------------------------------------------------------


def _lead(g: _Grants, access: AgentAccess, agents: Sequence[str]) -> None:
    s = g.s
    g.base()
    g.events()
    g.consume(s.lead_consumer)
    for durable in (s.grader_consumer, *(s.agent_consumer(agent) for agent in agents)):
        g.pub(J.consumer_info(g.log, durable), f"whether {durable} is there and served")
    for agent in agents:
        g.pub(s.tasks_for(agent), f"delegations and follow-ups to {agent}")
    g.note(
        "agents: it delegates only to the agents of this config, whose consumers the admin makes "
        "(provision(bus, agents=...)): an agent added later needs a new config (and worker user) first"
    )
    g.sub(J.max_deliveries(g.log), "requests JetStream gave up on (it answers them as failed)")
    g.sub(s.api_submit, "the submit gateway: <root>.api.submit")
    g.sub(s.api_message, "the gateway's follow-ups: <root>.api.message")
    g.pub(s.api_pool, "ask a pool to serve a session's agents (the gateway): <root>.api.pool")
    g.pub(s.submit, "accepted submits, for the lead pool")
    g.sub(s.all_replies, "its threads' replies")
    g.pub(s.all_replies, "the failed reply of a request no worker answered")
    g.pub(s.thread_histories(LEAD_THREAD), "its own thread's history")
    g.pub(s.all_outs, "a session's accepted and result")
    g.pub(s.all_grades, "grading requests")
    g.pub(s.all_ctl, "stop a session's threads (budget, deadline)")
    g.sub(s.all_ctl, "cancel notices")
    g.read_log("threads' histories, replies and verdicts")
    g.read_last(s.all_outs, "a finished session's result")
    g.follow("the grader's verdicts")
    g.sessions(write=True)
    g.kv(s.registry_bucket, get=["team.*"], why="registered teams")
    g.listing(J.kv_stream(s.registry_bucket), "the registered teams")
    g.notice()
    g.workspace(write=True, listing=True)  # the result names every file of the session
    g.tools(access, "the lead")


def _worker(g: _Grants, accesses: Sequence[AgentAccess]) -> None:
    g.base()
    g.events()
    for access in accesses:
        g.consume(g.s.agent_consumer(access.name))
    merged = accesses[0]
    for access in accesses[1:]:
        merged = merged.merge(access)
    _threads(g, merged, ", ".join(a.name for a in accesses))


def _pool(g: _Grants) -> None:
    s = g.s
    g.base()
    g.events()
    g.sub(s.api_pool, "serve a session's agents when the gateway asks: <root>.api.pool")
    g.sub(s.all_out("accepted"), "sessions taken by a lead (their agents, from the session's record)")
    g.pub(J.consumer_info(g.log, "*"), "whether an agent's consumer agent_<name> is there")
    g.pub(J.durable_create(g.log, "*"), "create an agent's consumer agent_<name> when it is not there")
    g.pub(J.msg_next(g.log, "*"), "pull from agent_<name>")
    g.pub(J.ack(g.log, "*"), "ack, nak, in-progress and term agent_<name>'s messages")
    g.note(
        "consumers: it serves agents it learns of at run time, and a consumer's name is one subject "
        "token, which no wildcard matches by prefix (agent_<name>), so it may create, update, pull "
        f"from and settle any consumer of {g.log}, the lead's and the grader's included; and "
        + PUSH_CAUTION.format(stream=g.log)
    )
    # listing the sessions: at start, it serves the agents of those pending or running
    _threads(g, AgentAccess("pool", known=False), "the pool's agents", list_sessions=True)


def _threads(g: _Grants, merged: AgentAccess, who: str, *, list_sessions: bool = False) -> None:
    """What a worker does on its threads: histories, replies, cancel notices, files, tools."""
    s = g.s
    g.pub(s.all_histories, "append to its threads' histories")
    g.deny(s.thread_histories(LEAD_THREAD), "the lead's own thread")
    g.pub(s.all_replies, "reply to the lead")
    g.note(
        "threads: history and reply subjects (<root>.s.<session>.hist|reply.<thread>) name no agent, so it "
        "may append to and reply for any agent's thread (not the lead's thread: denied)"
    )
    g.sub(s.all_ctl, "cancel notices")
    g.read_log("its threads' histories")
    g.sessions(listing=list_sessions)
    g.notice()
    g.workspace(write=True, listing=merged.lists_files)  # write: an answer too long for a reply too
    g.tools(merged, who)


def _grader(g: _Grants) -> None:
    s = g.s
    g.base()
    g.events()
    g.consume(s.grader_consumer)
    g.pub(s.all_outs, "verdicts (<root>.s.<session>.out.verdict-<n>)")
    g.deny(s.all_out("result"), "a session's result (the lead's)")
    g.deny(s.all_out("accepted"), "a session's start (the lead's)")
    g.read_log("a verdict given before")
    g.workspace(write=False, listing=True)  # the files a rubric is graded on
    g.notice()


def _collector(g: _Grants) -> None:
    g.base()
    g.events()
    g.consume(g.s.collector_consumer)
    g.sub(g.s.api_trace, "answer trace queries: <root>.api.trace")


def _webhooks(g: _Grants) -> None:
    s = g.s
    g.base()
    g.events()
    g.consume(s.webhook_events_consumer)
    g.consume(s.webhook_deliveries_consumer)
    g.pub(s.all_hooks, "pending deliveries")
    g.sessions()
    g.kv(s.webhooks_bucket, get=[">"], put=[">"], why="endpoint state")


def _dreamer(g: _Grants) -> None:
    s = g.s
    g.base()
    g.events()
    g.sub(s.api_dream, "start dreams: <root>.api.dream")
    g.pub(s.api_trace, "ask the collector which sessions used a store")
    g.sub(s.all_dream_cancels, "cancelled dreams")
    g.pub(s.all_dream_dones, "a dream's final record")
    g.sessions(listing=True)
    g.read_log("past sessions' events")
    g.read_last(s.all_outs, "past sessions' results")
    g.memory(None, listing=True)
    g.kv(s.memory_stores_bucket, put=[">"], why="memory store registrations (a dream makes a store)")
    g.kv(s.dreams_bucket, get=[">"], put=[">"], why="dream records")


def _api(g: _Grants) -> None:
    s = g.s
    g.base()
    g.kv(s.api_bucket, get=[">"], put=[">"], why="the API's records (<workspace>.<kind>.<id>)")
    g.listing(J.kv_stream(s.api_bucket), "a workspace's records")
    g.note(
        "records: one bucket for every workspace, so it reads and writes every workspace's records "
        "(the API's keys, not NATS, keep workspaces apart)"
    )
    g.memory(None, listing=True)
    g.kv(s.memory_stores_bucket, put=[">"], why="memory store registrations (a store made through the API)")
    g.note(
        "memory: API stores are named by their id when created, and a subject token cannot be matched "
        "by prefix, so it reads, writes and deletes the files of every store, teams' own stores "
        "included, and may register any store name"
    )
    g.pub(s.api_submit, "start a session (its first user.message): <root>.api.submit")
    g.pub(s.api_message, "a follow-up turn (a later user.message): <root>.api.message")
    g.pub(s.events("*", event_kind(UserEvent)), "the user's events, recorded in the session's log")
    g.pub(s.all_tool_results, "answer a custom tool call (user.custom_tool_result)")
    g.pub(s.all_ctl, "interrupt a session's threads (user.interrupt)")
    g.sessions(write=True)  # cancel_session marks the record canceled
    g.note(
        "sessions: static permissions cannot follow session ids, so it may record user events in, "
        "answer the tool calls of and cancel any session (its record included), not only its "
        "workspaces' (the API checks the workspace)"
    )
    g.read_log("a session's events and custom tool calls")
    g.follow("a session's events (the event stream)")
    g.pub(s.api_dream, "start a dream: <root>.api.dream")
    g.kv(s.dreams_bucket, get=[">"], put=[">"], why="dream records (a dream's status; a cancel)")
    g.pub(s.all_dream_cancels, "cancel a dream")  # its final record: followed on the log (above)
    g.note(
        "dreams: dream records are keyed by dream id, so it reads and may rewrite (a cancel is a "
        "compare-and-set) every dream's record, and may cancel any dream, not only its workspaces'"
    )
    g.note(
        "not granted: session files (the workspace: the API serves none), old memory versions "
        "(Memory.versions, read(version=): a batched direct get on the memory stream; the API serves "
        "no memory_versions yet)"
    )


def _submit(g: _Grants) -> None:
    s = g.s
    g.base(process=False)
    g.pub(s.api_submit, "submit a session: <root>.api.submit")
    g.pub(s.api_message, "send a follow-up: <root>.api.message")
    g.read_last(s.all_outs, "a session's result")
    g.sub(s.all_outs, "results as they come")
    g.sub(s.events("*"), "trace events as they come")
    g.sessions()
    g.note(
        "sessions: static permissions cannot follow session ids, so it reads every session's result, "
        "events and record, not only its own"
    )
    g.note(
        "not granted: Client.wait and Client.events (ordered consumers: see the caution on them), "
        "files (the workspace is one bucket for every session), answers to custom tools"
    )


def _admin(g: _Grants) -> None:
    s = g.s
    g.base(process=False)
    g.pub(J.all(), "provision and inspect streams, consumers and buckets")
    g.pub(J.flow_control("*"), "flow control of its ordered consumers")
    g.pub(J.ack("*", "*"), "settle messages by hand")
    for bucket in (
        s.sessions_bucket,
        s.registry_bucket,
        s.webhooks_bucket,
        s.memory_stores_bucket,
        s.dreams_bucket,
    ):
        g.pub(J.kv_key(bucket), f"write {bucket}")
    g.pub(J.object_subjects(s.files_bucket), "write files")
    g.pub(s.all, "anything under the root")
    g.sub(s.all, "anything under the root")
    g.pub(Subjects.services(), "find staffwork processes and tool services (staffwork ps)")
    g.note("JetStream: the API subjects carry no root, so it administers every stream of the server")


# --- a deployment ---------------------------------------------------------------------------------


def deployment(
    subjects: Subjects,
    agents: Sequence[AgentAccess],
    *,
    lead: AgentAccess | None = None,
    groups: Mapping[str, Sequence[str]] | None = None,
    roles: Sequence[str] = ROLES,
    inbox: Inbox = "per_user",
) -> Deployment:
    """The users of a deployment: one per role of ``roles``, and for ``subagent`` one per agent or
    per group (``groups``: a name → its agents; each agent in at most one; the rest alone).

    ``lead`` is what the lead's tools reach (None: unknown, nothing beyond the workspace). A bad
    role, agent or group is a :class:`ConfigError` naming it.
    """
    for role in roles:
        if role not in ROLES:
            raise ConfigError(f"unknown role {role!r} (roles: {', '.join(ROLES)})")
    merged: dict[str, AgentAccess] = {}
    for access in agents:
        check_token(access.name, "agent name")
        merged[access.name] = merged[access.name].merge(access) if access.name in merged else access
    workers: dict[str, list[AgentAccess]] = {}
    grouped: dict[str, str] = {}
    for group, members in (groups or {}).items():
        check_token(group, "agent group")
        for member in members:
            if member not in merged:
                raise ConfigError(
                    f"group {group!r}: agent {member!r} is not one of the agents ({', '.join(merged)})"
                )
            if member in grouped:
                raise ConfigError(
                    f"agent {member!r} is in groups {grouped[member]!r} and {group!r}: give it one"
                )
            grouped[member] = group
        workers[f"{subjects.key}-agents-{group}"] = [merged[m] for m in members]
    for name, access in merged.items():
        if name not in grouped:
            workers[f"{subjects.key}-agent-{name}"] = [access]

    def user(name: str, role: str, build: Callable[[_Grants], None], agents: Sequence[str] = ()) -> NatsUser:
        prefix = subjects.inbox() if inbox == "shared" else subjects.inbox(name)
        grants = _Grants(subjects, prefix)
        build(grants)
        if inbox == "shared":
            grants.note(
                "inbox: _INBOX.> is shared, so it may read every other client's replies and pulled messages"
            )
        return NatsUser(name, role, grants.permissions(), prefix, tuple(agents), tuple(grants.notes))

    users: list[NatsUser] = []
    lead_access = lead or AgentAccess("lead", known=False)
    builders: dict[str, Callable[[_Grants], None]] = {
        "lead": partial(_lead, access=lead_access, agents=list(merged)),
        "pool": _pool,
        "grader": _grader,
        "collector": _collector,
        "webhooks": _webhooks,
        "dreamer": _dreamer,
        "api": _api,
        "submit": _submit,
        "admin": _admin,
    }
    for role in ROLES:
        if role not in roles:
            continue
        if role == "subagent":
            for name, accesses in workers.items():
                users.append(
                    user(name, role, partial(_worker, accesses=accesses), [a.name for a in accesses])
                )
        else:
            users.append(user(f"{subjects.key}-{role}", role, builders[role]))
    return Deployment(subjects, tuple(users))


def new_passwords(deployment: Deployment) -> dict[str, str]:
    """A fresh random password per user (256 bits each)."""
    return {user.name: secrets.token_urlsafe(32) for user in deployment.users}


# --- rendering ------------------------------------------------------------------------------------


def _quoted(text: str) -> str:
    return json.dumps(text)  # a nats config string: double quotes, JSON escapes; never a $variable


def _rules(rules: Iterable[Rule], indent: str) -> list[str]:
    return [f"{indent}{_quoted(rule.subject)}  # {rule.why}" for rule in rules]


def render_user(user: NatsUser, password: str) -> str:
    """One user's entry of ``authorization.users``, with a comment per rule and its notes."""
    p = user.permissions
    serving = f" serving {', '.join(user.agents)}" if user.agents else ""
    lines = [f"    # {user.name}: role {user.role}{serving}"]
    for note in user.notes:
        lines += textwrap.wrap(note, 100, initial_indent="    # - ", subsequent_indent="    #   ")
    lines += [
        "    {",
        f"      user: {_quoted(user.name)}",
        f"      password: {_quoted(password)}",
        "      permissions: {",
        "        publish: {",
        "          allow: [",
        *_rules(p.publish, "            "),
        "          ]",
    ]
    if p.deny_publish:
        lines += ["          deny: [", *_rules(p.deny_publish, "            "), "          ]"]
    lines += [
        "        }",
        "        subscribe: {",
        "          allow: [",
        *_rules(p.subscribe, "            "),
        "          ]",
        "        }",
    ]
    if p.responses:
        lines.append("        allow_responses: true  # answer the requests it receives, once each")
    lines += ["      }", "    }"]
    return "\n".join(lines)


def render_config(deployment: Deployment, passwords: Mapping[str, str]) -> str:
    """nats-server config: ``authorization { users = [...] }`` for every user of ``deployment``, to
    ``include`` from the server's config file. It holds the passwords: keep it private (mode 0600)."""
    missing = [u.name for u in deployment.users if u.name not in passwords]
    if missing:
        raise ConfigError(f"no password for user(s) {', '.join(missing)}")
    s = deployment.subjects
    header = [
        f"# staffwork: NATS users for root {s.root!r}, one per role and per agent (staffwork auth).",
        "# It holds passwords: keep it private (mode 0600). Each user connects with the variables of its",
        "# credentials file: STAFFWORK_NATS_USER, STAFFWORK_NATS_PASSWORD, STAFFWORK_NATS_INBOX_PREFIX.",
        "# The admin user provisions every stream, bucket and durable consumer (the collector's too)",
        "# before the actors start: an actor's user may then only update its own consumer.",
        "#",
        "# Where a worker's access cannot be narrowed to its own agent (see each user's notes):",
        "# - <root>.s.<session>.hist.<thread> and .reply.<thread> name no agent (thread ids are not per",
        "#   agent): a worker may append to or reply for another agent's thread. Naming the agent",
        "#   (.hist.<agent>.<thread>, .reply.<agent>.<thread>) would give each worker only its own, and",
        "#   let the lead check a reply's agent against its subject.",
        "# - histories are read with batched direct gets (the subject is in the request body), so reading",
        "#   one history is reading the whole log; a history stream per agent would make reads per agent.",
        "# - creating a consumer (listings: list_files, grep, sql; custom tools; the lead's waits) lets a",
        "#   user pick a push deliver subject the server does not check against its publish permissions",
        "#   (nats-io/nats-server#8274): the server then delivers for it to any subject with a subscriber.",
        "#   Only the agents whose tools need it get it; listings without a consumer (stream info with a",
        "#   subjects filter, then direct gets) would let no agent have it.",
        "authorization {",
        "  users = [",
    ]
    body = [render_user(user, passwords[user.name]) for user in deployment.users]
    return "\n".join([*header, *body, "  ]", "}", ""])


def credentials_env(user: NatsUser, password: str, root: str) -> str:
    """One user's credentials as ``KEY=value`` lines (an env file): the ``STAFFWORK_NATS_*``
    variables ``Bus.connect`` reads, and the root."""
    return "\n".join(
        [
            f"# NATS credentials of {user.name} (role {user.role}, root {root}): keep it private (0600)",
            f"STAFFWORK_NATS_USER={user.name}",
            f"STAFFWORK_NATS_PASSWORD={password}",
            f"STAFFWORK_NATS_INBOX_PREFIX={user.inbox_prefix}",
            f"STAFFWORK_ROOT={root}",
            "",
        ]
    )


__all__ = [
    "EPHEMERAL_CAUTION",
    "LISTING_TOOLS",
    "NOTICE_KEY",
    "PUSH_CAUTION",
    "ROLES",
    "AgentAccess",
    "Deployment",
    "NatsUser",
    "Permissions",
    "Rule",
    "credentials_env",
    "deployment",
    "new_passwords",
    "render_config",
    "render_user",
]
