"""The API's own resources (environments, agents and their versions...) as JSON records in the
``<key>_api`` KV bucket, one key per record: ``<workspace>.<kind>.<id>``. Changes are compare-and-set
on the entry's revision, so two ``api`` processes never lose each other's writes."""

from __future__ import annotations

from typing import TypeVar

import msgspec

from bus.connection import Bus
from bus.state import KV
from bus.subjects import is_token

T = TypeVar("T")


class Records:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._kv: KV | None = None

    async def kv(self) -> KV:
        if self._kv is None:
            self._kv = await self.bus.kv(self.bus.subjects.api_bucket)
        return self._kv

    @staticmethod
    def key(workspace: str, kind: str, id: str) -> str:
        return f"{workspace}.{kind}.{id}"

    async def create(self, workspace: str, kind: str, id: str, record: object) -> bool:
        """Store a new record; False if one with that id exists."""
        return await (await self.kv()).create(self.key(workspace, kind, id), msgspec.json.encode(record))

    async def get(self, workspace: str, kind: str, id: str, type: type[T]) -> tuple[T, int] | None:
        """The record and its revision (for :meth:`update`), or None; also None for an id that is
        not a single token (a caller's id from a URL must never address another key)."""
        if not is_token(id):
            return None
        entry = await (await self.kv()).entry(self.key(workspace, kind, id))
        if entry is None:
            return None
        return msgspec.json.decode(entry[0], type=type), entry[1]

    async def update(self, workspace: str, kind: str, id: str, record: object, revision: int) -> bool:
        """Replace the record if it is still at ``revision``; False if it changed since."""
        data = msgspec.json.encode(record)
        return await (await self.kv()).update(self.key(workspace, kind, id), data, revision)

    async def list(self, workspace: str, kind: str, type: type[T]) -> list[T]:
        """Every record of ``kind`` in ``workspace`` (in key order), in one read of the bucket."""
        kv = await self.kv()
        return [msgspec.json.decode(data, type=type) for _, data in await kv.values(f"{workspace}.{kind}.*")]
