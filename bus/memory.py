"""Memory stores: named trees of small text files on JetStream, every change an immutable version.

A file's versions are the messages on ``<root>.mem.<store>.f.<path64>`` in the ``<key>_memory``
stream (no max age): the content as the body, ``Sw-Op``, ``Sw-Path``, ``Sw-Sha256`` and ``Sw-Writer``
as headers; a version's number is its stream sequence. An update that names the sha256 it replaces is
stored only if nobody changed the file since (:class:`MemoryConflict` otherwise). Stores are
registered in ``<key>_memstores``. The API is :class:`Memory`; the layout: docs/architecture.md,
"Memory stores".
"""

from __future__ import annotations

import base64
import builtins
import hashlib
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
import nats.errors
import nats.js.errors

from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import (
    BusError,
    BusTimeout,
    InvalidMemoryPath,
    InvalidPath,
    MemoryConflict,
    MemoryFileNotFound,
    MemoryStoreError,
    MemoryStoreExists,
    MemoryStoreNotFound,
    MemoryTooLarge,
    ServerRefused,
)
from bus.objects import normalize_path
from bus.state import last_per_subject
from bus.subjects import JetStreamApi
from schemas.memory import MAX_MEMORY_BYTES, MemoryFile, MemoryStoreInfo, MemoryVersion, Writer

_STORE_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_WRONG_LAST_SEQUENCE = (10071, 10164)  # JSStreamWrongLastSequenceErrF, ...ConstantErr
_DELETE_ATTEMPTS = 10  # an unconditional delete retries when a write slips in between

H_OP = "Sw-Op"
H_PATH = "Sw-Path"
H_SHA256 = "Sw-Sha256"
H_WRITER = "Sw-Writer"
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"

_info_decoder = msgspec.json.Decoder(MemoryStoreInfo)
_writer_decoder = msgspec.json.Decoder(Writer)
_UNKNOWN_WRITER = Writer(kind="user", user="?")


def sha256_hex(content: str) -> str:
    """The digest a precondition names: hex SHA-256 of the content's UTF-8 bytes."""
    return hashlib.sha256(content.encode()).hexdigest()


def _path_token(path: str) -> str:
    return base64.urlsafe_b64encode(path.encode()).decode().rstrip("=")


def _token_path(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def _writer(headers: dict[str, str]) -> Writer:
    raw = headers.get(H_WRITER)
    if not raw:
        return _UNKNOWN_WRITER
    try:
        return _writer_decoder.decode(raw)
    except msgspec.DecodeError:
        return _UNKNOWN_WRITER


def _time(headers: dict[str, str]) -> datetime:
    try:
        return datetime.fromisoformat(headers["Nats-Time-Stamp"])
    except (KeyError, ValueError):
        return datetime.fromtimestamp(0, UTC)


class _Latest(msgspec.Struct, frozen=True):
    """A file's last message: what a precondition is checked against."""

    seq: int
    deleted: bool
    sha256: str
    data: bytes
    headers: dict[str, str]


class Memory:
    """Every memory store of a root: create and list stores; write, read, list and delete files, and
    read their versions."""

    def __init__(self, bus: Bus, *, timeout: float = 30.0) -> None:
        self.bus = bus
        self.stream = bus.subjects.memory_stream
        self.bucket = bus.subjects.memory_stores_bucket
        self.timeout = timeout
        self._known: dict[str, MemoryStoreInfo] = {}  # stores are never removed: a hit stays valid

    # --- stores ---

    async def create(self, name: str, description: str = "") -> MemoryStoreInfo:
        """Register a new store; :class:`MemoryStoreExists` if the name is taken."""
        _check_name(name)
        info = MemoryStoreInfo(name=name, description=description, created=datetime.now(UTC))
        kv = await self.bus.kv(self.bucket)
        if not await kv.create(name, msgspec.json.encode(info)):
            raise MemoryStoreExists(name)
        self._known[name] = info
        return info

    async def stores(self) -> list[MemoryStoreInfo]:
        """Every registered store, by name."""
        found: list[MemoryStoreInfo] = []
        try:
            async for msg in last_per_subject(
                self.bus._js,
                JetStreamApi.kv_stream(self.bucket),
                JetStreamApi.kv_key(self.bucket),
                timeout=self.timeout,
            ):
                if (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE") or not msg.data:
                    continue
                try:
                    found.append(_info_decoder.decode(msg.data))
                except msgspec.DecodeError:
                    continue  # not written by us: not a store
        except nats.js.errors.NotFoundError as exc:
            raise self._unprovisioned() from exc
        return sorted(found, key=lambda info: info.name)

    async def info(self, name: str) -> MemoryStoreInfo:
        """The store's registration; :class:`MemoryStoreNotFound` (naming the known ones) if none."""
        _check_name(name)
        if (known := self._known.get(name)) is not None:
            return known
        kv = await self.bus.kv(self.bucket)
        raw = await kv.get(name)
        if raw is None:
            raise MemoryStoreNotFound(name, [store.name for store in await self.stores()])
        info = _info_decoder.decode(raw)
        self._known[name] = info
        return info

    # --- writing ---

    async def write(
        self,
        store: str,
        path: str,
        content: str,
        *,
        writer: Writer,
        expected_sha256: str | None = None,
    ) -> MemoryVersion:
        """Store ``content`` as the file's new version.

        ``expected_sha256`` is a precondition: the sha256 of the content this replaces (``""``: the
        file must not exist, or be deleted). When the file is no longer at that content, or another
        writer gets there first, :class:`MemoryConflict`. ``None``: no precondition, just append.
        """
        path = await self._locate(store, path)
        data = content.encode()
        if len(data) > MAX_MEMORY_BYTES:
            raise MemoryTooLarge(store, path, size=len(data), limit=MAX_MEMORY_BYTES)
        expected = None if expected_sha256 is None else _check_sha(store, path, expected_sha256)
        precondition: tuple[int, str] | None = None
        if expected is not None:
            latest = await self._latest(store, path)
            current = "" if latest is None or latest.deleted else latest.sha256
            if current != expected:
                raise MemoryConflict(store, path, expected=expected, actual=current)
            precondition = (latest.seq if latest is not None else 0, expected)
        digest = hashlib.sha256(data).hexdigest()
        headers = {H_OP: "write", H_PATH: path, H_SHA256: digest}
        seq = await self._append(store, path, data, headers, writer, precondition)
        return MemoryVersion(
            store=store,
            path=path,
            version=seq,
            op="write",
            sha256=digest,
            size=len(data),
            writer=writer,
            time=datetime.now(UTC),
        )

    async def delete(
        self, store: str, path: str, *, writer: Writer, expected_sha256: str | None = None
    ) -> MemoryVersion:
        """Delete the file: a new version with op ``delete`` (the old ones stay readable).

        :class:`MemoryFileNotFound` if there is no such file; :class:`MemoryConflict` if
        ``expected_sha256`` is given and the file is not at that content (or changes meanwhile).
        """
        path = await self._locate(store, path)
        expected = None if expected_sha256 is None else _check_sha(store, path, expected_sha256)
        for attempt in range(1, _DELETE_ATTEMPTS + 1):
            latest = await self._latest(store, path)
            if latest is None or latest.deleted:
                if expected:
                    raise MemoryConflict(store, path, expected=expected, actual="")
                raise MemoryFileNotFound(store, path, deleted=latest is not None)
            if expected is not None and latest.sha256 != expected:
                raise MemoryConflict(store, path, expected=expected, actual=latest.sha256)
            headers = {H_OP: "delete", H_PATH: path}
            try:
                # Even without a precondition, delete exactly the version read: of two concurrent
                # deletes one is stored, the other finds the file gone.
                seq = await self._append(store, path, b"", headers, writer, (latest.seq, latest.sha256))
            except MemoryConflict:
                if expected is not None or attempt == _DELETE_ATTEMPTS:
                    raise
                continue  # no precondition: someone wrote meanwhile; delete what is there now
            return MemoryVersion(
                store=store,
                path=path,
                version=seq,
                op="delete",
                sha256="",
                size=0,
                writer=writer,
                time=datetime.now(UTC),
            )
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def _append(
        self,
        store: str,
        path: str,
        data: bytes,
        headers: dict[str, str],
        writer: Writer,
        precondition: tuple[int, str] | None,
    ) -> int:
        """Publish a version. With a ``precondition`` (the sequence of the version read and its
        sha256; 0 and "" for no file) only if that is still the file's last message."""
        headers[H_WRITER] = msgspec.json.encode(writer).decode()
        if precondition is not None:
            headers[_EXPECTED_LAST] = str(precondition[0])
        subject = self.bus.subjects.memory_file(store, _path_token(path))
        try:
            return await self.bus.publish_bytes(subject, data, headers=headers, timeout=self.timeout)
        except ServerRefused as exc:
            if precondition is None or exc.err_code not in _WRONG_LAST_SEQUENCE:
                raise BusError(
                    f"storing {path!r} in memory store {store!r} failed: {exc.description}"
                ) from exc
            latest = await self._latest(store, path)  # another writer got there first: say what is there now
            actual = "" if latest is None or latest.deleted else latest.sha256
            raise MemoryConflict(store, path, expected=precondition[1], actual=actual) from exc

    # --- reading ---

    async def read(self, store: str, path: str, *, version: int | None = None) -> MemoryFile:
        """The file's latest content, or that of ``version`` (which must be a write of this file)."""
        path = await self._locate(store, path)
        if version is None:
            latest = await self._latest(store, path)
            if latest is None or latest.deleted:
                raise MemoryFileNotFound(store, path, deleted=latest is not None)
            seq, data, headers = latest.seq, latest.data, latest.headers
        else:
            data, headers = await self._version(store, path, version)
            seq = version
        return MemoryFile(
            store=store,
            path=path,
            content=data.decode(errors="replace"),
            sha256=hashlib.sha256(data).hexdigest(),
            version=seq,
            size=len(data),
            writer=_writer(headers),
            time=_time(headers),
        )

    async def list(self, store: str, prefix: str = "") -> builtins.list[MemoryVersion]:
        """The latest version of every live file whose path starts with ``prefix``, by path.

        ``""``, ``"."``, ``"./"`` and ``"/"`` all mean the whole store; ``notes/`` is a directory and
        ``notes/a`` matches ``notes/a.md`` and ``notes/ab/c.md``.
        """
        await self.info(store)
        stripped = prefix.strip("/")
        if stripped in ("", "."):
            prefix = ""
        else:
            prefix = _normalize(store, stripped) + ("/" if prefix.endswith("/") else "")
        head = self.bus.subjects.memory_file(store, "")
        found: builtins.list[MemoryVersion] = []
        try:
            async for msg in last_per_subject(
                self.bus._js,
                self.stream,
                self.bus.subjects.memory_files(store),
                headers_only=True,
                timeout=self.timeout,
            ):
                headers = msg.headers or {}
                if headers.get(H_OP) != "write":
                    continue
                path = _token_path(msg.subject[len(head) :])
                if not path.startswith(prefix):
                    continue
                found.append(
                    MemoryVersion(
                        store=store,
                        path=path,
                        version=msg.metadata.sequence.stream,
                        op="write",
                        sha256=headers.get(H_SHA256, ""),
                        size=int(headers.get("Nats-Msg-Size", "0")),
                        writer=_writer(headers),
                        time=msg.metadata.timestamp,
                    )
                )
        except nats.js.errors.NotFoundError as exc:
            raise self._unprovisioned() from exc
        found.sort(key=lambda v: v.path)
        return found

    async def versions(self, store: str, path: str | None = None) -> builtins.list[MemoryVersion]:
        """Every version of one file (:class:`MemoryFileNotFound` if it never existed), or of every
        file of the store, oldest first."""
        if path is None:
            await self.info(store)
            subject = self.bus.subjects.memory_files(store)
        else:
            path = await self._locate(store, path)
            subject = self.bus.subjects.memory_file(store, _path_token(path))
        head = self.bus.subjects.memory_file(store, "")
        found: builtins.list[MemoryVersion] = []
        async for msg in read_subject(self.bus, self.stream, subject, timeout=self.timeout):
            deleted = msg.headers.get(H_OP) == "delete"
            found.append(
                MemoryVersion(
                    store=store,
                    path=_token_path(msg.subject[len(head) :]),
                    version=msg.seq,
                    op="delete" if deleted else "write",
                    sha256="" if deleted else hashlib.sha256(msg.data).hexdigest(),
                    size=len(msg.data),
                    writer=_writer(msg.headers),
                    time=_time(msg.headers),
                )
            )
        if path is not None and not found:
            raise MemoryFileNotFound(store, path)
        return found

    # --- internals ---

    async def _locate(self, store: str, path: str) -> str:
        """Check the store exists and return the path's canonical form."""
        await self.info(store)
        return _normalize(store, path)

    async def _latest(self, store: str, path: str) -> _Latest | None:
        subject = self.bus.subjects.memory_file(store, _path_token(path))
        raw = await self._direct_get(subject=subject)
        if raw is None:
            return None
        headers: dict[str, str] = raw.headers or {}
        data: bytes = raw.data or b""
        deleted = headers.get(H_OP) == "delete"
        return _Latest(
            seq=int(raw.seq or 0),
            deleted=deleted,
            sha256="" if deleted else hashlib.sha256(data).hexdigest(),
            data=data,
            headers=headers,
        )

    async def _version(self, store: str, path: str, version: int) -> tuple[bytes, dict[str, str]]:
        """The body and headers of ``version``, which must be a write of ``path`` in ``store``."""
        if version < 1:
            raise MemoryFileNotFound(store, path, version=version)
        raw = await self._direct_get(seq=version)
        subject = self.bus.subjects.memory_file(store, _path_token(path))
        if raw is None or raw.subject != subject:
            raise MemoryFileNotFound(store, path, version=version)
        headers: dict[str, str] = raw.headers or {}
        if headers.get(H_OP) == "delete":
            raise MemoryFileNotFound(store, path, version=version, deleted=True)
        return raw.data or b"", headers

    async def _direct_get(self, *, subject: str | None = None, seq: int | None = None) -> Any:
        """The last message on ``subject``, or the message at ``seq`` (a RawStreamMsg); None if none."""
        try:
            return await self.bus._js.get_msg(self.stream, seq=seq, subject=subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        except nats.errors.NoRespondersError as exc:
            raise self._unprovisioned() from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            where = subject or f"{self.stream} sequence {seq}"
            raise BusTimeout("read a memory file", where, self.bus.api_timeout) from exc

    def _unprovisioned(self) -> BusError:
        return BusError(
            f"memory stores (stream {self.stream!r}, bucket {self.bucket!r}) do not exist: "
            f"was the bus provisioned for root {self.bus.subjects.root!r}?"
        )


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not _STORE_NAME.match(name):
        raise MemoryStoreError(
            f"invalid memory store name {name!r}: use a lower-case letter, then up to 47 lower-case "
            "letters, digits, '_' or '-'"
        )


def _check_sha(store: str, path: str, expected: str) -> str:
    if expected == "":
        return ""
    normalized = expected.strip().lower()
    if not _SHA256.match(normalized):
        raise MemoryStoreError(
            f"precondition for {path!r} in memory store {store!r}: {expected!r} is not a sha256 "
            "(64 hex digits; '' means the file must not exist)"
        )
    return normalized


def _normalize(store: str, path: str) -> str:
    """The path's canonical form (as the workspace's: relative, '/'-separated), or
    :class:`InvalidMemoryPath` in the store's own words."""
    if isinstance(path, str) and (path.startswith("/") or re.match(r"^[A-Za-z]:", path)):
        raise InvalidMemoryPath(store, path, "it is absolute; memory paths are relative to the store")
    if isinstance(path, str) and ".." in path.split("/"):
        raise InvalidMemoryPath(store, path, "it escapes the store ('..' is not allowed)")
    try:
        return normalize_path(path)
    except InvalidPath as exc:
        raise InvalidMemoryPath(store, str(path), exc.reason) from exc
