"""The shared filesystem on the object store: paths, provenance, listing, integrity, large files."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import re
from typing import Any

import pytest
from nats.aio.client import Client as NATS

from bus.connection import Bus
from bus.errors import (
    BusError,
    BusTimeout,
    ConfigError,
    FileChanged,
    FileNotFound,
    IntegrityError,
    InvalidPath,
)
from bus.objects import normalize_path
from bus.provision import covers, provision
from bus.workspace import Workspace
from schemas import Provenance

SID = "ses_ws"


@pytest.mark.parametrize(
    ("path", "normalized"),
    [
        ("report.md", "report.md"),
        ("./notes/a.md", "notes/a.md"),
        ("a/./b", "a/b"),
        ("dir/ü ñ.txt", "dir/ü ñ.txt"),
    ],
)
def test_normalize_accepts(path: str, normalized: str) -> None:
    assert normalize_path(path) == normalized


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "the path is empty"),
        ("../etc/passwd", "escapes the workspace"),
        ("a/../../b", "escapes the workspace"),
        ("a/..", "escapes the workspace"),
        ("/etc/passwd", "it is absolute"),
        ("C:/Windows", "it is absolute"),
        ("a//b", "empty segment"),
        ("a/", "empty segment"),
        ("a\x00b", "NUL byte"),
        ("a\nb", "control character U+000A"),
        ("..\\secrets", "backslash"),
        (".", "names no file"),
        ("x" * 256, "segment is longer than 255 bytes"),
        ("/".join(["y" * 200] * 6), "longer than 1024 bytes"),
    ],
)
def test_normalize_rejects_with_a_reason(path: str, reason: str) -> None:
    with pytest.raises(InvalidPath) as info:
        normalize_path(path)
    assert reason in str(info.value)
    assert repr(path)[:40].strip("'") in str(info.value) or path == ""


async def test_put_get_stat_list_delete(bus: Bus) -> None:
    ws = Workspace(bus)
    prov = Provenance(session_id=SID, thread_id="thr_7", agent="logs", tool_call_id="toolu_01")
    info = await ws.put(SID, "findings/errors.md", "# 502s from payments\n", provenance=prov)
    assert info.path == "findings/errors.md"
    assert info.size == len(b"# 502s from payments\n")
    assert info.provenance == prov

    assert await ws.get(SID, "./findings/errors.md") == b"# 502s from payments\n"
    stat = await ws.stat(SID, "findings/errors.md")
    assert stat.provenance == prov
    assert stat.digest == info.digest

    await ws.put(SID, "report.md", b"final")
    await ws.put("ses_other", "findings/errors.md", b"not mine")
    assert [f.path for f in await ws.list(SID)] == ["findings/errors.md", "report.md"]
    assert [f.path for f in await ws.list(SID, "findings/")] == ["findings/errors.md"]
    assert [f.path for f in await ws.list("ses_other")] == ["findings/errors.md"]
    assert (await ws.stat(SID, "report.md")).provenance == Provenance(session_id=SID)

    await ws.delete(SID, "report.md")
    assert not await ws.exists(SID, "report.md")
    with pytest.raises(FileNotFound, match=r"no file 'report\.md' in the workspace of session 'ses_ws'"):
        await ws.get(SID, "report.md")
    assert [f.path for f in await ws.list(SID)] == ["findings/errors.md"]


async def test_traversal_is_refused_before_touching_the_store(bus: Bus) -> None:
    ws = Workspace(bus)
    for bad in ("../ses_other/findings/errors.md", "/abs", "a/../../x"):
        with pytest.raises(InvalidPath):
            await ws.put(SID, bad, b"x")
        with pytest.raises(InvalidPath):
            await ws.get(SID, bad)
    with pytest.raises(ConfigError, match=re.escape("session id 'ses/../x' is not a valid subject token")):
        await ws.put("ses/../x", "a.txt", b"x")


async def test_overwrite_replaces_content_and_frees_old_chunks(bus: Bus, nc: NATS) -> None:
    ws = Workspace(bus, chunk_size=1024)
    await ws.put(SID, "big.bin", os.urandom(50_000))
    js = nc.jetstream()
    stream = await js.stream_info(ws.stream)
    before = stream.state.bytes
    await ws.put(SID, "big.bin", b"small now")
    assert await ws.get(SID, "big.bin") == b"small now"
    after = (await js.stream_info(ws.stream)).state.bytes
    assert after < before / 10


async def test_empty_file(bus: Bus) -> None:
    ws = Workspace(bus)
    await ws.put(SID, "empty.txt", b"")
    assert await ws.get(SID, "empty.txt") == b""
    assert (await ws.stat(SID, "empty.txt")).size == 0


async def test_tampered_content_is_detected(bus: Bus, nc: NATS) -> None:
    ws = Workspace(bus, chunk_size=1000)
    await ws.put(SID, "data.csv", b"a" * 5000)
    info = await ws._info(f"{SID}/data.csv")
    assert info is not None
    js = nc.jetstream()
    chunk = await js.get_msg(ws.stream, subject=f"$O.{ws.bucket}.C.{info.nuid}", next=True, seq=1)
    assert chunk.seq is not None
    await js.delete_msg(ws.stream, chunk.seq)  # lose one chunk
    with pytest.raises(IntegrityError, match="expected 5000 bytes in 5 chunks, read 4000 in 4"):
        await ws.get(SID, "data.csv")


async def test_listing_pages_through_many_files(bus: Bus) -> None:
    ws = Workspace(bus)
    for i in range(600):
        await ws.put(SID, f"many/{i:04d}.txt", b"x")
    files = await ws.list(SID, "many")
    assert len(files) == 600
    assert files[0].path == "many/0000.txt"
    assert files[-1].path == "many/0599.txt"


@pytest.mark.slow
async def test_50_mib_round_trip_is_intact(bus: Bus) -> None:
    ws = Workspace(bus)
    data = os.urandom(50 * 1024 * 1024)
    expected = hashlib.sha256(data).hexdigest()
    await ws.put(SID, "blob.bin", io.BytesIO(data))
    del data
    digest = hashlib.sha256()
    size = 0
    async for block in await ws.open(SID, "blob.bin"):
        digest.update(block)
        size += len(block)
    assert size == 50 * 1024 * 1024
    assert digest.hexdigest() == expected


async def test_whole_workspace_prefixes_list_everything(bus: Bus) -> None:
    ws = Workspace(bus)
    await ws.put(SID, "a.txt", b"a")
    await ws.put(SID, "d/b.txt", b"b")
    for prefix in ("", ".", "./", "/"):
        assert [f.path for f in await ws.list(SID, prefix)] == ["a.txt", "d/b.txt"]
    assert [f.path for f in await ws.list(SID, "./d/")] == ["d/b.txt"]


@pytest.mark.slow
async def test_listing_works_past_1024_objects_in_the_bucket(bus: Bus, nc: NATS) -> None:
    """The server's multi-subject direct get stops at 1024 subjects; listing must not."""
    ws = Workspace(bus)
    for i in range(1100):
        await ws.put("ses_busy", f"f/{i}.txt", b"x")
    await ws.put(SID, "mine.txt", b"y")
    assert [f.path for f in await ws.list(SID)] == ["mine.txt"]
    assert len(await ws.list("ses_busy")) == 1100
    consumers = await nc.jetstream().consumers_info(ws.stream)
    assert consumers == []  # the listing's ephemeral consumers are removed


async def test_put_whose_metadata_ack_was_lost_keeps_the_new_file(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = Workspace(bus)
    await ws.put(SID, "notes.md", b"old")
    store_meta = ws._store_meta

    async def stored_but_unacknowledged(info: Any) -> None:
        await store_meta(info)
        raise BusTimeout("publish", info.name, 10)

    monkeypatch.setattr(ws, "_store_meta", stored_but_unacknowledged)
    with pytest.raises(BusTimeout):
        await ws.put(SID, "notes.md", b"new")
    monkeypatch.undo()
    assert await ws.get(SID, "notes.md") == b"new"  # not purged from under its own metadata


async def test_a_file_replaced_while_streaming_is_reported_as_changed(bus: Bus) -> None:
    ws = Workspace(bus, chunk_size=1000)
    await ws.put(SID, "log.txt", b"a" * 200_000)
    stream = await ws.open(SID, "log.txt")
    first = await anext(stream)
    assert first == b"a" * 1000
    await ws.put(SID, "log.txt", b"b" * 10)
    with pytest.raises(FileChanged, match=r"'log\.txt' was replaced or deleted while it was being read"):
        async for _ in stream:
            pass
    assert await ws.get(SID, "log.txt") == b"b" * 10


async def test_a_missing_bucket_is_a_clear_error(bus: Bus) -> None:
    ws = Workspace(bus, bucket="never_created")
    with pytest.raises(BusError, match=r"object store 'never_created'\) does not exist"):
        await ws.stat(SID, "a.txt")
    with pytest.raises(BusError, match=r"object store 'never_created'\) does not exist"):
        await ws.list(SID)


@pytest.mark.slow
async def test_many_concurrent_large_reads_do_not_overrun_the_connection(bus: Bus) -> None:
    """Eight readers of a 12 MiB file at once on one connection: the server must never see a slow
    consumer (it would drop the connection and the reads would time out)."""
    ws = Workspace(bus)
    data = os.urandom(12 * 1024 * 1024)
    await ws.put(SID, "big.bin", data)
    results = await asyncio.gather(*(ws.get(SID, "big.bin") for _ in range(8)))
    assert all(r == data for r in results)


# --- content stored once -----------------------------------------------------------------------


async def _stored_bytes(nc: NATS, ws: Workspace) -> int:
    return int((await nc.jetstream().stream_info(ws.stream)).state.bytes)


async def test_the_same_input_in_many_sessions_is_stored_once(bus: Bus, nc: NATS) -> None:
    ws = Workspace(bus, chunk_size=64 * 1024)
    data = os.urandom(1024 * 1024)
    empty = await _stored_bytes(nc, ws)
    first = await ws.put("ses_a", "data/app.jsonl", data, provenance=Provenance(session_id="ses_a"))
    one = await _stored_bytes(nc, ws) - empty
    for sid in ("ses_b", "ses_c", "ses_d"):
        await ws.put(sid, "app.jsonl", data, provenance=Provenance(session_id=sid, agent="uploader"))
    four = await _stored_bytes(nc, ws) - empty
    assert one >= len(data)
    assert four < one + 8 * 1024, (one, four)  # three more sessions: metadata only
    for sid in ("ses_b", "ses_c", "ses_d"):
        assert await ws.get(sid, "app.jsonl") == data
        info = await ws.stat(sid, "app.jsonl")
        assert (info.digest, info.size) == (first.digest, first.size)
        assert info.provenance.session_id == sid
        assert info.provenance.agent == "uploader"
        assert [f.path for f in await ws.list(sid)] == ["app.jsonl"]  # each session sees its own
    assert [f.path for f in await ws.list("ses_a")] == ["data/app.jsonl"]


async def test_shared_content_lives_until_its_last_file_goes(bus: Bus, nc: NATS) -> None:
    ws = Workspace(bus, chunk_size=64 * 1024)
    data = os.urandom(300 * 1024)
    empty = await _stored_bytes(nc, ws)
    await ws.put("ses_a", "x.bin", data)
    await ws.put("ses_b", "x.bin", data)
    await ws.put("ses_c", "x.bin", data)
    await ws.delete("ses_a", "x.bin")
    await ws.put("ses_b", "x.bin", b"replaced in b")  # a new version of b's file
    assert await ws.get("ses_c", "x.bin") == data  # c still points at the shared chunks
    assert await ws.get("ses_b", "x.bin") == b"replaced in b"
    assert await _stored_bytes(nc, ws) - empty > len(data)
    await ws.delete("ses_c", "x.bin")  # the last one: its chunks go
    assert await _stored_bytes(nc, ws) - empty < 8 * 1024


async def test_concurrent_puts_of_the_same_content_all_read_back(bus: Bus, nc: NATS) -> None:
    ws = Workspace(bus, chunk_size=64 * 1024)
    data = os.urandom(2 * 1024 * 1024)
    empty = await _stored_bytes(nc, ws)
    sessions = [f"ses_{i}" for i in range(8)]
    await asyncio.gather(*(ws.put(sid, "in.csv", data) for sid in sessions))
    for sid in sessions:
        assert await ws.get(sid, "in.csv") == data
    # One writer claims the shared subject; the others wait for it and reuse its chunks.
    assert await _stored_bytes(nc, ws) - empty < len(data) + 16 * 1024


async def test_a_half_written_shared_copy_is_never_used(bus: Bus, nc: NATS) -> None:
    ws = Workspace(bus, chunk_size=64 * 1024)
    data = os.urandom(256 * 1024)
    nuid = "sha256-" + hashlib.sha256(data).hexdigest()
    # a writer died after its first chunk: the subject holds 1 of 4 chunks and no file points to it
    await nc.jetstream().publish(f"$O.{ws.bucket}.C.{nuid}", data[: 64 * 1024])
    info = await ws.put("ses_a", "x.bin", data)
    assert await ws.get("ses_a", "x.bin") == data
    stored = await ws._info("ses_a/x.bin")
    assert stored is not None
    assert stored.nuid != nuid
    assert info.size == len(data)


async def test_a_store_made_before_the_session_index_gets_it_when_provisioned(bus: Bus, nc: NATS) -> None:
    ws = Workspace(bus)
    await ws.put("ses_a", "a.txt", b"a")
    await ws.put("ses_a", "gone.txt", b"g")
    await ws.delete("ses_a", "gone.txt")
    await ws.put("ses_b", "dir/b.txt", b"b")
    js = nc.jetstream()
    # the store as an older version left it: no index subjects, no entries
    await js.purge_stream(ws.stream, subject=f"$O.{ws.bucket}.S.>")
    config = (await js.stream_info(ws.stream)).config
    config.subjects = [s for s in config.subjects or [] if ".S." not in s]
    await js.update_stream(config)
    await provision(bus)
    assert [f.path for f in await ws.list("ses_a")] == ["a.txt"]
    assert [f.path for f in await ws.list("ses_b")] == ["dir/b.txt"]
    await ws.put("ses_a", "new.txt", b"n")
    await ws.put("ses_a", "a.txt", b"a, version 2")
    assert [f.path for f in await ws.list("ses_a")] == ["a.txt", "new.txt"]
    assert await ws.reindex() == 0  # an entry already there is never written over (it may be newer)
    assert {f.path: f.size for f in await ws.list("ses_a")} == {"a.txt": 12, "new.txt": 1}


async def test_a_store_without_the_session_index_says_to_provision_it(bus: Bus, nc: NATS) -> None:
    ws = Workspace(bus)
    js = nc.jetstream()
    config = (await js.stream_info(ws.stream)).config
    config.subjects = [s for s in config.subjects or [] if ".S." not in s]
    await js.update_stream(config)
    with pytest.raises(BusError, match=r"has no session index .* provision it again"):
        await ws.put("ses_a", "a.txt", b"a")
    await provision(bus)
    await ws.put("ses_a", "a.txt", b"a")
    assert [f.path for f in await ws.list("ses_a")] == ["a.txt"]


def test_a_wider_subject_covers_the_session_index() -> None:
    index = "$O.sw_files.S.*.>"
    assert covers(index, index)
    assert covers("$O.sw_files.S.>", index)
    assert covers("$O.sw_files.>", index)
    assert covers("$O.*.S.*.>", index)
    assert not covers("$O.sw_files.S.*", index)  # one token after the session, not more
    assert not covers("$O.sw_files.M.>", index)
    assert not covers("$O.sw_files.S.*.*", index)
    assert not covers("$O.other.S.>", index)


async def test_a_store_whose_stream_already_holds_the_index_under_a_wider_subject_is_left_as_it_is(
    bus: Bus, nc: NATS
) -> None:
    ws = Workspace(bus)
    js = nc.jetstream()
    config = (await js.stream_info(ws.stream)).config
    wider = f"$O.{ws.bucket}.S.>"
    config.subjects = [*(s for s in config.subjects or [] if ".S." not in s), wider]
    await js.update_stream(config)
    await provision(bus)  # adding the narrower subject would overlap: not needed, not tried
    assert wider in ((await js.stream_info(ws.stream)).config.subjects or [])
    await ws.put("ses_a", "a.txt", b"a")
    assert [f.path for f in await ws.list("ses_a")] == ["a.txt"]
