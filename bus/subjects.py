"""Every NATS subject and JetStream resource name staffwork uses, built in one place: :class:`Subjects`.

Names live under a configurable root (default ``sw``; each test uses its own), and resource names are
derived from it, so two roots never share a stream or bucket. Every id, agent name and root part is
checked as a single subject token (:func:`check_token`: a :class:`ConfigError` naming the value). The
session id is always the third token, so ``<root>.s.<id>.>`` selects one session's traffic. The table
of subjects and resources: docs/architecture.md, "Subjects and resources".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from bus.errors import ConfigError

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_KIND = re.compile(r"^[a-z0-9_]+(\.[a-z0-9_]+)*$")


def is_token(value: object) -> bool:
    """Whether ``value`` is a valid single subject token (1-128 letters, digits, ``_`` or ``-``)."""
    return isinstance(value, str) and _TOKEN.match(value) is not None


def check_token(value: str, what: str) -> str:
    """Return ``value`` if it is a valid single subject token, else raise :class:`ConfigError`."""
    if not is_token(value):
        raise ConfigError(
            f"{what} {value!r} is not a valid subject token "
            "(use 1-128 letters, digits, '_' or '-'; no dots, spaces or wildcards)"
        )
    return value


@dataclass(frozen=True)
class Subjects:
    """Subject builder for one root. ``Subjects("sw").task("ses_1", "logs")`` → ``sw.s.ses_1.task.logs``."""

    root: str = "sw"
    key: str = field(init=False)

    def __post_init__(self) -> None:
        parts = self.root.split(".") if isinstance(self.root, str) else [self.root]
        for part in parts:
            check_token(part, "subject root part")
        object.__setattr__(self, "key", "_".join(parts))

    # --- subjects ---
    @property
    def all(self) -> str:
        return f"{self.root}.>"

    @property
    def logged(self) -> list[str]:
        """What the log stream keeps: session requests, all session traffic, system events.

        Request/reply APIs (``<root>.api.>``) are not logged: a stream capturing a request's subject
        would answer it with its own publish acknowledgement before the real responder.
        """
        return [self.submit, f"{self.root}.s.>", f"{self.root}.sys.>"]

    @property
    def submit(self) -> str:
        return f"{self.root}.submit"

    @property
    def api_submit(self) -> str:
        """Request/reply: validate a submit, start the session, answer with its id (or the error)."""
        return f"{self.root}.api.submit"

    @property
    def api_message(self) -> str:
        """Request/reply: a follow-up to an idle session (``session.message.v1``), answered like a submit."""
        return f"{self.root}.api.message"

    def session(self, session_id: str) -> str:
        """Filter for all of one session's traffic."""
        return f"{self.root}.s.{check_token(session_id, 'session id')}.>"

    def task(self, session_id: str, agent: str) -> str:
        return (
            f"{self.root}.s.{check_token(session_id, 'session id')}.task.{check_token(agent, 'agent name')}"
        )

    def tasks_for(self, agent: str) -> str:
        """Filter for one agent's tasks across all sessions."""
        return f"{self.root}.s.*.task.{check_token(agent, 'agent name')}"

    def reply(self, session_id: str, thread_id: str) -> str:
        sid = check_token(session_id, "session id")
        return f"{self.root}.s.{sid}.reply.{check_token(thread_id, 'thread id')}"

    def history(self, session_id: str, thread_id: str) -> str:
        """A thread's append-only history log."""
        sid = check_token(session_id, "session id")
        return f"{self.root}.s.{sid}.hist.{check_token(thread_id, 'thread id')}"

    def replies(self, session_id: str) -> str:
        """Filter for every reply of one session."""
        return f"{self.root}.s.{check_token(session_id, 'session id')}.reply.*"

    def ctl(self, session_id: str) -> str:
        return f"{self.root}.s.{check_token(session_id, 'session id')}.ctl"

    @property
    def all_ctl(self) -> str:
        return f"{self.root}.s.*.ctl"

    def out(self, session_id: str, name: str) -> str:
        return f"{self.root}.s.{check_token(session_id, 'session id')}.out.{check_token(name, 'name')}"

    def grade(self, session_id: str) -> str:
        """Grading requests (an outcome's attempt) for the grader."""
        return f"{self.root}.s.{check_token(session_id, 'session id')}.grade"

    @property
    def all_grades(self) -> str:
        return f"{self.root}.s.*.grade"

    def verdict(self, session_id: str, iteration: int, turn: int = 0) -> str:
        """The grader's verdict on attempt ``iteration`` (of the session's ``turn``: 0 is the submit's)."""
        return self.out(session_id, f"verdict-{iteration}" if not turn else f"verdict-{turn}-{iteration}")

    def hook(self, session_id: str) -> str:
        """Pending webhook deliveries of one session."""
        return f"{self.root}.s.{check_token(session_id, 'session id')}.hook"

    @property
    def all_hooks(self) -> str:
        return f"{self.root}.s.*.hook"

    def event(self, session_id: str, kind: str) -> str:
        """A trace event's subject; without a session it goes to ``<root>.sys.evt.<kind>``."""
        if not _KIND.match(kind):
            raise ConfigError(f"event kind {kind!r} is not valid (lower-case words joined by dots)")
        if not session_id:
            return f"{self.root}.sys.evt.{kind}"
        return f"{self.root}.s.{check_token(session_id, 'session id')}.evt.{kind}"

    def events(self, session_id: str = "*", kind: str = ">") -> str:
        """Filter for trace events: one session's or every session's (``*``), of one kind or all
        (``>``; a family is ``agent.>``)."""
        sid = session_id if session_id == "*" else check_token(session_id, "session id")
        return f"{self.root}.s.{sid}.evt.{kind}"

    def system_events(self, kind: str = ">") -> str:
        """Filter for events that belong to no session (undecodable traffic, the dreamer's model calls)."""
        return f"{self.root}.sys.evt.{kind}"

    @property
    def api_trace(self) -> str:
        """Request/reply: the collector's queries (sessions, events, provenance)."""
        return f"{self.root}.api.trace"

    @property
    def api_health(self) -> str:
        """Request/reply: every staffwork process of the root answers with its health record (each in
        a queue group of its own, so one request reaches them all)."""
        return f"{self.root}.api.health"

    @property
    def api_pool(self) -> str:
        """Request/reply: a pool starts serving a session's agents, then answers (queue group ``pool``)."""
        return f"{self.root}.api.pool"

    @property
    def api_dream(self) -> str:
        """Request/reply: start a dream (the dreamer answers with its record)."""
        return f"{self.root}.api.dream"

    def dream_cancel(self, dream_id: str) -> str:
        return f"{self.root}.sys.dream.cancel.{check_token(dream_id, 'dream id')}"

    def dream_done(self, dream_id: str) -> str:
        """Where a dream's final record is published (in the log stream)."""
        return f"{self.root}.sys.dream.done.{check_token(dream_id, 'dream id')}"

    @property
    def all_memory(self) -> str:
        """What the memory stream keeps."""
        return f"{self.root}.mem.>"

    def memory_files(self, store: str) -> str:
        """Filter for every version of every file of one memory store."""
        return f"{self.root}.mem.{check_token(store, 'memory store')}.f.>"

    def memory_file(self, store: str, path_token: str) -> str:
        """One memory file's versions; ``path_token`` is its path in base64url without padding."""
        return f"{self.root}.mem.{check_token(store, 'memory store')}.f.{path_token}"

    def confirmation(self, session_id: str, tool_use_id: str) -> str:
        """A person's answer (``user.tool_confirmation.v1``) to a tool call that waits for it."""
        sid = check_token(session_id, "session id")
        return f"{self.root}.s.{sid}.in.confirm.{check_token(tool_use_id, 'tool use id')}"

    @property
    def all_confirmations(self) -> str:
        return f"{self.root}.s.*.in.confirm.*"

    def tool_result(self, session_id: str, tool_use_id: str) -> str:
        """The caller's answer to a custom tool call (a ``user.custom_tool_result``), kept by the log."""
        sid = check_token(session_id, "session id")
        return f"{self.root}.s.{sid}.in.tool_result.{check_token(tool_use_id, 'tool use id')}"

    @staticmethod
    def service_info(service: str) -> str:
        """The NATS micro protocol's discovery subject: every instance of ``service`` answers with
        its endpoints (not under the root: any micro service answers it)."""
        return f"$SRV.INFO.{check_token(service, 'service name')}"

    @staticmethod
    def service_stats(service: str) -> str:
        """The NATS micro protocol's statistics subject: every instance of ``service`` answers."""
        return f"$SRV.STATS.{check_token(service, 'service name')}"

    def session_of(self, subject: str) -> str:
        """The session id in ``subject``, or ``""`` when it names none."""
        prefix = f"{self.root}.s."
        if not subject.startswith(prefix):
            return ""
        return subject[len(prefix) :].split(".", 1)[0]

    # --- JetStream resource names (streams, consumers, buckets) ---
    @property
    def log_stream(self) -> str:
        """The stream that keeps all traffic under the root."""
        return f"{self.key}_log"

    @property
    def files_bucket(self) -> str:
        return f"{self.key}_files"

    @property
    def sessions_bucket(self) -> str:
        return f"{self.key}_sessions"

    @property
    def registry_bucket(self) -> str:
        return f"{self.key}_registry"

    @property
    def memory_stream(self) -> str:
        """The stream that keeps every version of every memory file (memory is permanent)."""
        return f"{self.key}_memory"

    @property
    def memory_stores_bucket(self) -> str:
        """KV bucket: the registered memory stores."""
        return f"{self.key}_memstores"

    @property
    def dreams_bucket(self) -> str:
        """KV bucket: dream records (key: the dream id)."""
        return f"{self.key}_dreams"

    @property
    def collector_consumer(self) -> str:
        return "collector"

    @property
    def lead_consumer(self) -> str:
        return "lead"

    def agent_consumer(self, agent: str) -> str:
        return f"agent_{check_token(agent, 'agent name')}"

    @property
    def grader_consumer(self) -> str:
        return "grader"

    @property
    def webhook_events_consumer(self) -> str:
        """The webhooks actor's consumer of trace events (which become deliveries)."""
        return "webhooks"

    @property
    def webhook_deliveries_consumer(self) -> str:
        return "webhook_deliveries"

    @property
    def webhooks_bucket(self) -> str:
        """Endpoint state: consecutive failures, disabled."""
        return f"{self.key}_webhooks"

    @property
    def api_bucket(self) -> str:
        """KV bucket: the HTTP API's records (environments, agents and their versions), per workspace."""
        return f"{self.key}_api"

    # --- every session at once (consumer filters and permissions) ---
    @property
    def all_tasks(self) -> str:
        """Every agent's tasks in every session."""
        return f"{self.root}.s.*.task.*"

    @property
    def all_replies(self) -> str:
        return f"{self.root}.s.*.reply.*"

    @property
    def all_histories(self) -> str:
        """Every thread's history log (thread ids do not name their agent)."""
        return f"{self.root}.s.*.hist.*"

    @property
    def all_outs(self) -> str:
        """Every session's lifecycle messages (``accepted``, ``result``, the verdicts)."""
        return f"{self.root}.s.*.out.*"

    def all_out(self, name: str) -> str:
        """One lifecycle message (``result``, say) of every session."""
        return f"{self.root}.s.*.out.{check_token(name, 'name')}"

    @property
    def all_tool_results(self) -> str:
        """Every answer to a custom tool call."""
        return f"{self.root}.s.*.in.tool_result.*"

    @property
    def all_dream_cancels(self) -> str:
        return f"{self.root}.sys.dream.cancel.*"

    @property
    def all_dream_dones(self) -> str:
        return f"{self.root}.sys.dream.done.*"

    def thread_histories(self, thread_id: str) -> str:
        """One thread id's history in every session (the lead's own thread is ``lead`` in each)."""
        return f"{self.root}.s.*.hist.{check_token(thread_id, 'thread id')}"

    @staticmethod
    def service_endpoints(service: str) -> str:
        """A tool service's endpoints, when grouped under its name (as the examples' services are)."""
        return f"{check_token(service, 'service name')}.>"

    @staticmethod
    def inbox(owner: str = "") -> str:
        """The reply inbox prefix: nats' shared ``_INBOX``, or ``_INBOX.<owner>`` for one user's
        replies only (a client connected with that ``inbox_prefix``)."""
        return f"_INBOX.{check_token(owner, 'inbox owner')}" if owner else "_INBOX"

    @staticmethod
    def services() -> str:
        """The NATS micro protocol's discovery subjects (``$SRV.PING|INFO|STATS[.<name>[.<id>]]``)."""
        return "$SRV.>"


class JetStreamApi:
    """JetStream's own subjects: nats-server's API (``$JS.API.…``), acks, flow control, advisories,
    and the KV and object-store layouts (``KV_<bucket>`` on ``$KV.<bucket>.…``, ``OBJ_<bucket>`` on
    ``$O.<bucket>.…``), as nats-py uses them; ``*`` and ``>`` may stand for a stream, consumer or
    subject (permissions). The layouts: ADR-8 (KV) and ADR-20 (object store)."""

    @staticmethod
    def all() -> str:
        return "$JS.API.>"

    @staticmethod
    def info() -> str:
        """Account info (``js.account_info()``)."""
        return "$JS.API.INFO"

    @staticmethod
    def stream_info(stream: str) -> str:
        return f"$JS.API.STREAM.INFO.{stream}"

    @staticmethod
    def stream_purge(stream: str) -> str:
        """Purge (the subject filter is in the request's body, not here)."""
        return f"$JS.API.STREAM.PURGE.{stream}"

    @staticmethod
    def consumer_info(stream: str, consumer: str) -> str:
        return f"$JS.API.CONSUMER.INFO.{stream}.{consumer}"

    @staticmethod
    def durable_create(stream: str, consumer: str) -> str:
        """Create or update the durable ``consumer`` (nats-py's form for a ``durable_name`` config;
        the filter is in the body)."""
        return f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}"

    @staticmethod
    def ephemeral_create(stream: str) -> str:
        """Create an unnamed consumer (nats-py's form for ordered consumers and ``add_consumer``
        without a name; the filter is in the body)."""
        return f"$JS.API.CONSUMER.CREATE.{stream}"

    @staticmethod
    def consumer_delete(stream: str, consumer: str) -> str:
        return f"$JS.API.CONSUMER.DELETE.{stream}.{consumer}"

    @staticmethod
    def msg_next(stream: str, consumer: str) -> str:
        """A pull request to ``consumer``."""
        return f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}"

    @staticmethod
    def ack(stream: str, consumer: str) -> str:
        """Every ack, nak, in-progress and term of ``consumer``'s messages."""
        return f"$JS.ACK.{stream}.{consumer}.>"

    @staticmethod
    def direct_get(stream: str) -> str:
        """A direct get whose request (seq, last or next by subject, batch) is in the body."""
        return f"$JS.API.DIRECT.GET.{stream}"

    @staticmethod
    def direct_get_last(stream: str, subject: str) -> str:
        """A direct get of the last message on ``subject`` (the subject is in the request subject)."""
        return f"$JS.API.DIRECT.GET.{stream}.{subject}"

    @staticmethod
    def flow_control(stream: str) -> str:
        """Flow-control replies of push (ordered) consumers on ``stream``."""
        return f"$JS.FC.{stream}.>"

    @staticmethod
    def max_deliveries(stream: str, consumer: str = "*") -> str:
        """The advisory published when a message of ``consumer`` ran out of deliveries."""
        return f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}"

    @staticmethod
    def kv_stream(bucket: str) -> str:
        return f"KV_{bucket}"

    @staticmethod
    def kv_key(bucket: str, key: str = ">") -> str:
        """The subject of ``key`` in ``bucket`` (``>``: every key)."""
        return f"$KV.{bucket}.{key}"

    @staticmethod
    def object_stream(bucket: str) -> str:
        return f"OBJ_{bucket}"

    @staticmethod
    def object_subjects(bucket: str) -> str:
        """Every chunk and metadata subject of an object store."""
        return f"$O.{bucket}.>"

    @staticmethod
    def object_index(bucket: str, session_id: str = "*") -> str:
        """The session index of an object store (staffwork's own addition to the layout): one
        subject per file of a session, holding its metadata, so a session's files are listed
        without reading every session's."""
        return f"$O.{bucket}.S.{session_id}.>"

    @staticmethod
    def object_meta(bucket: str) -> str:
        """Every object's metadata subject."""
        return f"$O.{bucket}.M.*"
