"""Memory stores on JetStream: versions and who made them, the sha256 precondition (a concurrent
writer loses with a clear error), limits and paths, listing, and the ``staffwork memory`` commands."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client as NATS

from bus.connection import Bus
from bus.errors import (
    InvalidMemoryPath,
    MemoryConflict,
    MemoryFileNotFound,
    MemoryStoreError,
    MemoryStoreExists,
    MemoryStoreNotFound,
    MemoryTooLarge,
    ServerRefused,
)
from bus.memory import Memory, sha256_hex
from bus.provision import StreamSettings, provision
from schemas.memory import MAX_MEMORY_BYTES, MemoryVersion, Writer
from tests.helpers import ROOT_DIR, NatsServer

AGENT = Writer(kind="session", session_id="ses_1", thread_id="th_1", agent="logs")
USER = Writer(kind="user", user="alice")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@pytest.fixture
async def memory(bus: Bus) -> Memory:
    memory = Memory(bus)
    await memory.create("notes", "what the team learned")
    return memory


# --- stores ---


async def test_stores_are_registered_once(memory: Memory) -> None:
    await memory.create("alpha")
    assert [s.name for s in await memory.stores()] == ["alpha", "notes"]
    info = await memory.info("notes")
    assert info.description == "what the team learned"
    with pytest.raises(MemoryStoreExists, match="memory store 'notes' already exists"):
        await memory.create("notes")


async def test_an_unknown_store_names_the_known_ones(bus: Bus, memory: Memory) -> None:
    await memory.create("alpha")
    fresh = Memory(bus)  # nothing cached
    message = "no memory store 'gamma' (known: alpha, notes)"
    with pytest.raises(MemoryStoreNotFound, match=re.escape(message)):
        await fresh.write("gamma", "a.md", "x", writer=USER)
    with pytest.raises(MemoryStoreNotFound, match=re.escape(message)):
        await fresh.read("gamma", "a.md")
    with pytest.raises(MemoryStoreNotFound, match=re.escape(message)):
        await fresh.list("gamma")
    with pytest.raises(MemoryStoreNotFound, match=re.escape(message)):
        await fresh.versions("gamma")


async def test_invalid_store_names_are_refused(memory: Memory) -> None:
    for name in ("Notes", "a.b", "", "9lives", "x" * 49):
        with pytest.raises(MemoryStoreError, match="invalid memory store name"):
            await memory.create(name)


async def test_the_memory_stream_keeps_everything_forever(bus: Bus, nc: NATS) -> None:
    await provision(bus, settings=StreamSettings(max_age=3600))  # again: idempotent
    config = (await nc.jetstream().stream_info(bus.subjects.memory_stream)).config
    assert not config.max_age  # the log's max age does not apply to memory
    assert config.subjects == [f"{bus.subjects.root}.mem.>"]
    assert config.allow_direct


# --- files and versions ---


async def test_write_read_list_delete_round_trip(memory: Memory) -> None:
    first = await memory.write("notes", "./runbooks/db.md", "restart the primary\n", writer=AGENT)
    assert first.path == "runbooks/db.md"
    assert (first.op, first.sha256, first.size) == ("write", sha("restart the primary\n"), 20)

    read = await memory.read("notes", "runbooks/db.md")
    assert read.content == "restart the primary\n"
    assert (read.version, read.sha256, read.size, read.writer) == (first.version, first.sha256, 20, AGENT)

    second = await memory.write("notes", "runbooks/db.md", "fail over first\n", writer=USER)
    assert second.version > first.version
    assert (await memory.read("notes", "runbooks/db.md")).content == "fail over first\n"

    [listed] = await memory.list("notes")
    assert (listed.path, listed.version, listed.size, listed.sha256) == (
        "runbooks/db.md",
        second.version,
        len("fail over first\n"),
        sha("fail over first\n"),
    )
    assert listed.writer == USER

    gone = await memory.delete("notes", "runbooks/db.md", writer=AGENT)
    assert (gone.op, gone.sha256, gone.size) == ("delete", "", 0)
    with pytest.raises(
        MemoryFileNotFound, match=r"no file 'runbooks/db.md' in memory store 'notes' \(it was"
    ):
        await memory.read("notes", "runbooks/db.md")
    assert await memory.list("notes") == []

    # Every change is a version that stays readable, with who made it.
    history = await memory.versions("notes", "runbooks/db.md")
    assert [(v.version, v.op, v.writer) for v in history] == [
        (first.version, "write", AGENT),
        (second.version, "write", USER),
        (gone.version, "delete", AGENT),
    ]
    assert [v.sha256 for v in history] == [first.sha256, second.sha256, ""]
    old = await memory.read("notes", "runbooks/db.md", version=first.version)
    assert (old.content, old.writer, old.sha256) == ("restart the primary\n", AGENT, first.sha256)
    assert old.time == history[0].time


async def test_writers_are_described(memory: Memory) -> None:
    assert AGENT.describe() == "agent logs (session ses_1, thread th_1)"
    assert USER.describe() == "user alice"
    await memory.write("notes", "a.md", "one", writer=AGENT)
    await memory.write("notes", "a.md", "two", writer=USER)
    assert [v.writer.describe() for v in await memory.versions("notes", "a.md")] == [
        "agent logs (session ses_1, thread th_1)",
        "user alice",
    ]


async def test_text_and_paths_beyond_ascii_and_empty_files(memory: Memory) -> None:
    await memory.write("notes", "équipe/café.md", "über ☕\n", writer=USER)
    await memory.write("notes", "empty.md", "", writer=USER)
    assert (await memory.read("notes", "équipe/café.md")).content == "über ☕\n"
    empty = await memory.read("notes", "empty.md")
    assert (empty.content, empty.size, empty.sha256) == ("", 0, sha(""))
    assert [v.path for v in await memory.list("notes")] == ["empty.md", "équipe/café.md"]


async def test_reading_a_version_checks_store_and_path(memory: Memory) -> None:
    a = await memory.write("notes", "a.md", "a", writer=USER)
    await memory.create("other")
    b = await memory.write("other", "a.md", "b", writer=USER)
    gone = await memory.delete("notes", "a.md", writer=USER)
    with pytest.raises(MemoryFileNotFound, match=r"memory store 'notes' has no version \d+ of 'b\.md'"):
        await memory.read("notes", "b.md", version=a.version)
    with pytest.raises(MemoryFileNotFound, match="has no version"):
        await memory.read("notes", "a.md", version=b.version)  # the same path, another store
    with pytest.raises(MemoryFileNotFound, match="has no version 999999"):
        await memory.read("notes", "a.md", version=999_999)
    with pytest.raises(MemoryFileNotFound, match="has no version 0"):
        await memory.read("notes", "a.md", version=0)
    with pytest.raises(MemoryFileNotFound, match=f"version {gone.version} of 'a.md' .* is its deletion"):
        await memory.read("notes", "a.md", version=gone.version)
    assert (await memory.read("notes", "a.md", version=a.version)).content == "a"


async def test_missing_files(memory: Memory) -> None:
    with pytest.raises(MemoryFileNotFound, match=re.escape("no file 'nope.md' in memory store 'notes'")):
        await memory.read("notes", "nope.md")
    with pytest.raises(MemoryFileNotFound, match=re.escape("no file 'nope.md'")):
        await memory.delete("notes", "nope.md", writer=USER)
    with pytest.raises(MemoryFileNotFound, match=re.escape("no file 'nope.md'")):
        await memory.versions("notes", "nope.md")
    await memory.write("notes", "a.md", "a", writer=USER)
    await memory.delete("notes", "a.md", writer=USER)
    with pytest.raises(MemoryFileNotFound, match="it was deleted"):
        await memory.delete("notes", "a.md", writer=USER)


async def test_list_by_prefix_and_deleted_files(memory: Memory) -> None:
    for path in ("notes/a.md", "notes/b.md", "notes/sub/c.md", "notesy.md", "other.md"):
        await memory.write("notes", path, path, writer=USER)
    assert [v.path for v in await memory.list("notes")] == [
        "notes/a.md",
        "notes/b.md",
        "notes/sub/c.md",
        "notesy.md",
        "other.md",
    ]
    assert [v.path for v in await memory.list("notes", "notes/")] == [
        "notes/a.md",
        "notes/b.md",
        "notes/sub/c.md",
    ]
    assert [v.path for v in await memory.list("notes", "notes")] == [
        "notes/a.md",
        "notes/b.md",
        "notes/sub/c.md",
        "notesy.md",
    ]
    assert [v.path for v in await memory.list("notes", "notes/sub")] == ["notes/sub/c.md"]
    assert len(await memory.list("notes", "/")) == 5

    gone = await memory.delete("notes", "notes/b.md", writer=AGENT)
    assert [v.path for v in await memory.list("notes", "notes/")] == ["notes/a.md", "notes/sub/c.md"]
    everything = await memory.versions("notes")
    assert [v.version for v in everything] == sorted(v.version for v in everything)
    assert (everything[-1].path, everything[-1].op, everything[-1].version) == (
        "notes/b.md",
        "delete",
        gone.version,
    )
    assert [v.op for v in await memory.versions("notes", "notes/b.md")] == ["write", "delete"]


async def test_a_deleted_file_can_be_written_again(memory: Memory) -> None:
    await memory.write("notes", "a.md", "one", writer=USER)
    await memory.delete("notes", "a.md", writer=USER)
    again = await memory.write("notes", "a.md", "two", writer=USER, expected_sha256="")
    assert (await memory.read("notes", "a.md")).version == again.version
    assert [v.op for v in await memory.versions("notes", "a.md")] == ["write", "delete", "write"]


# --- limits and paths ---


async def test_content_over_100_kb_is_refused(memory: Memory) -> None:
    at_limit = await memory.write("notes", "big.md", "x" * MAX_MEMORY_BYTES, writer=USER)
    assert at_limit.size == MAX_MEMORY_BYTES == 102_400
    message = "'big.md' in memory store 'notes': 102401 bytes is over the 102400-byte limit"
    with pytest.raises(MemoryTooLarge, match=re.escape(message)):
        await memory.write("notes", "big.md", "x" * (MAX_MEMORY_BYTES + 1), writer=USER)
    with pytest.raises(MemoryTooLarge, match="102402 bytes"):  # bytes, not characters
        await memory.write("notes", "big.md", "é" * 51_201, writer=USER)
    assert (await memory.read("notes", "big.md")).version == at_limit.version


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../x", "it escapes the store ('..' is not allowed)"),
        ("a/../../x", "it escapes the store ('..' is not allowed)"),
        ("/abs", "it is absolute; memory paths are relative to the store"),
        ("", "the path is empty"),
        ("a//b", "it has an empty segment ('//' or a trailing '/')"),
        ("a\x00b", "it contains a NUL byte"),
    ],
)
async def test_bad_paths_are_clear_errors(memory: Memory, path: str, reason: str) -> None:
    with pytest.raises(
        InvalidMemoryPath, match=re.escape(f"invalid path {path!r} in memory store 'notes': {reason}")
    ):
        await memory.write("notes", path, "x", writer=USER)
    with pytest.raises(InvalidMemoryPath):
        await memory.read("notes", path)


# --- the sha256 precondition ---


async def test_a_matching_precondition_writes(memory: Memory) -> None:
    first = await memory.write("notes", "a.md", "one", writer=USER, expected_sha256="")
    second = await memory.write("notes", "a.md", "two", writer=USER, expected_sha256=first.sha256)
    assert (await memory.read("notes", "a.md")).version == second.version
    gone = await memory.delete("notes", "a.md", writer=USER, expected_sha256=second.sha256.upper())
    assert gone.op == "delete"


async def test_a_stale_precondition_is_a_conflict(memory: Memory) -> None:
    first = await memory.write("notes", "a.md", "one", writer=USER)
    second = await memory.write("notes", "a.md", "two", writer=AGENT)
    with pytest.raises(MemoryConflict) as caught:
        await memory.write("notes", "a.md", "three", writer=USER, expected_sha256=first.sha256)
    assert (caught.value.expected, caught.value.actual) == (first.sha256, second.sha256)
    assert str(caught.value) == (
        f"'a.md' in memory store 'notes' has changed: the update expected sha256 {first.sha256}, "
        f"but there is sha256 {second.sha256} now"
    )
    with pytest.raises(MemoryConflict, match=f"expected sha256 {first.sha256}"):
        await memory.delete("notes", "a.md", writer=USER, expected_sha256=first.sha256)
    assert (await memory.read("notes", "a.md")).content == "two"


async def test_must_not_exist_conflicts_with_an_existing_file(memory: Memory) -> None:
    existing = await memory.write("notes", "a.md", "one", writer=USER)
    with pytest.raises(MemoryConflict, match=f"expected no file, but there is sha256 {existing.sha256} now"):
        await memory.write("notes", "a.md", "two", writer=USER, expected_sha256="")
    with pytest.raises(MemoryConflict, match="but there is no file now"):
        await memory.write("notes", "b.md", "two", writer=USER, expected_sha256=sha256_hex("one"))


async def test_a_malformed_precondition_is_refused(memory: Memory) -> None:
    with pytest.raises(MemoryStoreError, match="'abc' is not a sha256"):
        await memory.write("notes", "a.md", "x", writer=USER, expected_sha256="abc")


async def test_concurrent_writers_with_the_same_precondition_one_wins(memory: Memory) -> None:
    base = await memory.write("notes", "plan.md", "v1", writer=USER)
    results = await asyncio.gather(
        memory.write("notes", "plan.md", "from a", writer=AGENT, expected_sha256=base.sha256),
        memory.write("notes", "plan.md", "from b", writer=USER, expected_sha256=base.sha256),
        return_exceptions=True,
    )
    won = [r for r in results if isinstance(r, MemoryVersion)]
    lost = [r for r in results if isinstance(r, MemoryConflict)]
    assert (len(won), len(lost)) == (1, 1), results
    assert (lost[0].expected, lost[0].actual) == (base.sha256, won[0].sha256)
    assert (await memory.read("notes", "plan.md")).sha256 == won[0].sha256


async def test_the_server_rejects_the_writer_that_read_the_same_version_second(
    bus: Bus, nats_server: NatsServer, root: str, memory: Memory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers on two connections both pass the client-side check (they read the same version
    before either writes); JetStream's expected-last-subject-sequence stores only one of them."""
    base = await memory.write("notes", "plan.md", "v1", writer=USER)
    both_read = asyncio.Barrier(2)
    reads = 0
    original = Memory._latest

    async def latest_then_wait(self: Memory, store: str, path: str) -> Any:
        nonlocal reads
        found = await original(self, store, path)
        reads += 1
        if reads <= 2:  # the two precondition checks; the loser's re-read afterwards passes through
            await both_read.wait()
        return found

    monkeypatch.setattr(Memory, "_latest", latest_then_wait)
    async with await Bus.connect(nats_server.url, root=root, name="second") as other_bus:
        other = Memory(other_bus)
        async with asyncio.timeout(10):
            results = await asyncio.gather(
                memory.write("notes", "plan.md", "from a", writer=AGENT, expected_sha256=base.sha256),
                other.write("notes", "plan.md", "from b", writer=USER, expected_sha256=base.sha256),
                return_exceptions=True,
            )
    won = [r for r in results if isinstance(r, MemoryVersion)]
    lost = [r for r in results if isinstance(r, MemoryConflict)]
    assert (len(won), len(lost)) == (1, 1), results
    refused = lost[0].__cause__  # refused by the server, not by us
    assert isinstance(refused, ServerRefused)
    assert refused.err_code == 10071
    assert isinstance(refused.__cause__, nats.js.errors.APIError)
    assert f"expected sha256 {base.sha256}, but there is sha256 {won[0].sha256} now" in str(lost[0])
    assert [v.op for v in await memory.versions("notes", "plan.md")] == ["write", "write"]


async def test_concurrent_deletes_one_wins(memory: Memory) -> None:
    await memory.write("notes", "a.md", "x", writer=USER)
    results = await asyncio.gather(
        memory.delete("notes", "a.md", writer=USER),
        memory.delete("notes", "a.md", writer=AGENT),
        return_exceptions=True,
    )
    assert sorted(type(r).__name__ for r in results) == ["MemoryFileNotFound", "MemoryVersion"], results
    assert [v.op for v in await memory.versions("notes", "a.md")] == ["write", "delete"]


# --- the staffwork memory commands ---


MEMORY_COMMAND = [sys.executable, "-m", "actors.cli", "memory"]


@pytest.mark.slow
def test_the_memory_commands(tmp_path: Path, nats_server: NatsServer, root: str) -> None:
    command = MEMORY_COMMAND
    environment = {**os.environ, "STAFFWORK_HOME": str(tmp_path), "STAFFWORK_NATS_URL": nats_server.url}

    def staffwork(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *args, "--root", root],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env=environment,
            cwd=ROOT_DIR,
            check=False,
        )

    def ok(*args: str, stdin: str | None = None) -> str:
        result = staffwork(*args, stdin=stdin)
        assert result.returncode == 0, result.stderr
        return result.stdout

    assert "created memory store team" in ok("create", "team", "--description", "shared lessons")
    local = tmp_path / "runbook.md"
    local.write_text("check the disk\nrestart the service\n")
    first = ok("put", "team", "runbooks/web.md", str(local))
    v1 = int(re.search(r"version (\d+)", first).group(1))  # type: ignore[union-attr]
    assert f"sha256 {sha('check the disk' + chr(10) + 'restart the service' + chr(10))}" in first
    ok("put", "team", "people.md", stdin="alice: on call\n")

    listing = ok("ls", "team")
    assert re.search(r"runbooks/web\.md\s+35\s+\d+\s+user ", listing), listing
    assert "people.md" in listing
    assert ok("ls", "team", "runbooks/").count("\n") == 2  # the header and one file
    assert "team  shared lessons" in ok("ls")

    assert ok("cat", "team", "runbooks/web.md") == "check the disk\nrestart the service\n"
    second = ok("put", "team", "runbooks/web.md", stdin="check the disk\nfail over\n")
    v2 = int(re.search(r"version (\d+)", second).group(1))  # type: ignore[union-attr]
    assert (
        ok("cat", "team", "runbooks/web.md", "--version", str(v1)) == "check the disk\nrestart the service\n"
    )

    versions = ok("versions", "team", "runbooks/web.md").splitlines()
    assert versions[0].split() == ["VERSION", "TIME", "OP", "PATH", "SIZE", "SHA256", "WHO"]
    assert [line.split()[0] for line in versions[1:]] == [str(v1), str(v2)]
    assert all(" write " in line and " user " in line for line in versions[1:])
    assert len(ok("versions", "team").splitlines()) == 4  # header, two versions of one file, one of the other

    patch = ok("diff", "team", "runbooks/web.md")
    assert f"--- runbooks/web.md@{v1}" in patch
    assert f"+++ runbooks/web.md@{v2}" in patch
    assert "-restart the service\n" in patch
    assert "+fail over\n" in patch
    assert " check the disk\n" in patch
    assert (
        ok("diff", "team", "runbooks/web.md", "--from", str(v2), "--to", str(v1)).count(
            "+restart the service"
        )
        == 1
    )

    stale = staffwork("put", "team", "runbooks/web.md", "--if-sha256", sha("anything"), stdin="mine\n")
    assert stale.returncode == 1
    assert stale.stderr.count("\n") == 1, stale.stderr
    assert "'runbooks/web.md' in memory store 'team' has changed: the update expected sha256" in stale.stderr
    exists = staffwork("put", "team", "people.md", "--new", stdin="bob\n")
    assert (exists.returncode, exists.stderr.count("\n")) == (1, 1)
    assert "expected no file" in exists.stderr

    assert "deleted runbooks/web.md" in ok("rm", "team", "runbooks/web.md")
    assert "runbooks/web.md" not in ok("ls", "team")
    assert " delete " in ok("versions", "team", "runbooks/web.md").splitlines()[-1]

    unknown = staffwork("cat", "nope", "a.md")
    assert (unknown.returncode, unknown.stderr.count("\n")) == (1, 1)
    assert "no memory store 'nope' (known: team)" in unknown.stderr
