"""What bench/example.py and bench/load.py share: a clean environment for the staffwork processes
they start, the memory of a process tree (sampled from /proc, Linux only), a running ``staffwork up``
(started, known ready from its own output, stopped with nothing left behind) and sizes on disk.

Nothing here sleeps and hopes: readiness is read from ``up``'s output under a deadline; the only
periodic thing is the memory sampler, which polls by design.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

from bus.server import die_with_parent

ROOT_DIR = Path(__file__).resolve().parents[1]
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def clean_env(home: Path) -> dict[str, str]:
    """This environment for a staffwork process of its own: ``STAFFWORK_HOME=home``, none of the
    caller's staffwork settings (server URL, root, credentials) and no API key (the offline model)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not (k.startswith("STAFFWORK_") and k != "STAFFWORK_NATS_SERVER")
        and not k.startswith("ANTHROPIC_")
        and k not in ("COLUMNS", "LINES")
    }
    return env | {"STAFFWORK_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def disk_usage(path: Path) -> tuple[int, int]:
    """Bytes of the files below ``path``: their sizes, and what they take on disk (``du``)."""
    size = blocks = 0
    for directory, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(os.path.join(directory, name))
                size += st.st_size
                blocks += st.st_blocks * 512
    return size, blocks


def mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


# --- processes, from /proc -------------------------------------------------------------------------


TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, int, int] | None:
    """The parent pid, start time (clock ticks after boot) and CPU time used (user + system, in clock
    ticks) of ``pid``, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), int(fields[19]), int(fields[11]) + int(fields[12])


def descendants(root: int) -> dict[int, tuple[int, int, int]]:
    """``root`` and every process below it: pid -> (parent pid, start time, CPU ticks used)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[int, int, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (found := _stat(int(entry.name))) is not None:
            children.setdefault(found[0], []).append(int(entry.name))
            stats[int(entry.name)] = found
    tree: dict[int, tuple[int, int, int]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid]
            todo += children.get(pid, [])
    return tree


def label(pid: int) -> str | None:
    """A short name for a staffwork process: ``up``, ``lead``, ``agent:logs``, ``nats-server``,
    ``mcp:deploy_api``..., from its command line; None if it is gone (or a zombie)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return None
    if not argv:
        return None
    if Path(argv[0]).name.startswith("nats-server"):
        return "nats-server"
    if "actor" in argv:
        role = argv[argv.index("actor") + 1]
        if role == "subagent" and "--agents" in argv:
            return "agent:" + argv[argv.index("--agents") + 1]
        return role
    if "up" in argv and "actors.cli" in argv:
        return "up"
    if "-m" in argv:
        module = argv[argv.index("-m") + 1]
        return f"mcp:{module.rsplit('.', 1)[-1]}" if module.startswith("examples.") else module
    return " ".join(Path(a).name for a in argv[:2])


def memory(pid: int) -> tuple[int, int] | None:
    """``pid``'s resident set now and at its peak (VmRSS, VmHWM), in bytes; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", text, re.MULTILINE))
    if "VmRSS" not in values:
        return None  # a zombie
    return int(values["VmRSS"]) * 1024, int(values["VmHWM"]) * 1024


@dataclass
class Window:
    """What the sampler saw since its last :meth:`MemorySampler.window`."""

    peak: dict[tuple[int, int], int] = field(default_factory=dict)  # (pid, start) -> sampled RSS max
    hwm: dict[tuple[int, int], int] = field(default_factory=dict)  # (pid, start) -> VmHWM, last read
    last: dict[tuple[int, int], int] = field(default_factory=dict)  # (pid, start) -> last RSS
    cpu: dict[tuple[int, int], list[int]] = field(default_factory=dict)  # (pid, start) -> [first, last]
    peak_total: int = 0  # the largest sum of the tree's RSS in one sample
    samples: int = 0


class MemorySampler:
    """Every ``every`` seconds, in a thread: the resident memory of every process below ``root``
    (and ``root``), per process and in all. Every process it saw is remembered (:attr:`seen`), so
    the caller can make sure none is left running."""

    def __init__(self, root: int, every: float = 0.2) -> None:
        self.root = root
        self.every = every
        self.seen: dict[tuple[int, int], str] = {}  # (pid, start) -> label
        self._window = Window()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def window(self) -> Window:
        """What was seen since the last call (or the start); a new window starts now, with the
        CPU times read at this moment as its first."""
        self.sample()
        with self._lock:
            window, self._window = self._window, Window()
            self._window.cpu = {k: [last, last] for k, (_, last) in window.cpu.items()}
        return window

    def sample(self) -> None:
        total = 0
        readings: list[tuple[tuple[int, int], int, int, int, bool]] = []
        tree = descendants(self.root)
        names = {pid: label(pid) for pid in tree}
        for pid, (ppid, start, cpu) in tree.items():
            key = (pid, start)
            new = key not in self.seen
            name = names[pid]
            if name is not None and pid != self.root and name == names.get(ppid):
                name = f"{name} (forking)"  # a child between fork and exec: named for what it runs later
            if name is not None or new:
                self.seen[key] = name or "(exited)"  # each time: a forked child is named once it runs
            # A child between fork and exec shares its parent's pages: not counted until it runs.
            if not self.seen[key].endswith("(forking)") and (found := memory(pid)) is not None:
                readings.append((key, *found, cpu, new))
                total += found[0]
        with self._lock:
            w = self._window
            for key, rss, hwm, cpu, new in readings:
                w.peak[key] = max(w.peak.get(key, 0), rss)
                w.hwm[key] = hwm
                w.last[key] = rss
                w.cpu.setdefault(key, [0 if new else cpu, cpu])[1] = cpu  # a new process used it all here
            w.peak_total = max(w.peak_total, total)
            w.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.sample()

    def leftovers(self) -> list[tuple[int, str]]:
        """The processes it saw that still run (the same pid and start time)."""
        return [(pid, name) for (pid, start), name in self.seen.items() if _alive(pid, start)]


def _alive(pid: int, start: int) -> bool:
    found = _stat(pid)
    return found is not None and found[1] == start and memory(pid) is not None


def kill_leftovers(sampler: MemorySampler, timeout: float = 10.0) -> list[tuple[int, str]]:
    """SIGKILL every process the sampler saw that still runs; the ones that did."""
    left = sampler.leftovers()
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + timeout
    while sampler.leftovers() and time.monotonic() < deadline:
        time.sleep(0.05)  # SIGKILL was sent: the kernel reaps them within moments
    return left


# --- ``staffwork up`` as a subprocess --------------------------------------------------------------

_READY = re.compile(r"^\[([^\]]+)\] .*\bready on nats://")
_PROCESSES = re.compile(r"; processes: (.+)$")


class UpFailed(RuntimeError):
    pass


class Up:
    """A ``staffwork up`` of its own (``home`` as STAFFWORK_HOME, ``port``), its output read by a
    thread as it comes. :meth:`wait_ready` returns once every process it started said it is ready."""

    def __init__(self, home: Path, port: int, env: dict[str, str] | None = None) -> None:
        self.home = home
        self.port = port
        self.url = f"nats://127.0.0.1:{port}"
        self.lines: list[str] = []
        self._eof = False
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "actors.cli", "up", "--port", str(port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env or clean_env(home),
            cwd=ROOT_DIR,
            start_new_session=True,  # our Ctrl-C reaches us, and we stop it
            preexec_fn=die_with_parent,  # if we are killed, it stops too
        )
        self._reader = threading.Thread(target=self._read, name="up-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def tail(self, n: int = 30) -> str:
        with self._changed:
            return "\n".join(self.lines[-n:])

    def wait_ready(self, timeout: float = 60.0) -> list[str]:
        """The names of ``up``'s processes, once each said it is ready; :class:`UpFailed` when ``up``
        exits first or ``timeout`` seconds pass."""

        def state() -> tuple[list[str], set[str]] | None:
            expected: list[str] = []
            ready: set[str] = set()
            for line in self.lines:
                if match := _PROCESSES.search(line):
                    expected = [name.strip() for name in match.group(1).split(",")]
                elif match := _READY.match(line):
                    ready.add(match.group(1))
            if self._eof or (expected and ready >= set(expected)):
                return expected, ready
            return None

        with self._changed:
            found = self._changed.wait_for(state, timeout)
        if found is None or self._eof:
            why = "exited" if self._eof else f"was not ready after {timeout:g} s"
            missing = sorted(set(found[0]) - found[1]) if found else "?"
            raise UpFailed(f"staffwork up {why} (not ready: {missing}); its last output:\n{self.tail()}")
        return found[0]

    def stop(self, timeout: float = 60.0) -> int | None:
        """SIGTERM (a graceful stop), SIGKILL after ``timeout`` seconds; its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


# --- a command, timed and watched ------------------------------------------------------------------


class CommandFailed(RuntimeError):
    pass


@dataclass
class Ran:
    """A finished command: its wall time, output, and the peak memory of its process tree."""

    wall: float
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int  # the largest sum of the tree's RSS in one sample


def run_watched(args: list[str], *, env: dict[str, str], timeout: float, every: float = 0.2) -> Ran:
    """Run ``args`` to its end (at most ``timeout`` seconds, else :class:`CommandFailed`), sampling
    its process tree's memory; whatever it started is gone afterwards, even on failure."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT_DIR,
        start_new_session=True,
        preexec_fn=die_with_parent,
    )
    with MemorySampler(proc.pid, every) as sampler:
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except BaseException as exc:  # the timeout, or Ctrl-C: leave nothing behind
            kill_leftovers(sampler)
            proc.kill()
            stdout, stderr = proc.communicate(timeout=10)
            if isinstance(exc, subprocess.TimeoutExpired):
                raise CommandFailed(
                    f"{' '.join(args)} did not finish within {timeout:g} s; its last output:\n"
                    + "\n".join((stdout + stderr).splitlines()[-20:])
                ) from None
            raise
        finally:
            wall = time.perf_counter() - started
            window = sampler.window()
        left = kill_leftovers(sampler)
    if left:
        print(f"warning: {' '.join(args[:3])} left {left} running; killed them", file=sys.stderr)
    return Ran(wall, proc.returncode, stdout, stderr, window.peak_total)


@contextlib.asynccontextmanager
async def ready_processes(commands: list[list[str]], what: str) -> AsyncIterator[None]:
    """Start ``commands`` one after the other, each ready when its first line of output is
    ``READY`` (30 s at most); terminate and reap them all on leaving."""
    procs: list[asyncio.subprocess.Process] = []
    try:
        for command in commands:
            proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE)
            procs.append(proc)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if line.strip() != b"READY":
                raise RuntimeError(f"{what} did not start: {line!r}")
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            await proc.wait()
