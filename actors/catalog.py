"""The event catalogue: every subject staffwork uses, what it carries, who sends and who receives it.

:func:`channels` is the table: each :class:`Channel` has its address from ``bus/subjects.py`` (built
with placeholder tokens, :data:`PARAMETERS`, that become ``{parameters}``), its messages (staffwork's
structs, or a named raw payload of :data:`RAW_PAYLOADS`), the roles (:data:`ROLES`) that send and
receive, and whether it is ``public`` (the contract other systems use) or ``internal`` (between
staffwork's own roles: its messages are typed too, but may change with the runtime). A
request/reply channel has the answers in ``reply``. ``actors/asyncapi.py`` renders it as AsyncAPI.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from bus.health import HealthRecord
from bus.subjects import Subjects
from schemas.dream import DreamAnswer, DreamRecord
from schemas.export import bus_messages, def_name
from schemas.pool import PoolServe, PoolServed
from schemas.trace import AnyTraceEvent

#: Placeholder tokens and the parameters they become: (token, name, description).
PARAMETERS = (
    ("ROOT", "root", "The subject root, `sw` by default; it may be dotted (`acme.prod`)."),
    ("SESSION", "session", "A session id (`ses_...`)."),
    ("AGENT", "agent", "An agent's name in the team."),
    ("THREAD", "thread", "A thread id: `lead`, or `t-<tool_use_id>` for a delegation's thread."),
    ("NAME", "name", "A lifecycle message's name."),
    ("kind", "kind", "The event's tag without its version (`agent.tool_use`): several tokens."),
    ("TOOLUSE", "tool_use_id", "The id of the custom tool call answered."),
    ("DREAM", "dream", "A dream id (`drm_...`)."),
    ("STORE", "store", "A memory store's name."),
    ("PATH64", "path64", "The file's path in base64url, without padding."),
    ("SERVICE", "service", "A tool service's name, as the team file's `[[agents.services]]` names it."),
    ("ENDPOINT", "endpoint", "The endpoint's subject under the service, as `$SRV.INFO` lists it."),
    ("verdict-0", "iteration", "The attempt graded, from 1."),
)
_S = Subjects("ROOT")

ROLES = {
    "caller": "An outside system, or staffwork's own CLI and client: submits, cancels, watches, answers.",
    "gateway": "The submit gateway, in every lead process: validates a submit, records it, answers.",
    "lead": "The lead role: drives a session (plans, delegates, grades, writes the result).",
    "subagent": "A subagent worker, dedicated or a pool's: runs the threads of the agents it serves.",
    "pool": "A pool: runs a subagent worker for any agent of any session it learns of.",
    "grader": "The grader: grades an attempt against the session's outcome.",
    "collector": "The trace collector: stores every event, answers trace queries.",
    "webhooks": "The webhooks actor: turns lifecycle events into signed, retried HTTP deliveries.",
    "dreamer": "The dreamer: curates a memory store from past sessions.",
    "process": "Every staffwork actor process (its health endpoint; rejected messages).",
    "tool_service": "A NATS micro service whose endpoints are an agent's tools (any language).",
}

_TOOL_INPUT = {"type": "object", "description": "The tool's input, a JSON object as its schema says."}
_TOOL_REPLY = {
    "type": "object",
    "description": "A tool call's answer.",
    "properties": {
        "content": {"description": "The result: a string, or any JSON, which the model gets encoded."},
        "is_error": {"type": "boolean", "default": False, "description": "The call failed."},
    },
    "required": ["content"],
}
_SERVICE_INFO = {
    "type": "object",
    "description": "The NATS micro protocol's `io.nats.micro.v1.info_response` (ADR-32).",
    "properties": {
        "type": {"const": "io.nats.micro.v1.info_response", "description": "The answer's kind."},
        "name": {"type": "string", "description": "The service's name."},
        "endpoints": {"type": "array", "description": "Its endpoints: `name`, `subject`, `metadata`."},
    },
}
_EMPTY = {"type": "string", "maxLength": 0, "description": "An empty body."}
_MEMORY_FILE = {
    "type": "string",
    "description": (
        "The file's content (UTF-8, at most 100 KiB; empty for a delete). Headers: `Sw-Op` (`write` or"
        " `delete`), `Sw-Path`, `Sw-Sha256`, `Sw-Writer` (JSON: who made the change)."
    ),
}
#: Payloads that are not staffwork structs, by name.
RAW_PAYLOADS = {
    "ToolCallInput": _TOOL_INPUT,
    "ToolCallReply": _TOOL_REPLY,
    "ServiceInfo": _SERVICE_INFO,
    "Empty": _EMPTY,
    "MemoryFile": _MEMORY_FILE,
}

Payload = type[msgspec.Struct] | str


@dataclass(frozen=True)
class Channel:
    """One channel: its address, its messages, who sends and who receives them."""

    id: str
    address: str
    messages: tuple[Payload, ...]
    public: bool
    description: str
    send: tuple[str, ...]
    receive: tuple[str, ...]
    #: request/reply: what the responders (``receive``) answer on the requester's inbox
    reply: tuple[Payload, ...] = ()


def payload_name(payload: Payload) -> str:
    return payload if isinstance(payload, str) else def_name(payload)


def channels() -> list[Channel]:
    """Every channel of a root, in the order a reader meets them."""
    s = _S
    events = tuple(AnyTraceEvent.__args__)
    by_name = {def_name(cls): cls for cls in bus_messages()}
    queries = tuple(
        by_name[n] for n in ("TraceQuerySessionsV1", "TraceQueryEventsV1", "TraceQueryProvenanceV1")
    )
    answers = tuple(by_name[n] for n in by_name if n.startswith("TraceAnswer"))
    m = by_name
    return [
        Channel(
            "apiSubmit",
            s.api_submit,
            (m["SessionSubmitV1"],),
            True,
            "Start a session: a validated submit, answered with the session id or why not. Not logged.",
            ("caller",),
            ("gateway",),
            reply=(m["SessionSubmitReplyV1"],),
        ),
        Channel(
            "apiMessage",
            s.api_message,
            (m["SessionMessageV1"],),
            True,
            "A follow-up turn of an idle session, answered like a submit (accepted, or why not: busy, "
            "ended, conflict, unknown_session). Not logged.",
            ("caller",),
            ("gateway",),
            reply=(m["SessionSubmitReplyV1"],),
        ),
        Channel(
            "submit",
            s.submit,
            (m["SessionSubmitV1"], m["SessionMessageV1"]),
            True,
            "The lead pool's durable inbox (stream `<key>_log`, consumer `lead`): what the gateway "
            "accepted (submits and follow-ups), or one published directly (no check, no record before "
            "the lead's).",
            ("gateway", "caller"),
            ("lead",),
        ),
        Channel(
            "sessionAccepted",
            s.out("SESSION", "accepted"),
            (m["SessionAcceptedV1"],),
            True,
            "A lead took the session and validated its team.",
            ("lead",),
            ("caller", "pool"),
        ),
        Channel(
            "sessionResult",
            s.out("SESSION", "result"),
            (m["SessionResultV1"],),
            True,
            "The deliverable of each of the session's turns (`turn` says which): the submit's, then one "
            "per follow-up; read the last message on it (direct get) to find the latest.",
            ("lead",),
            ("caller", "dreamer"),
        ),
        Channel(
            "sessionEvents",
            s.event("SESSION", "kind"),
            events,
            True,
            "Trace events of one session; the kind is the event's name, so `evt.span.>` selects spans.",
            ("lead", "subagent", "grader", "gateway", "webhooks"),
            ("collector", "webhooks", "caller"),
        ),
        Channel(
            "systemEvents",
            s.event("", "kind"),
            events,
            True,
            "Events of no session: undecodable traffic (`bus.message_rejected`), the dreamer's model calls.",
            ("process", "dreamer"),
            ("collector", "caller"),
        ),
        Channel(
            "control",
            s.ctl("SESSION"),
            (m["SessionCancelV1"], m["SessionInterruptV1"]),
            True,
            "Cancel a session (it ends), or interrupt one thread or all of them (the session goes on).",
            ("caller", "lead"),
            ("lead", "subagent", "grader"),
        ),
        Channel(
            "toolConfirmation",
            s.confirmation("SESSION", "TOOLUSE"),
            (m["UserToolConfirmationV1"],),
            True,
            "A person's answer to an `agent.tool_confirmation_requested` event: allow runs the call, deny "
            "gives the model an error result; the first answer counts.",
            ("caller",),
            ("subagent", "lead"),
        ),
        Channel(
            "customToolResult",
            s.tool_result("SESSION", "TOOLUSE"),
            (m["UserCustomToolResultV1"],),
            True,
            "The caller's answer to an `agent.custom_tool_use` event; the waiting thread goes on.",
            ("caller",),
            ("subagent", "lead"),
        ),
        Channel(
            "apiTrace",
            s.api_trace,
            queries,
            True,
            "Trace queries, answered by the collector from its store. Not logged.",
            ("caller", "dreamer"),
            ("collector",),
            reply=answers,
        ),
        Channel(
            "apiDream",
            s.api_dream,
            (m["DreamRequestV1"],),
            True,
            "Start a dream; the dreamer answers with its pending record (or why not). Not logged.",
            ("caller",),
            ("dreamer",),
            reply=(DreamAnswer,),
        ),
        Channel(
            "apiHealth",
            s.api_health,
            ("Empty",),
            True,
            "Every actor process of the root answers its health record (a queue group each). Not logged.",
            ("caller",),
            ("process",),
            reply=(HealthRecord,),
        ),
        Channel(
            "serviceInfo",
            Subjects.service_info("SERVICE"),
            ("Empty",),
            True,
            "Discover a tool service's endpoints (NATS micro protocol; outside the root, not logged).",
            ("subagent", "lead"),
            ("tool_service",),
            reply=("ServiceInfo",),
        ),
        Channel(
            "serviceCall",
            Subjects.service_endpoints("SERVICE").replace(">", "ENDPOINT"),
            ("ToolCallInput",),
            True,
            "Call a tool: headers `Staffwork-Session`, `Staffwork-Thread`, `Staffwork-Agent`, "
            "`Staffwork-Tool-Use-Id`, `traceparent`. Not logged.",
            ("subagent", "lead"),
            ("tool_service",),
            reply=("ToolCallReply",),
        ),
        Channel(
            "apiPool",
            s.api_pool,
            (PoolServe,),
            False,
            "Serve a session's agents: a pool (queue group `pool`) answers once it pulls from each "
            "agent's consumer. Not logged.",
            ("gateway",),
            ("pool",),
            reply=(PoolServed,),
        ),
        Channel(
            "task",
            s.task("SESSION", "AGENT"),
            (m["ThreadDelegateV1"], m["ThreadFollowUpV1"]),
            False,
            "Delegations and follow-ups for one agent (consumer `agent_<agent>`).",
            ("lead",),
            ("subagent",),
        ),
        Channel(
            "threadReply",
            s.reply("SESSION", "THREAD"),
            (m["ThreadReplyV1"],),
            False,
            "A subagent thread's answer to the lead (the lead answers for a worker that never did).",
            ("subagent", "lead"),
            ("lead",),
        ),
        Channel(
            "threadHistory",
            s.history("SESSION", "THREAD"),
            (m["ThreadTurnV1"],),
            False,
            "A thread's append-only history log, one turn per message, read back by direct get.",
            ("lead", "subagent"),
            ("lead", "subagent"),
        ),
        Channel(
            "grade",
            s.grade("SESSION"),
            (m["OutcomeGradeV1"],),
            False,
            "Grade an attempt (consumer `grader`).",
            ("lead",),
            ("grader",),
        ),
        Channel(
            "verdict",
            s.verdict("SESSION", 0),
            (m["OutcomeVerdictV1"],),
            False,
            "The grader's verdict on one attempt.",
            ("grader",),
            ("lead",),
        ),
        Channel(
            "webhookDelivery",
            s.hook("SESSION"),
            (m["WebhookDeliveryV1"],),
            False,
            "Pending webhook deliveries, durable until delivered or given up (consumer "
            "`webhook_deliveries`).",
            ("webhooks",),
            ("webhooks",),
        ),
        Channel(
            "dreamCancel",
            s.dream_cancel("DREAM"),
            (m["DreamCancelV1"],),
            False,
            "Stop a dream (after its record says so).",
            ("caller",),
            ("dreamer",),
        ),
        Channel(
            "dreamDone",
            s.dream_done("DREAM"),
            (DreamRecord,),
            False,
            "A dream's final record, kept by the log.",
            ("dreamer",),
            ("caller",),
        ),
        Channel(
            "memoryFile",
            s.memory_file("STORE", "PATH64"),
            ("MemoryFile",),
            False,
            "Every version of a memory file (stream `<key>_memory`, kept forever), read by direct get.",
            ("lead", "subagent", "dreamer", "caller"),
            ("lead", "subagent", "dreamer", "caller"),
        ),
    ]


__all__ = ["PARAMETERS", "RAW_PAYLOADS", "ROLES", "Channel", "Payload", "channels", "payload_name"]
