"""staffwork's wire types as one JSON Schema (2020-12) document that code generators can use.

:func:`json_schema` is what ``staffwork schema`` prints: a root that validates any message on the
bus (``oneOf`` the messages, discriminated on ``type``), every type under ``$defs``. The rules:

- **Names.** A message's definition is named after its wire tag, each part capitalised and the
  version kept: ``session.submit.v1`` is ``SessionSubmitV1``, ``span.model_request_end.v1``
  ``SpanModelRequestEndV1``. Every other struct keeps its class name (``Usage``, ``TeamSpec``).
- **Required.** msgspec sends every field, so whatever staffwork produces has every field required.
  A struct an outside caller (or a person writing a team file) may produce, i.e. one reachable from
  :data:`INBOUND`, requires only its fields without a default; so does a struct that omits defaults
  when it is encoded (``omit_defaults``). A nested struct reachable from both kinds is lenient.
- **Descriptions.** A struct's docstring is its ``description``; the ``#:`` comment above a field is
  its property's. The ``type`` tag is a ``const``; a ``datetime`` is a ``date-time`` string.

:func:`definitions` does the same for any structs (the AsyncAPI catalogue adds the bus's own).
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from typing import Any

import msgspec
from msgspec import inspect as mi

from schemas.conversation import ThreadTurn
from schemas.dream import DreamAnswer, DreamCancel, DreamRecord, DreamRequest
from schemas.errors import StaffworkError
from schemas.session import SessionCancel, SessionInterrupt, SessionMessage, SessionSubmit
from schemas.team import TeamSpec
from schemas.thread import CustomToolResult, ToolConfirmation
from schemas.trace import (
    AnyTraceEvent,
    EventsAnswer,
    EventsQuery,
    ProvenanceAnswer,
    ProvenanceQuery,
    QueryFailed,
    SessionsAnswer,
    SessionsQuery,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"
DEFS = "#/$defs/"

#: What outside callers publish (and a team file, which people write): only fields without a
#: default are required in these and in every struct they contain.
INBOUND: tuple[type[msgspec.Struct], ...] = (
    SessionSubmit,
    SessionMessage,
    SessionCancel,
    SessionInterrupt,
    CustomToolResult,
    ToolConfirmation,
    SessionsQuery,
    EventsQuery,
    ProvenanceQuery,
    DreamRequest,
    DreamCancel,
    TeamSpec,
)
#: Messages of the runtime's own traffic beyond the public ones: a thread's history entries, the
#: dreamer's requests, the trace collector's queries and answers.
INTERNAL_MESSAGES: tuple[type[msgspec.Struct], ...] = (
    ThreadTurn,
    DreamRequest,
    DreamCancel,
    SessionsQuery,
    EventsQuery,
    ProvenanceQuery,
    SessionsAnswer,
    EventsAnswer,
    ProvenanceAnswer,
    QueryFailed,
)
#: Untagged payloads that travel too: a dream's record (on ``<root>.sys.dream.done.<id>``) and the
#: dreamer's answer; and the team file.
PAYLOADS: tuple[type[msgspec.Struct], ...] = (TeamSpec, DreamRecord, DreamAnswer)


def bus_messages() -> tuple[type[msgspec.Struct], ...]:
    """Every tagged message on the bus: the public ones first, then the runtime's own."""
    from schemas import PUBLIC_MESSAGES  # the package imports this module

    return tuple(dict.fromkeys([*PUBLIC_MESSAGES, *INTERNAL_MESSAGES, *AnyTraceEvent.__args__]))


def def_name(cls: type[msgspec.Struct]) -> str:
    """A struct's name under ``$defs``: ``SessionSubmitV1`` for ``session.submit.v1``, else its class's."""
    tag = cls.__struct_config__.tag
    if isinstance(tag, str) and re.fullmatch(r"[a-z0-9_.]+\.v\d+", tag):
        return "".join(part[:1].upper() + part[1:] for part in re.split(r"[._]", tag))
    return cls.__name__


def json_schema(tag: str | None = None, *, team: bool = False) -> dict[str, Any]:
    """The document ``staffwork schema`` prints: every message (or, with ``tag``, one message; with
    ``team``, the team file) as a root schema, its types under ``$defs``.

    :class:`StaffworkError` for a tag no message has, naming the known ones."""
    messages = bus_messages()
    defs = definitions([*messages, *PAYLOADS])
    if team:
        return _root(def_name(TeamSpec), defs, title="staffwork team file")
    if tag is not None:
        by_tag = {str(cls.__struct_config__.tag): cls for cls in messages}
        if tag not in by_tag:
            raise StaffworkError(f"no message with tag {tag!r} (known: {', '.join(sorted(by_tag))})")
        return _root(def_name(by_tag[tag]), defs, title=tag)
    refs = [{"$ref": DEFS + def_name(cls)} for cls in messages]
    mapping = {str(cls.__struct_config__.tag): DEFS + def_name(cls) for cls in messages}
    return {
        "$schema": DIALECT,
        "title": "staffwork message",
        "description": "Any message staffwork sends or accepts on NATS, told apart by its `type`.",
        "oneOf": refs,
        "discriminator": {"propertyName": "type", "mapping": mapping},
        "$defs": defs,
    }


def _root(name: str, defs: dict[str, Any], *, title: str) -> dict[str, Any]:
    used = _reachable(name, defs)
    return {
        "$schema": DIALECT,
        "title": title,
        "$ref": DEFS + name,
        "$defs": {key: value for key, value in defs.items() if key in used},
    }


def _reachable(name: str, defs: dict[str, Any]) -> set[str]:
    seen: set[str] = set()
    todo = [name]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo.extend(ref[len(DEFS) :] for ref in _refs(defs[current]))
    return seen


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def definitions(types: Iterable[type[msgspec.Struct]], *, prefix: str = DEFS) -> dict[str, Any]:
    """The schema of ``types`` and every struct they contain, by :func:`def_name`, with references
    written as ``<prefix><name>``: required fields, ``const`` tags, descriptions and formats set."""
    types = list(types)
    structs = {cls: None for t in types for cls in _structs(mi.type_info(t))}
    names = {cls.__name__: def_name(cls) for cls in structs}
    if len(set(names.values())) != len(names) or len(names) != len(structs):
        raise ValueError(f"two structs share a name in the schema: {sorted(names)}")
    lenient = {cls for t in INBOUND if t in structs for cls in _structs(mi.type_info(t))}
    _, components = msgspec.json.schema_components(types, ref_template="#/$defs/{name}")
    out: dict[str, Any] = {}
    for cls in structs:
        schema = components[cls.__name__]
        _finish(cls, schema, lenient=cls in lenient or cls.__struct_config__.omit_defaults)
        out[names[cls.__name__]] = _rename(schema, names, prefix)
    return out


def _structs(node: mi.Type, seen: set[type] | None = None) -> Iterator[type[msgspec.Struct]]:
    """Every struct class in a type, itself included, each once."""
    seen = set() if seen is None else seen
    if isinstance(node, mi.StructType):
        if node.cls in seen:
            return
        seen.add(node.cls)
        yield node.cls
        for field in node.fields:
            yield from _structs(field.type, seen)
        return
    for attr in ("type", "types", "item_type", "item_types", "key_type", "value_type"):
        child = getattr(node, attr, None)
        for each in child if isinstance(child, tuple) else [child]:
            if isinstance(each, mi.Type):
                yield from _structs(each, seen)


def _finish(cls: type[msgspec.Struct], schema: dict[str, Any], *, lenient: bool) -> None:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    schema["title"] = def_name(cls)
    if cls.__doc__ and cls.__doc__ != _inherited_doc(cls):
        schema["description"] = _prose(inspect.cleandoc(cls.__doc__))
    else:
        schema.pop("description", None)
    properties: dict[str, Any] = schema.setdefault("properties", {})
    config = cls.__struct_config__
    if isinstance(config.tag_field, str) and config.tag is not None:
        properties[config.tag_field] = {
            "type": "string",
            "const": config.tag,
            "description": f"What the message is, and its version: always `{config.tag}`.",
        }
    for field in info.fields:
        prop = properties[field.encode_name]
        if _is_datetime(field.type):
            _set_format(prop)
        comment = field_comment(cls, field.name)
        if comment:
            prop["description"] = comment
    required = [name for name in properties if name not in {f.encode_name for f in info.fields}]
    required += [f.encode_name for f in info.fields if f.required or not lenient]
    schema["required"] = required


def _inherited_doc(cls: type) -> str | None:
    return next((base.__doc__ for base in cls.__mro__[1:] if base.__doc__), None)


def _is_datetime(node: mi.Type) -> bool:
    if isinstance(node, mi.DateTimeType):
        return True
    if isinstance(node, mi.Metadata):
        return _is_datetime(node.type)
    return isinstance(node, mi.UnionType) and any(_is_datetime(t) for t in node.types)


def _set_format(prop: dict[str, Any]) -> None:
    if prop.get("type") == "string":
        prop["format"] = "date-time"
    for each in prop.get("anyOf", []):
        _set_format(each)


def _rename(node: Any, names: dict[str, str], prefix: str) -> Any:
    if isinstance(node, dict):
        return {key: _rename(value, names, prefix) for key, value in node.items()}
    if isinstance(node, list):
        return [_rename(item, names, prefix) for item in node]
    if isinstance(node, str) and node.startswith(DEFS) and node[len(DEFS) :] in names:
        return prefix + names[node[len(DEFS) :]]
    return node


def field_comment(cls: type, field: str) -> str:
    """The ``#:`` comment above ``field`` where ``cls`` (or the base that declares it) declares it."""
    for owner in cls.__mro__:
        if field in vars(owner).get("__annotations__", {}):
            return _comments(owner.__module__).get((owner.__qualname__, field), "")
    return ""


@cache
def _comments(module: str) -> dict[tuple[str, str], str]:
    """Every ``#:`` comment above a field of a class in ``module``: (class, field) → its text."""
    source = inspect.getsource(sys.modules[module])
    lines = source.splitlines()
    found: dict[tuple[str, str], str] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        for statement in node.body:
            if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
                above: list[str] = []
                row = statement.lineno - 2
                while row >= 0 and lines[row].strip().startswith("#:"):
                    above.insert(0, lines[row].strip()[2:].strip())
                    row -= 1
                if above:
                    found[(node.name, statement.target.id)] = _prose(" ".join(above))
    return found


def _prose(text: str) -> str:
    """reStructuredText's markup as Markdown: ``x`` and :class:`X` become `x` and `X`."""
    return re.sub(r":\w+:`~?([^`]*)`", r"`\1`", text).replace("``", "`")


__all__ = ["DEFS", "DIALECT", "INBOUND", "bus_messages", "def_name", "definitions", "json_schema"]
