"""Values every resource of the HTTP API writes the same way: times (RFC 3339 in UTC with
milliseconds, which sort as they read) and metadata (the hosted service's limits)."""

from __future__ import annotations

from datetime import UTC, datetime

from actors.api.errors import bad_request


def rfc3339(when: datetime) -> str:
    """``when`` in UTC with milliseconds: ``2026-12-02T10:11:12.345Z``."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_now() -> str:
    return rfc3339(datetime.now(UTC))


def check_metadata(metadata: dict[str, str]) -> dict[str, str]:
    """The hosted limits: at most 16 pairs, keys up to 64 characters, values up to 512."""
    if len(metadata) > 16:
        raise bad_request(f"metadata has {len(metadata)} keys, over the 16 allowed")
    for key, value in metadata.items():
        if not 1 <= len(key) <= 64:
            raise bad_request(f"metadata key {key[:80]!r} must be 1 to 64 characters")
        if len(value) > 512:
            raise bad_request(f"metadata[{key!r}] is {len(value)} characters, over the 512 allowed")
    return metadata
