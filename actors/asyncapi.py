"""The event catalogue as an AsyncAPI 3.0.0 document: what ``staffwork schema --asyncapi`` prints.

One channel per entry of :func:`actors.catalog.channels` (request/reply channels get a second one
for the answer, whose address is the requester's inbox), one operation per role that sends or
receives on it (tagged with the role and ``public`` or ``internal``), the messages under
``components.messages`` and their payloads under ``components.schemas``.

Payloads are in AsyncAPI's default schema format (JSON Schema draft-07 and more; the parsers read no
2020-12): the definitions of :func:`schemas.export.definitions` use nothing the two drafts read
differently, except msgspec's OpenAPI-style ``discriminator`` object, written here as AsyncAPI's
property name.
"""

from __future__ import annotations

from typing import Any

from actors.catalog import PARAMETERS, RAW_PAYLOADS, ROLES, Payload, channels, payload_name
from bus.health import package_version
from bus.subjects import Subjects
from schemas.export import def_name, definitions


def _address(subject: str) -> tuple[str, dict[str, Any]]:
    """``ROOT.s.SESSION.task.AGENT`` → ``{root}.s.{session}.task.{agent}`` and its parameters."""
    tokens = subject.split(".")
    parameters: dict[str, Any] = {}
    for token, name, description in PARAMETERS:
        for i, part in enumerate(tokens):
            if part == token:
                tokens[i] = "verdict-{" + name + "}" if token == "verdict-0" else "{" + name + "}"
                parameters[name] = {"description": description}
    return ".".join(tokens), parameters


def _resources() -> str:
    s = Subjects("KEY")
    rows = [
        (s.log_stream, "stream: every message under `<root>.submit`, `<root>.s.>`, `<root>.sys.>` (30 days)"),
        (s.memory_stream, "stream: `<root>.mem.>`, every version of every memory file"),
        (s.sessions_bucket, "KV: the session records (`SessionRecord`, keyed by session id)"),
        (s.registry_bucket, "KV: registered teams (`team.<name>`) and model notices"),
        (s.files_bucket, "object store: the sessions' workspaces (`<session>/<path>`)"),
        (s.webhooks_bucket, "KV: webhook endpoint state"),
        (s.memory_stores_bucket, "KV: the memory stores"),
        (s.dreams_bucket, "KV: dream records (`DreamRecord`, keyed by dream id)"),
    ]
    return "\n".join(f"- `{name.replace('KEY', '<key>')}`: {what}" for name, what in rows)


def _asyncapi_schema(node: Any) -> Any:
    """msgspec's OpenAPI-style ``discriminator`` object as AsyncAPI's property name."""
    if isinstance(node, dict):
        return {
            key: value["propertyName"]
            if key == "discriminator" and isinstance(value, dict)
            else _asyncapi_schema(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_asyncapi_schema(item) for item in node]
    return node


def asyncapi_document() -> dict[str, Any]:
    """The AsyncAPI 3.0.0 document of every channel, operation and message."""
    catalogue = channels()
    structs = {p for c in catalogue for p in (*c.messages, *c.reply) if not isinstance(p, str)}
    schemas = _asyncapi_schema(definitions(sorted(structs, key=def_name), prefix="#/components/schemas/"))
    schemas.update(RAW_PAYLOADS)
    messages: dict[str, Any] = {}
    out_channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    for channel in catalogue:
        address, parameters = _address(channel.address)
        scope = "public" if channel.public else "internal"
        body: dict[str, Any] = {
            "address": address,
            "title": channel.id,
            "description": channel.description,
            "messages": {
                payload_name(p): {"$ref": f"#/components/messages/{payload_name(p)}"}
                for p in channel.messages
            },
            "tags": [{"name": scope}],
        }
        if parameters:
            body["parameters"] = parameters
        out_channels[channel.id] = body
        reply_id = channel.id + "Reply"
        if channel.reply:
            out_channels[reply_id] = {
                "address": None,
                "description": f"The answer to a request on `{address}`, on the requester's inbox.",
                "messages": {
                    payload_name(p): {"$ref": f"#/components/messages/{payload_name(p)}"}
                    for p in channel.reply
                },
                "tags": [{"name": scope}],
            }
        for p in (*channel.messages, *channel.reply):
            messages.setdefault(payload_name(p), _message(p))
        for action, roles in (("send", channel.send), ("receive", channel.receive)):
            for role in roles:
                operation: dict[str, Any] = {
                    "action": action,
                    "channel": {"$ref": f"#/channels/{channel.id}"},
                    "summary": f"{role} {'sends' if action == 'send' else 'receives'} on {address}",
                    "tags": [{"name": role}, {"name": scope}],
                    "messages": [
                        {"$ref": f"#/channels/{channel.id}/messages/{payload_name(p)}"}
                        for p in channel.messages
                    ],
                }
                if channel.reply:
                    operation["reply"] = {
                        "channel": {"$ref": f"#/channels/{reply_id}"},
                        "messages": [
                            {"$ref": f"#/channels/{reply_id}/messages/{payload_name(p)}"}
                            for p in channel.reply
                        ],
                    }
                operations[f"{role}_{action}_{channel.id}"] = operation
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "staffwork",
            "version": package_version(),
            "description": (
                "Every NATS subject staffwork uses, what it carries and who sends and receives it. "
                "Channels tagged `public` are the contract for other systems; `internal` ones run "
                "between staffwork's roles. `<key>` is the root with dots turned into `_`. "
                "JetStream resources:\n\n" + _resources()
            ),
            "tags": [
                {"name": "public", "description": "The contract for other systems."},
                {"name": "internal", "description": "Between staffwork's own roles; may change."},
                *({"name": role, "description": text} for role, text in ROLES.items()),
            ],
        },
        "defaultContentType": "application/json",
        "servers": {
            "nats": {
                "host": "localhost:4222",
                "protocol": "nats",
                "description": "A NATS server with JetStream.",
            }
        },
        "channels": out_channels,
        "operations": operations,
        "components": {"messages": messages, "schemas": schemas},
    }


def _refs(payloads: tuple[Payload, ...], under: str = "") -> Any:
    """A channel's messages (by name, from ``components``), or an operation's (a list, from its channel)."""
    if not under:
        return {payload_name(p): {"$ref": f"#/components/messages/{payload_name(p)}"} for p in payloads}
    return [{"$ref": under + payload_name(p)} for p in payloads]


def _message(payload: Payload) -> dict[str, Any]:
    name = payload_name(payload)
    message: dict[str, Any] = {"name": name, "payload": {"$ref": f"#/components/schemas/{name}"}}
    if isinstance(payload, str):
        if name == "MemoryFile":
            message["contentType"] = "application/octet-stream"
        return message
    tag = payload.__struct_config__.tag
    message["title"] = tag if isinstance(tag, str) else name
    if payload.__doc__:
        message["summary"] = payload.__doc__.strip().split("\n\n")[0].replace("\n", " ").replace("``", "`")
    return message


__all__ = ["asyncapi_document"]
