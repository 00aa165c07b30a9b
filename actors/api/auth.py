"""API keys: each key the server is configured with maps to a workspace, and a workspace sees only
its own agents, environments, sessions and stores.

Keys come as ``WORKSPACE=KEY`` pairs, comma-separated (``--api-key``, or ``STAFFWORK_API_KEYS``):
the workspace is a subject token, the key anything but a comma. A request carries its key as
``x-api-key`` or ``Authorization: Bearer`` (the SDK sends the latter). Keys are compared by their
SHA-256 digest, in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from bus.errors import ConfigError
from bus.subjects import check_token

ENV = "STAFFWORK_API_KEYS"


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, by digest; :meth:`workspace` finds a request's."""

    digests: tuple[tuple[bytes, str], ...]

    @classmethod
    def parse(cls, text: str, *, source: str = ENV) -> ApiKeys:
        """``ws1=key1,ws2=key2``; a :class:`ConfigError` naming the offending entry."""
        pairs: list[tuple[bytes, str]] = []
        for n, entry in enumerate(part.strip() for part in text.split(",")):
            if not entry:
                continue
            workspace, sep, key = entry.partition("=")
            if not sep or not key:
                raise ConfigError(f"{source}: entry {n + 1} is not WORKSPACE=KEY (got {workspace!r}=...)")
            check_token(workspace, f"{source}: entry {n + 1}: workspace")
            if len(key) < 16:
                raise ConfigError(
                    f"{source}: entry {n + 1}: the key of {workspace!r} is shorter than 16 characters"
                )
            pairs.append((_digest(key), workspace))
        if not pairs:
            raise ConfigError(f"{source}: no API key configured (WORKSPACE=KEY, comma-separated)")
        return cls(tuple(pairs))

    def workspace(self, key: str) -> str | None:
        """The workspace of ``key``, or None if no configured key matches."""
        digest = _digest(key)
        found = None
        for known, workspace in self.digests:  # every entry, so the time does not tell which matched
            if hmac.compare_digest(known, digest):
                found = workspace
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def request_key(headers: dict[str, str]) -> str:
    """The key a request carries (``x-api-key`` first, then a bearer token), or ""."""
    if key := headers.get("x-api-key", ""):
        return key
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""
