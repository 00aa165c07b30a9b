"""Machine checks of an outcome: criteria graded without a model, and reading the workspace for them.

Each check is a pure function of the answer and the files read (:func:`run_check`), tested without a
bus. :func:`run_checks_apart` runs the ones that use a team's regex or JSON Schema in a child process
(``python -m actors.grader.checks``, msgpack over pipes) with a deadline per check, so a pattern that
backtracks without end fails its check instead of freezing the grader; the cheap ones run here.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastjsonschema
import msgspec

from bus.errors import BusError, FileNotFound, InvalidPath, Retryable, WorkspaceError
from schemas.outcome import Check, CriterionStatus, CriterionVerdict

if TYPE_CHECKING:  # not at run time: the checks' child process must start fast (no nats, no structlog)
    from bus.workspace import Workspace

MAX_FILE_BYTES = 10 * 1024 * 1024  # read of one file for a check
MAX_EXPLANATION = 1000  # characters of one criterion's explanation
CHECK_TIMEOUT = 10.0  # seconds one machine check may run in the child process before it is failed
MAX_STDERR = 600  # characters of a crashed child's stderr (its end: a traceback's last lines) kept


# --- machine checks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class FileRead:
    """A workspace file as the checks see it: its content (up to a cap) and its whole size."""

    data: bytes | None  # None: not in the workspace, or unreadable (then ``error`` says why)
    size: int = 0
    error: str = ""

    @property
    def cut(self) -> bool:
        return self.data is not None and self.size > len(self.data)


def run_check(check: Check, answer: str, files: Mapping[str, bytes | FileRead | None]) -> CriterionVerdict:
    """Grade one machine check against the answer and the files read for it (by ``check.path``;
    plain bytes are a whole file, None or a missing key a file that is not in the workspace)."""

    def verdict(passed: bool, explanation: str) -> CriterionVerdict:
        status: CriterionStatus = "passed" if passed else "failed"
        return CriterionVerdict(criterion=check.name, kind=check.kind, status=status, explanation=explanation)

    if check.path:
        found = files.get(check.path)
        read = FileRead(found, size=len(found)) if isinstance(found, bytes) else found or FileRead(None)
        if read.data is None:
            return verdict(False, read.error or f"no file {check.path!r} in the workspace")
        if check.kind == "file_exists":
            return verdict(True, f"{check.path} exists ({read.size:,} bytes)")
        if check.kind == "json_schema":
            return verdict(*_json_schema(check, read))
        text, where = read.data.decode("utf-8", errors="replace"), check.path
        cut = f" (only its first {len(read.data):,} of {read.size:,} bytes were read)" if read.cut else ""
    else:
        text, where, cut = answer, "the answer", ""
    if check.kind == "contains":
        if check.value in text:
            return verdict(True, f"{where} contains {check.value!r}")
        return verdict(False, f"{where} does not contain {check.value!r}{cut}")
    match = re.compile(check.pattern, re.MULTILINE).search(text)
    if match is None:
        return verdict(False, f"no match for pattern '{check.pattern}' in {where}{cut}")
    if check.kind == "matches":
        return verdict(True, f"{where} matches '{check.pattern}': {clip(match.group(0), 80)!r}")
    # The first group that took part in the match (so alternatives may each have one), else all of it.
    found_text = next((g for g in match.groups() if g is not None), match.group(0))
    value = parse_number(found_text)
    if value is None:
        matched = clip(found_text, 80)
        return verdict(False, f"'{check.pattern}' matched {matched!r} in {where}, which is not a number")
    low, high = check.min, check.max
    if check.kind == "sql_number" and low is not None and high is not None:
        data = (low + high) / 2
        within = low <= value <= high
        return verdict(
            within, f"found {found_text.strip()}, the data says {_number(data)} ({clip(check.query, 200)})"
        )
    if low is not None and high is not None:
        expected = f"{_number(low)}..{_number(high)}"
    else:
        expected = f"at least {_number(low)}" if low is not None else f"at most {_number(high)}"
    within = (low is None or value >= low) and (high is None or value <= high)
    return verdict(within, f"found {found_text.strip()}, expected {expected}")


async def resolve_queries(
    workspace: Workspace, session_id: str, checks: Sequence[Check]
) -> tuple[list[Check], dict[int, CriterionVerdict]]:
    """Each ``sql_number`` check with its query's value as its range (``min``/``max``: the value and
    its tolerance), the others as they are; a query that fails is its check's failed verdict, by
    the check's index, and left out of the list."""
    from actors.agent.tools.base import ToolError  # here: the child process imports this module too
    from actors.agent.tools.sql import query_number

    resolved: list[Check] = []
    failed: dict[int, CriterionVerdict] = {}
    for n, check in enumerate(checks):
        if check.kind != "sql_number":
            resolved.append(check)
            continue
        try:
            value = await query_number(workspace, session_id, check.query)
        except ToolError as exc:
            failed[n] = _failed(check, f"its query failed: {clip(str(exc), 300)}")
            continue
        resolved.append(
            msgspec.structs.replace(check, min=value - check.tolerance, max=value + check.tolerance)
        )
    return resolved, failed


def run_checks(
    checks: Sequence[Check], answer: str, files: Mapping[str, bytes | FileRead | None]
) -> list[CriterionVerdict]:
    return [run_check(check, answer, files) for check in checks]


# --- the checks in a child process ----------------------------------------------------------------

#: Kinds that run a team's regex or JSON Schema (``pattern`` keywords are regexes too): in the child.
#: ``file_exists`` and ``contains`` cannot run away and stay in-process.
_RUN_APART = frozenset({"matches", "number_in_range", "json_schema", "sql_number"})
_FRAME = 4  # bytes of a frame's big-endian length


class _Job(msgspec.Struct, frozen=True):
    """What the child grades: the checks, the answer and the files read for them."""

    checks: list[Check]
    answer: str
    files: dict[str, FileRead]


async def run_checks_apart(
    checks: Sequence[Check],
    answer: str,
    files: Mapping[str, bytes | FileRead | None],
    *,
    timeout: float = CHECK_TIMEOUT,
) -> list[CriterionVerdict]:
    """:func:`run_checks`, with every check that runs a regex or a schema in a child process that gets
    ``timeout`` seconds per check. Never blocks the event loop; the child is always reaped."""
    apart = [check for check in checks if check.kind in _RUN_APART]
    if not apart:
        return run_checks(checks, answer, files)
    sent = {path: _as_read(found) for path, found in files.items() if any(c.path == path for c in apart)}
    graded = iter(await _run_child(_Job(apart, answer, sent), timeout))
    return [next(graded) if check.kind in _RUN_APART else run_check(check, answer, files) for check in checks]


def _as_read(found: bytes | FileRead | None) -> FileRead:
    return FileRead(found, size=len(found)) if isinstance(found, bytes) else found or FileRead(None)


async def _run_child(job: _Job, timeout: float) -> list[CriterionVerdict]:
    """The verdicts of ``job.checks``, in order: from the child, or failed saying why there is none."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-P",  # the grader's working directory is not on the child's import path
        "-m",
        "actors.grader.checks",
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_child_env(),
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    assert proc.stderr is not None
    verdicts: list[CriterionVerdict] = []
    stderr = bytearray()
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(_feed(proc.stdin, msgspec.msgpack.encode(job)))
            tg.create_task(_keep_tail(proc.stderr, stderr))
            overran = await _collect(proc.stdout, len(job.checks), timeout, verdicts)
            if len(verdicts) < len(job.checks):  # it overran, or wrote something else than verdicts
                _kill(proc)  # the pipes close with it: the feeder and the stderr reader end
        returncode = await proc.wait()
    finally:
        if proc.returncode is None:
            _kill(proc)
            await asyncio.shield(proc.wait())  # reaped even when the grading is cancelled
    missing = job.checks[len(verdicts) :]
    if not missing:
        return verdicts
    first, rest = missing[0], missing[1:]
    if overran:
        reason = f"the check did not finish within {timeout:g} s (a pattern that backtracks without end?)"
        after = f"not run: the check before it, {first.name!r}, did not finish within {timeout:g} s"
    else:
        said = stderr.decode("utf-8", errors="replace").strip() or "no error output"
        said = said if len(said) <= MAX_STDERR else "…" + said[-MAX_STDERR:]
        reason = f"the check's process crashed (exit code {returncode}): {said}"
        after = f"not run: the check's process crashed on {first.name!r} before it"
    verdicts.append(_failed(first, reason))
    verdicts += [_failed(check, after) for check in rest]
    return verdicts


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill the child unless asyncio has reaped it. Not ``proc.kill()`` on POSIX: ``Popen.send_signal``
    polls first, and that poll reaps a child that has just exited behind the back of asyncio's child
    watcher, whose own wait then fails ("Unknown child process pid", exit code 255 instead of the
    child's). A signal to a child that exited but is not reaped yet (a zombie) does nothing, and its
    pid cannot be reused before the watcher reaps it."""
    if proc.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        if sys.platform == "win32":
            proc.kill()
        else:
            os.kill(proc.pid, signal.SIGKILL)


def _child_env() -> dict[str, str]:
    """The child's environment: what Python needs to start and import us, and no secrets."""
    env = {k: v for k in ("PATH", "SYSTEMROOT", "LD_LIBRARY_PATH", "PYTHONHOME") if (v := os.environ.get(k))}
    root = str(Path(__file__).resolve().parents[2])  # the directory that holds actors/ and schemas/
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


async def _feed(stdin: asyncio.StreamWriter, data: bytes) -> None:
    try:
        stdin.write(data)
        await stdin.drain()
        stdin.close()
        await stdin.wait_closed()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the child died before it read its job: its exit code and stderr say why


async def _keep_tail(stream: asyncio.StreamReader, tail: bytearray) -> None:
    """Read ``stream`` to its end (a child blocked on a full pipe would look hung), keep the last bytes."""
    while block := await stream.read(65536):
        tail += block
        del tail[: max(0, len(tail) - 4 * MAX_STDERR)]


async def _collect(
    stdout: asyncio.StreamReader, expected: int, timeout: float, verdicts: list[CriterionVerdict]
) -> bool:
    """Read verdicts until ``expected`` are in or the child's output ends; True if one took longer than
    ``timeout`` (from the child's start for the first, from the one before for the others)."""
    decoder = msgspec.msgpack.Decoder(CriterionVerdict)
    while len(verdicts) < expected:
        try:
            async with asyncio.timeout(timeout):
                size = int.from_bytes(await stdout.readexactly(_FRAME), "big")
                verdicts.append(decoder.decode(await stdout.readexactly(size)))
        except TimeoutError:
            return True
        except (asyncio.IncompleteReadError, msgspec.DecodeError):
            return False  # it died (or wrote something else): the caller reports its stderr
    return False


def _failed(check: Check, explanation: str) -> CriterionVerdict:
    return CriterionVerdict(criterion=check.name, kind=check.kind, status="failed", explanation=explanation)


def main() -> None:
    """``python -m actors.grader.checks``: grade the :class:`_Job` on stdin, one verdict frame per check on
    stdout. A check that raises fails (its traceback goes to stderr); the rest still run."""
    job = msgspec.msgpack.decode(sys.stdin.buffer.read(), type=_Job)
    out = sys.stdout.buffer
    encoder = msgspec.msgpack.Encoder()
    for check in job.checks:
        try:
            verdict = run_check(check, job.answer, job.files)
        except Exception as exc:
            traceback.print_exc()
            verdict = _failed(check, clip(f"the check raised {type(exc).__name__}: {exc}", MAX_EXPLANATION))
        frame = encoder.encode(verdict)
        out.write(len(frame).to_bytes(_FRAME, "big") + frame)
        out.flush()


_GROUPED = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    """A finite number from ``text`` (``23``, ``-0.5``, ``1e3``, ``1,234.5``), or None."""
    text = text.strip().replace("\u2212", "-")
    if _GROUPED.fullmatch(text):
        text = text.replace(",", "")
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _number(value: float | None) -> str:
    assert value is not None
    value = float(value)  # an int when the Check was built in Python
    return str(int(value)) if value.is_integer() else repr(value)


def _json_schema(check: Check, read: FileRead) -> tuple[bool, str]:
    assert read.data is not None
    assert check.schema is not None
    if read.cut:
        return (
            False,
            f"{check.path} is too big to validate ({read.size:,} bytes; the limit is {len(read.data):,})",
        )
    try:
        validate = fastjsonschema.compile(check.schema, handlers=_NoRemoteRefs())
    except Exception as exc:  # fastjsonschema raises its own, and also re.error, TypeError... on bad input
        return False, f"the check's JSON Schema is invalid: {exc}"
    try:
        document = msgspec.json.decode(read.data)
    except msgspec.DecodeError as exc:
        return False, f"{check.path} is not JSON: {exc}"
    try:
        validate(document)
    except fastjsonschema.JsonSchemaValueException as exc:
        return False, f"{check.path} does not match the schema: {_ROOT.sub('$', exc.message)}"
    except Exception as exc:
        return False, f"{check.path} could not be validated: {type(exc).__name__}: {exc}"
    return True, f"{check.path} matches the schema"


_ROOT = re.compile(r"^data(?=[.\[ ]|$)")  # fastjsonschema calls the document "data"


class _NoRemoteRefs(Mapping[str, Callable[[str], Any]]):
    """fastjsonschema's URI handlers: every scheme refused, so a schema never fetches anything."""

    def __getitem__(self, scheme: str) -> Callable[[str], Any]:
        return _refuse_remote

    def __contains__(self, scheme: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _refuse_remote(uri: str) -> Any:
    raise fastjsonschema.JsonSchemaDefinitionException(
        f"$ref {uri!r} points outside the schema; only references within it (#/...) are allowed"
    )


# --- reading the workspace -------------------------------------------------------------------------


async def read_file(
    workspace: Workspace, session_id: str, path: str, limit: int = MAX_FILE_BYTES
) -> FileRead:
    """Read a file up to ``limit`` bytes; a missing or unreadable file is a :class:`FileRead` without
    data. A bus failure is :class:`Retryable` (the request is graded again later)."""
    try:
        info = await workspace.stat(session_id, path)
        if info.size <= limit:
            data = await workspace.get(session_id, path)
            return FileRead(data, size=len(data))
        chunks = await workspace.open(session_id, path)
        parts: list[bytes] = []
        got = 0
        try:
            async for block in chunks:
                parts.append(block)
                got += len(block)
                if got >= limit:
                    break
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
        return FileRead(b"".join(parts)[:limit], size=info.size)
    except FileNotFound:
        return FileRead(None)
    except InvalidPath as exc:
        return FileRead(None, error=str(exc))
    except WorkspaceError as exc:
        return FileRead(None, error=f"{path} could not be read: {exc}")
    except BusError as exc:
        raise Retryable(f"reading {path!r} from the workspace failed: {exc}") from exc


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


if __name__ == "__main__":
    main()
