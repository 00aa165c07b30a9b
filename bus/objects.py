"""The object-store layout the workspace writes (ADR-20, and staffwork's additions): workspace
paths and their checks, the metadata record each object has, its provenance headers, and the digest
format (SHA-256, base64url, as the NATS object store records it). ``bus/workspace.py`` is what reads
and writes them."""

from __future__ import annotations

import base64
import hashlib
import re

import msgspec

from bus.errors import InvalidPath

MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

H_SESSION = "Sw-Session"
H_THREAD = "Sw-Thread"
H_AGENT = "Sw-Agent"
H_TOOL = "Sw-Tool-Call"


def normalize_path(path: str) -> str:
    """Return the canonical relative form of a workspace path, or raise :class:`InvalidPath`.

    ``./a//`` is refused rather than guessed at: empty segments, ``..``, absolute paths, backslashes,
    NUL and other control characters, segments over 255 bytes and paths over 1024 bytes are errors.
    ``.`` segments are dropped (``./notes/a.md`` is ``notes/a.md``).
    """
    if not isinstance(path, str) or not path:
        raise InvalidPath(str(path), "the path is empty")
    if "\x00" in path:
        raise InvalidPath(path, "it contains a NUL byte")
    if control := _CONTROL.search(path):
        raise InvalidPath(path, f"it contains the control character U+{ord(control.group()):04X}")
    if "\\" in path:
        raise InvalidPath(path, "it contains a backslash; separate directories with '/'")
    if path.startswith("/") or re.match(r"^[A-Za-z]:", path):
        raise InvalidPath(path, "it is absolute; workspace paths are relative to the session's workspace")
    parts: list[str] = []
    for part in path.split("/"):
        if part == "":
            raise InvalidPath(path, "it has an empty segment ('//' or a trailing '/')")
        if part == ".":
            continue
        if part == "..":
            raise InvalidPath(path, "it escapes the workspace ('..' is not allowed)")
        if len(part.encode()) > MAX_SEGMENT_BYTES:
            raise InvalidPath(path, f"a segment is longer than {MAX_SEGMENT_BYTES} bytes")
        parts.append(part)
    if not parts:
        raise InvalidPath(path, "it names no file")
    normalized = "/".join(parts)
    if len(normalized.encode()) > MAX_PATH_BYTES:
        raise InvalidPath(path, f"it is longer than {MAX_PATH_BYTES} bytes")
    return normalized


class ObjectOptions(msgspec.Struct, omit_defaults=True):
    max_chunk_size: int | None = None


class ObjectInfo(msgspec.Struct, omit_defaults=True):
    """An object's metadata record, as the object-store layout (ADR-20) defines it."""

    name: str
    bucket: str
    nuid: str
    size: int = 0
    mtime: str = ""
    chunks: int = 0
    digest: str = ""
    deleted: bool = False
    description: str | None = None
    headers: dict[str, list[str]] | None = None
    options: ObjectOptions | None = None


info_decoder = msgspec.json.Decoder(ObjectInfo)
info_encoder = msgspec.json.Encoder()


def digest_text(raw: bytes) -> str:
    return "SHA-256=" + base64.urlsafe_b64encode(raw).decode()


def digest_of(data: bytes) -> str:
    return digest_text(hashlib.sha256(data).digest())


def header(headers: dict[str, list[str]] | None, key: str) -> str:
    values = (headers or {}).get(key) or []
    return values[0] if values else ""
