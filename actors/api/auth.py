"""API keys: each key the server is configured with maps to a workspace, and a workspace sees only
its own agents, environments, sessions and stores.

Keys come as ``WORKSPACE=KEY`` pairs, comma-separated (``--api-key``, or ``STAFFWORK_API_KEYS``):
the workspace is a subject token, the key anything but a comma. A request carries its key as
``x-api-key`` or ``Authorization: Bearer`` (the SDK sends the latter). Keys are compared by their
SHA-256 digest, in constant time.

A workspace's webhook endpoints, as the hosted service configures them per workspace, come as
``WORKSPACE=URL`` pairs in ``STAFFWORK_API_WEBHOOKS``: every session the workspace starts announces
every webhook event type there, each payload with the session's API id and ``workspace_id`` the
workspace, signed with the secret in the webhooks actor's ``STAFFWORK_API_WEBHOOK_SECRET``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import get_args

from bus.errors import ConfigError
from bus.subjects import check_token
from schemas.webhooks import WebhookEventType, WebhookSpec

ENV = "STAFFWORK_API_KEYS"
WEBHOOKS_ENV = "STAFFWORK_API_WEBHOOKS"
#: the webhooks actor's environment variable with the signing secret of the API's endpoints
WEBHOOK_SECRET_ENV = "STAFFWORK_API_WEBHOOK_SECRET"
#: a workspace's endpoints get every event type (as the hosted service's can)
EVERY_EVENT: list[WebhookEventType] = list(get_args(WebhookEventType))


@dataclass(frozen=True)
class ApiKeys:
    """The configured keys, by digest; :meth:`workspace` finds a request's."""

    digests: tuple[tuple[bytes, str], ...]
    #: each workspace's webhook endpoints (its sessions' ``webhooks``)
    webhooks: Mapping[str, tuple[WebhookSpec, ...]] = field(default_factory=dict)

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

    def with_webhooks(self, text: str, *, source: str = WEBHOOKS_ENV) -> ApiKeys:
        """These keys with the endpoints of ``ws1=https://...,ws2=https://...`` (a workspace may be
        named more than once); a :class:`ConfigError` naming the offending entry."""
        endpoints: dict[str, tuple[WebhookSpec, ...]] = {}
        known = {workspace for _, workspace in self.digests}
        for n, entry in enumerate(part.strip() for part in text.split(",")):
            if not entry:
                continue
            workspace, sep, url = entry.partition("=")
            if not sep or not url:
                raise ConfigError(f"{source}: entry {n + 1} is not WORKSPACE=URL (got {entry!r})")
            if workspace not in known:
                raise ConfigError(
                    f"{source}: entry {n + 1}: no API key has the workspace {workspace!r} "
                    f"(the keys' workspaces: {', '.join(sorted(known))})"
                )
            try:
                spec = WebhookSpec(
                    url=url, events=EVERY_EVENT, secret_env=WEBHOOK_SECRET_ENV, workspace_id=workspace
                )
            except ValueError as exc:
                raise ConfigError(f"{source}: entry {n + 1}: {exc}") from None
            endpoints[workspace] = (*endpoints.get(workspace, ()), spec)
        return replace(self, webhooks=endpoints)

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
