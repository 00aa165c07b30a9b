"""The ``sql`` tool's built databases, and a per-process cache of them keyed by the files they hold.

A :class:`Database` is an image (``sqlite3.Connection.serialize()``) and its table catalog, keyed by
the data files' paths and workspace digests (:data:`Files`; a changed file is a new key).
:class:`BuildCache` drops the least recently used values first: it holds at most ``max_entries``
weighing ``max_bytes`` in all (a heavier value is not kept). It is thread-safe (values are built and
stored in worker threads), and concurrent misses on one key build once: the first caller builds, the
others wait for its value or its error (if it is cancelled, a waiter builds instead).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")

Files = tuple[tuple[str, str], ...]  # (path, digest) of each data file, by path


@dataclass(frozen=True)
class Database:
    image: bytes  # b"" when it has no table (SQLite cannot serialize an empty database)
    catalog: str  # its tables and columns, and the files skipped (what an error lists)


class BuildCache(Generic[K, V]):
    def __init__(self, *, max_bytes: int, max_entries: int, weigh: Callable[[V], int]) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._weigh = weigh
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, tuple[V, int]] = OrderedDict()
        # A build's outcome for its waiters: the value, the build's error, or None if it was cancelled
        # (not raised through the future: a cancelled waiter would leave it unretrieved, and logged).
        self._pending: dict[K, concurrent.futures.Future[V | BaseException | None]] = {}
        self.bytes = 0  # the weight of the values kept
        self.builds = 0  # how many times a miss called its build

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._get(key)

    def _get(self, key: K) -> V | None:  # with the lock held
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: K, value: V) -> None:
        """Keep ``value`` under ``key`` (unless it alone passes ``max_bytes``), dropping the least
        recently used values beyond the bounds."""
        weight = self._weigh(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            if weight <= self.max_bytes:
                self._entries[key] = (value, weight)
                self.bytes += weight
            while self.bytes > self.max_bytes or len(self._entries) > self.max_entries:
                _, (_, dropped) = self._entries.popitem(last=False)
                self.bytes -= dropped

    async def get_or_build(self, key: K, build: Callable[[], Awaitable[V]]) -> V:
        """The value under ``key``, else ``build()``'s, built once for the callers missing at once.
        ``build`` stores what it builds (:meth:`put`), under the key of what it found."""
        while True:
            with self._lock:
                if (value := self._get(key)) is not None:
                    return value
                pending = self._pending.get(key)
                if pending is None:
                    pending = self._pending[key] = concurrent.futures.Future()
                    self.builds += 1
                    break
            # Shielded: a waiter's cancellation must not cancel the builder's future.
            outcome = await asyncio.shield(asyncio.wrap_future(pending))
            if isinstance(outcome, BaseException):
                raise outcome
            if outcome is not None:
                return outcome
        try:
            value = await build()
        except Exception as exc:
            pending.set_result(exc)
            raise
        except BaseException:  # cancelled (or the process is stopping): a waiter builds instead
            pending.set_result(None)
            raise
        else:
            pending.set_result(value)
            return value
        finally:
            with self._lock:
                del self._pending[key]
