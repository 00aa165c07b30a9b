"""Machine checks of an outcome: criteria graded without a model, and reading the workspace for them.

A file exists; a file (or the answer) contains a string or matches a regex; a JSON file validates
against a JSON Schema (remote ``$ref``s are refused: a team file must not make the grader fetch
URLs); a number in a file (or the answer) lies in a range. Each check is a pure function of the
answer and the files read, so it is tested without a bus.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import fastjsonschema
import msgspec

from bus.errors import BusError, FileNotFound, InvalidPath, Retryable, WorkspaceError
from bus.workspace import Workspace
from schemas.outcome import Check, CriterionStatus, CriterionVerdict

MAX_FILE_BYTES = 10 * 1024 * 1024  # read of one file for a check
MAX_EXPLANATION = 1000  # characters of one criterion's explanation


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
    if low is not None and high is not None:
        expected = f"{_number(low)}..{_number(high)}"
    else:
        expected = f"at least {_number(low)}" if low is not None else f"at most {_number(high)}"
    within = (low is None or value >= low) and (high is None or value <= high)
    return verdict(within, f"found {found_text.strip()}, expected {expected}")


def run_checks(
    checks: Sequence[Check], answer: str, files: Mapping[str, bytes | FileRead | None]
) -> list[CriterionVerdict]:
    return [run_check(check, answer, files) for check in checks]


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
