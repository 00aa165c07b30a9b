"""The shared filesystem: each session's workspace as objects ``<session>/<path>`` in a JetStream
object store, written in the standard object-store layout (any NATS client or ``nats object get``
reads them) and read with a fast path of our own: batched direct gets, streamed to the caller and
checked against the recorded size and SHA-256 at the end. Writes publish chunks pipelined.

Who wrote a file (session, thread, agent, tool call) is stored in the object's headers and comes back
with :meth:`Workspace.stat`. Why not nats-py's object store: docs/architecture.md, "Decisions".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import os
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, BinaryIO

import msgspec
import nats.errors
import nats.js.errors

from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import (
    BusError,
    BusTimeout,
    FileChanged,
    FileNotFound,
    IntegrityError,
    InvalidPath,
    NoResponders,
)
from bus.objects import (
    H_AGENT,
    H_SESSION,
    H_THREAD,
    H_TOOL,
    ObjectInfo,
    ObjectOptions,
    digest_of,
    digest_text,
    header,
    info_decoder,
    info_encoder,
    normalize_path,
)
from bus.state import last_per_subject
from bus.subjects import JetStreamApi, check_token
from schemas.files import FileInfo, Provenance

DEFAULT_CHUNK_SIZE = 256 * 1024
_PIPELINE = 32  # chunk publishes in flight at once
# Chunks per direct-get request, and file streams at once per connection: together they bound what
# the server may have in flight towards one client (16 x 256 KiB x 4 = 16 MiB), far below the point
# where it drops a client as a slow consumer (64 MiB pending by default).
_BATCH = 16
_STREAMS = 4
_LIST_BATCH = 256
#: Whole content from this size up is stored by content (see Workspace.put); smaller files cost as
#: little to copy as to look up.
SHARE_MIN_BYTES = 64 * 1024
SHARED_PREFIX = "sha256-"  # the nuid of chunks stored by content: sha256-<hex digest>
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_WRONG_LAST_SEQUENCE = 10071
_WRITER_STALL = 1.0  # seconds without a new chunk after which another writer is taken for dead


class _Claimed(Exception):
    """Another writer stored the first chunk of a shared subject first."""


class Workspace:
    """Files of every session, in one object-store bucket (by default the root's ``<key>_files``)."""

    def __init__(
        self,
        bus: Bus,
        bucket: str | None = None,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        timeout: float = 30.0,
    ) -> None:
        self.bus = bus
        self.bucket = bucket or bus.subjects.files_bucket
        self.stream = JetStreamApi.object_stream(self.bucket)
        self.chunk_size = chunk_size
        self.timeout = timeout

    # --- naming ---

    def _name(self, session_id: str, path: str) -> tuple[str, str]:
        check_token(session_id, "session id")
        normalized = normalize_path(path)
        return f"{session_id}/{normalized}", normalized

    def _meta_subject(self, name: str) -> str:
        return f"$O.{self.bucket}.M.{base64.urlsafe_b64encode(name.encode()).decode()}"

    def _index_subject(self, name: str) -> str:
        session_id, path = name.split("/", 1)
        return f"$O.{self.bucket}.S.{session_id}.{base64.urlsafe_b64encode(path.encode()).decode()}"

    def _chunk_subject(self, nuid: str) -> str:
        return f"$O.{self.bucket}.C.{nuid}"

    # --- metadata ---

    async def _info(self, name: str) -> ObjectInfo | None:
        subject = self._meta_subject(name)
        try:
            raw = await self.bus._js.get_last_msg(self.stream, subject, direct=True)
        except nats.js.errors.NotFoundError:
            return None
        except nats.errors.NoRespondersError as exc:
            raise self._missing_bucket() from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise BusTimeout("read object metadata", subject, self.bus.api_timeout) from exc
        if not raw.data:
            return None
        return info_decoder.decode(raw.data)

    def _missing_bucket(self) -> BusError:
        return BusError(
            f"the shared filesystem (object store {self.bucket!r}) does not exist: "
            f"was the bus provisioned for root {self.bus.subjects.root!r}?"
        )

    async def _purge(self, subject: str) -> None:
        try:
            await self.bus._js.purge_stream(self.stream, subject=subject)
        except nats.js.errors.NotFoundError as exc:
            raise self._missing_bucket() from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise BusTimeout("purge", subject, self.bus.api_timeout) from exc

    def _file_info(self, session_id: str, info: ObjectInfo) -> FileInfo:
        path = info.name.split("/", 1)[1]
        try:
            modified = datetime.fromisoformat(info.mtime.replace("Z", "+00:00"))
        except ValueError:
            modified = datetime.fromtimestamp(0, UTC)
        return FileInfo(
            path=path,
            size=info.size,
            digest=info.digest,
            modified=modified,
            provenance=Provenance(
                session_id=header(info.headers, H_SESSION) or session_id,
                thread_id=header(info.headers, H_THREAD),
                agent=header(info.headers, H_AGENT),
                tool_call_id=header(info.headers, H_TOOL),
            ),
        )

    async def stat(self, session_id: str, path: str) -> FileInfo:
        """The file's size, digest, modification time and provenance."""
        name, normalized = self._name(session_id, path)
        info = await self._info(name)
        if info is None or info.deleted:
            raise FileNotFound(session_id, normalized)
        return self._file_info(session_id, info)

    async def exists(self, session_id: str, path: str) -> bool:
        name, _ = self._name(session_id, path)
        info = await self._info(name)
        return info is not None and not info.deleted

    # --- writing ---

    async def put(
        self,
        session_id: str,
        path: str,
        data: bytes | str | BinaryIO,
        *,
        provenance: Provenance | None = None,
    ) -> FileInfo:
        """Write (or replace) a file. ``data`` may be bytes, text (UTF-8) or a binary file object.

        Content given whole (bytes or text) of ``SHARE_MIN_BYTES`` or more is stored by content: its
        chunks go to a subject named by its SHA-256, so the same input given to many sessions is
        stored once and each session's object (its own name, metadata and provenance) points to it.
        """
        name, _ = self._name(session_id, path)
        prov = provenance or Provenance(session_id=session_id)
        previous = await self._info(name)
        whole = data.encode() if isinstance(data, str) else data
        if isinstance(whole, bytes) and len(whole) >= SHARE_MIN_BYTES:
            info = await self._put_shared(name, whole, prov)
        else:
            reader = io.BytesIO(whole) if isinstance(whole, bytes) else whole
            info = await self._write(name, reader, os.urandom(16).hex(), prov)
        if previous is not None and not previous.deleted and previous.nuid != info.nuid:
            await self._release(previous)
        return self._file_info(session_id, info)

    async def _put_shared(self, name: str, data: bytes, provenance: Provenance) -> ObjectInfo:
        """Store ``data`` under its content's subject: reuse the chunks if they are all there, claim
        the subject if it is empty, else (another writer is at it, or one died half way) write a
        private copy as usual."""
        nuid = SHARED_PREFIX + hashlib.sha256(data).hexdigest()
        chunks = max(1, -(-len(data) // self.chunk_size))
        stored = await self._stored_chunks(nuid)
        if stored == 0:
            try:
                return await self._write(name, io.BytesIO(data), nuid, provenance, claim=True)
            except _Claimed:
                stored = await self._stored_chunks(nuid)
        if 0 < stored < chunks:
            stored = await self._await_writer(nuid, stored, chunks)
        if stored == chunks:
            return await self._record(name, nuid, len(data), chunks, digest_of(data), provenance)
        return await self._write(name, io.BytesIO(data), os.urandom(16).hex(), provenance)

    async def _await_writer(self, nuid: str, stored: int, chunks: int) -> int:
        """Another writer is storing the same content: wait while its chunks keep coming (each
        ``_WRITER_STALL`` seconds must bring one, or it is taken for dead), at most ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        moved = loop.time()
        while stored < chunks and loop.time() < deadline and loop.time() - moved < _WRITER_STALL:
            await asyncio.sleep(0.02)  # a count on the server: nothing to subscribe to
            now = await self._stored_chunks(nuid)
            if now != stored:
                stored, moved = now, loop.time()
        return stored

    async def _stored_chunks(self, nuid: str) -> int:
        """How many chunks the subject of ``nuid`` holds."""
        subject = self._chunk_subject(nuid)
        try:
            info = await self.bus._js.stream_info(self.stream, subjects_filter=subject)
        except nats.js.errors.NotFoundError as exc:
            raise self._missing_bucket() from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise BusTimeout("count stored chunks", subject, self.bus.api_timeout) from exc
        return int((info.state.subjects or {}).get(subject, 0))

    async def _write(
        self, name: str, reader: BinaryIO, nuid: str, provenance: Provenance, *, claim: bool = False
    ) -> ObjectInfo:
        """Write the chunks under ``nuid``, then the metadata. With ``claim``, the first chunk is
        stored only if the subject is still empty (:class:`_Claimed` if another writer was first)."""
        blocking = not isinstance(reader, io.BytesIO)
        chunk_subject = self._chunk_subject(nuid)
        digest = hashlib.sha256()
        size = chunks = 0
        pending: list[asyncio.Future[Any]] = []
        loop = asyncio.get_running_loop()
        meta_sent = False
        try:
            while True:
                block = (
                    await loop.run_in_executor(None, reader.read, self.chunk_size)
                    if blocking
                    else reader.read(self.chunk_size)
                )
                if not block:
                    break
                digest.update(block)
                size += len(block)
                chunks += 1
                if claim and chunks == 1:
                    await self._claim(chunk_subject, block)
                    claim = False  # the subject is ours: from here on, as any write
                    continue
                pending.append(await self.bus._js.publish_async(chunk_subject, block))
                if len(pending) >= _PIPELINE:
                    await self._await_acks(pending[: _PIPELINE // 2], chunk_subject)
                    del pending[: _PIPELINE // 2]
            await self._await_acks(pending, chunk_subject)
            pending.clear()
            meta_sent = True
            return await self._record(name, nuid, size, chunks, digest_text(digest.digest()), provenance)
        except _Claimed:
            raise  # nothing of ours was stored
        except BaseException:
            for future in pending:
                future.cancel()
            if claim:  # failed before the shared subject was ours: it may hold another's chunks
                raise
            with contextlib.suppress(Exception):
                # The metadata may have been stored although its ack never came: then the new
                # chunks are the file now, and purging them would lose both versions.
                current = await self._info(name) if meta_sent else None
                if current is None or current.nuid != nuid:
                    await self._purge(chunk_subject)
            raise

    async def _claim(self, subject: str, block: bytes) -> None:
        """Store the first chunk on ``subject`` only if the subject is empty."""
        try:
            await self.bus._js.publish(subject, block, timeout=self.timeout, headers={_EXPECTED_LAST: "0"})
        except nats.js.errors.APIError as exc:
            if exc.err_code == _WRONG_LAST_SEQUENCE:
                raise _Claimed(subject) from exc
            raise BusError(f"storing file chunks failed: {exc.description}") from exc
        except (nats.errors.TimeoutError, TimeoutError) as exc:
            raise BusTimeout("store file chunks", subject, self.timeout) from exc

    async def _record(
        self, name: str, nuid: str, size: int, chunks: int, digest: str, prov: Provenance
    ) -> ObjectInfo:
        """Store the object's metadata (the file exists from then on)."""
        headers = {H_SESSION: [prov.session_id or name.split("/", 1)[0]]}
        for key, value in ((H_THREAD, prov.thread_id), (H_AGENT, prov.agent), (H_TOOL, prov.tool_call_id)):
            if value:
                headers[key] = [value]
        info = ObjectInfo(
            name=name,
            bucket=self.bucket,
            nuid=nuid,
            size=size,
            mtime=datetime.now(UTC).isoformat(),
            chunks=chunks,
            digest=digest,
            headers=headers,
            options=ObjectOptions(max_chunk_size=self.chunk_size),
        )
        await self._store_meta(info)
        return info

    async def _store_meta(self, info: ObjectInfo) -> None:
        """Store an object's metadata and its session index entry (the same record), pipelined:
        both are on the same stream and connection, so they are stored in this order."""
        record = info_encoder.encode(info)
        headers = {"Nats-Rollup": "sub"}
        acks = [
            await self.bus._js.publish_async(subject, record, headers=headers)
            for subject in (self._meta_subject(info.name), self._index_subject(info.name))
        ]
        await self._await_acks(acks[:1], self._meta_subject(info.name))  # both are sent already
        try:
            await self._await_acks(acks[1:], self._index_subject(info.name))
        except BusError as exc:
            if isinstance(exc.__cause__, nats.js.errors.NoStreamResponseError):
                # the file is stored, its index entry is not: a store older than the index
                raise BusError(
                    f"the shared filesystem {self.bucket!r} has no session index (a store made by an "
                    "older staffwork): provision it again (staffwork run, or any actor's start, does)"
                ) from exc
            raise

    async def reindex(self) -> int:
        """Write every live object's session index entry from its metadata (a store made before the
        index existed); how many were written."""
        written = 0
        async for data in self._last_per_subject(f"$O.{self.bucket}.M.>"):
            info = info_decoder.decode(data)
            if "/" not in info.name or info.deleted:
                continue
            written += await self._index_if_absent(info.name, data)
        return written

    async def _index_if_absent(self, name: str, record: bytes) -> bool:
        """Write an object's session index entry unless it has one: a put meanwhile may have written
        a newer entry than ``record``. Whether it was written."""
        headers = {"Nats-Rollup": "sub", _EXPECTED_LAST: "0"}
        try:
            await self.bus._js.publish(self._index_subject(name), record, headers=headers)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _WRONG_LAST_SEQUENCE:
                raise BusError(f"indexing {name!r} failed: {exc.description}") from exc
            return False
        return True

    async def adopt(self, session_id: str, paths: list[str]) -> list[str]:
        """Make the session's files ``paths`` listable, also those another NATS client put in the
        standard object-store layout (named ``<session>/<path>``, with no session index entry);
        return the paths that are not there (or not valid paths), in the order given."""
        check_token(session_id, "session id")
        indexed: set[str] = set()
        try:
            index = JetStreamApi.object_index(self.bucket, session_id)
            async for stored in read_subject(self.bus, self.stream, index, batch=_LIST_BATCH):
                entry = info_decoder.decode(stored.data)
                (indexed.discard if entry.deleted else indexed.add)(entry.name)
        except NoResponders as exc:
            raise self._missing_bucket() from exc
        missing: list[str] = []
        for path in paths:
            try:
                name, _ = self._name(session_id, path)
            except InvalidPath:
                missing.append(path)
                continue
            if name in indexed:
                continue
            info = await self._info(name)
            if info is None or info.deleted:
                missing.append(path)
                continue
            await self._index_if_absent(name, info_encoder.encode(info))
        return missing

    async def _release(self, old: ObjectInfo) -> None:
        """Purge the chunks of a replaced or deleted version, unless other objects share them."""
        if old.nuid.startswith(SHARED_PREFIX):
            async for data in self._last_per_subject(f"$O.{self.bucket}.M.>"):
                other = info_decoder.decode(data)
                if other.nuid == old.nuid and other.name != old.name and not other.deleted:
                    return
        await self._purge(self._chunk_subject(old.nuid))

    async def _await_acks(self, futures: list[asyncio.Future[Any]], subject: str) -> None:
        if not futures:
            return
        try:
            async with asyncio.timeout(self.timeout):
                await asyncio.gather(*futures)
        except TimeoutError as exc:
            raise BusTimeout("store file chunks", subject, self.timeout) from exc
        except nats.js.errors.NoStreamResponseError as exc:
            raise self._missing_bucket() from exc
        except nats.js.errors.APIError as exc:
            raise BusError(f"storing file chunks failed: {exc.description}") from exc

    async def delete(self, session_id: str, path: str) -> None:
        """Delete a file (its metadata becomes a tombstone, its chunks are purged)."""
        name, normalized = self._name(session_id, path)
        info = await self._info(name)
        if info is None or info.deleted:
            raise FileNotFound(session_id, normalized)
        tombstone = msgspec.structs.replace(
            info, deleted=True, size=0, chunks=0, digest="", mtime=datetime.now(UTC).isoformat()
        )
        await self._store_meta(tombstone)
        await self._release(info)

    # --- reading ---

    async def open(self, session_id: str, path: str) -> AsyncIterator[bytes]:
        """Stream a file's content chunk by chunk; raises :class:`IntegrityError` at the end if the
        content does not match the recorded size and digest."""
        name, normalized = self._name(session_id, path)
        info = await self._info(name)
        if info is None or info.deleted:
            raise FileNotFound(session_id, normalized)
        return self._chunks(info, normalized)

    async def _chunks(self, info: ObjectInfo, path: str) -> AsyncIterator[bytes]:
        digest = hashlib.sha256()
        received = size = 0
        chunks = read_subject(
            self.bus,
            self.stream,
            self._chunk_subject(info.nuid),
            limit=info.chunks,
            batch=_BATCH,
            timeout=self.timeout,
            pending_bytes=max(256 * 1024 * 1024, 4 * _BATCH * self.chunk_size),
        )
        async with self.bus.stream_slots(_STREAMS):
            async for stored in chunks:
                block = stored.data
                digest.update(block)
                received += 1
                size += len(block)
                yield block
        if received != info.chunks or size != info.size:
            now = await self._info(info.name)
            if now is None or now.deleted or now.nuid != info.nuid:
                raise FileChanged(path)
            raise IntegrityError(
                path, f"expected {info.size} bytes in {info.chunks} chunks, read {size} in {received}"
            )
        if digest_text(digest.digest()) != info.digest:
            raise IntegrityError(path, f"SHA-256 does not match the recorded {info.digest}")

    async def get(self, session_id: str, path: str) -> bytes:
        """Read a whole file, digest-checked. A file replaced while being read is read again."""
        for _ in range(2):
            with contextlib.suppress(FileChanged):
                return b"".join([block async for block in await self.open(session_id, path)])
        return b"".join([block async for block in await self.open(session_id, path)])

    async def read_text(self, session_id: str, path: str) -> str:
        return (await self.get(session_id, path)).decode("utf-8", errors="replace")

    # --- listing ---

    async def list(self, session_id: str, prefix: str = "") -> list[FileInfo]:
        """Files of a session whose path starts with ``prefix`` (a directory or any leading text).

        ``""``, ``"."``, ``"./"`` and ``"/"`` all mean the whole workspace.
        """
        check_token(session_id, "session id")
        stripped = prefix.strip("/")
        if stripped in ("", "."):
            prefix = ""
        else:
            prefix = normalize_path(stripped) + ("/" if prefix.endswith("/") else "")
        wanted = f"{session_id}/{prefix}"
        # Each index subject holds one message (every entry rolls up its subject's earlier ones), so
        # the session's entries are read with batched direct gets, no consumer; an entry replaced
        # during the read is seen twice, and the later one wins.
        latest: dict[str, bytes] = {}
        index = JetStreamApi.object_index(self.bucket, session_id)
        try:
            async for stored in read_subject(self.bus, self.stream, index, batch=_LIST_BATCH):
                latest[stored.subject] = stored.data
        except NoResponders as exc:
            raise self._missing_bucket() from exc
        files: list[FileInfo] = []
        for data in latest.values():
            info = info_decoder.decode(data)
            if not info.deleted and info.name.startswith(wanted):
                files.append(self._file_info(session_id, info))
        files.sort(key=lambda f: f.path)
        return files

    async def _last_per_subject(self, filter_subject: str) -> AsyncIterator[bytes]:
        """The last message of every subject matching ``filter_subject`` (each object's metadata)."""
        try:
            latest = last_per_subject(self.bus._js, self.stream, filter_subject, timeout=self.timeout)
            async for msg in latest:
                yield msg.data
        except nats.js.errors.NotFoundError as exc:
            raise self._missing_bucket() from exc
