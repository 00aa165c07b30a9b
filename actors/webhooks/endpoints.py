"""Webhook settings and endpoint state: per URL, consecutive failed attempts since when, whether
(why, since when) the endpoint is disabled, and the deliveries skipped without an attempt; kept in
the webhooks KV bucket, changed by compare-and-set.

:meth:`WebhookSettings.from_env` reads the ``organization_id`` and ``workspace_id`` every payload
carries from :data:`ENV` (``STAFFWORK_ORGANIZATION_ID``, ``STAFFWORK_WORKSPACE_ID``).
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from bus.connection import Bus
from bus.errors import Retryable
from bus.state import KV

_CAS_TRIES = 10
_LOCK_STRIPES = 64

#: Staffwork has no organizations or workspaces: the ids every payload's ``data`` carries (the SDK's
#: event data requires both) are these unless the environment (:data:`ENV`) names others.
DEFAULT_ORGANIZATION_ID = "staffwork"
DEFAULT_WORKSPACE_ID = "default"
#: The environment variable of each setting :meth:`WebhookSettings.from_env` reads.
ENV = {"organization_id": "STAFFWORK_ORGANIZATION_ID", "workspace_id": "STAFFWORK_WORKSPACE_ID"}


@dataclass(frozen=True)
class WebhookSettings:
    base_delay: float = 1.0  # the wait after a first failed attempt; it doubles per attempt
    max_delay: float = 600.0
    max_attempts: int = 20  # failed attempts at one delivery before it is given up
    max_failures: int = 20  # consecutive failed attempts at an endpoint (any delivery), over
    failing_for: float = 600.0  # at least this many seconds, before the endpoint is disabled
    timeout: float = 10.0  # per attempt: resolving, connecting, sending, the answer
    allow_private: bool = False  # allow private, loopback, link-local ... addresses
    ack_wait: float = 30.0
    concurrency: int = 16
    organization_id: str = DEFAULT_ORGANIZATION_ID  # every payload's data.organization_id
    workspace_id: str = DEFAULT_WORKSPACE_ID  # every payload's data.workspace_id

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **values: Any) -> WebhookSettings:
        """Settings with ``values``, and the ids of :data:`ENV` that ``environ`` sets (not empty)."""
        settings = cls(**values)
        organization = environ.get(ENV["organization_id"], "").strip() or settings.organization_id
        workspace = environ.get(ENV["workspace_id"], "").strip() or settings.workspace_id
        return replace(settings, organization_id=organization, workspace_id=workspace)

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 1): ``base_delay`` doubled per
        attempt, capped at ``max_delay``, then a random share between half and all of it."""
        delay = min(self.base_delay * 2.0 ** min(max(attempt, 1) - 1, 64), self.max_delay)
        return random.uniform(delay / 2, delay)


class EndpointState(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint's health, per URL: consecutive failed attempts and since when; disabled, why and
    since when; deliveries skipped without an attempt since the last one that arrived, and why."""

    #: the endpoint's URL, whole (the KV key is a digest of it)
    url: str
    #: consecutive failed attempts (of any delivery) since the last 2xx answer
    failures: int = 0
    #: when the first of those failed attempts was (Unix time, seconds); 0 without failures
    failing_since: float = 0.0
    #: no delivery is attempted until ``staffwork webhooks enable URL``
    disabled: bool = False
    #: why the endpoint is disabled (the streak and its last error); empty while enabled
    reason: str = ""
    #: when the endpoint was disabled (Unix time, seconds); 0 while enabled
    since: float = 0.0
    #: deliveries given up without an attempt (refused address, no secret, disabled endpoint ...)
    #: since the last one that arrived
    skipped: int = 0
    #: why the last of those was skipped
    skip_reason: str = ""
    #: when the last of those was skipped (Unix time, seconds); 0 without skips
    skipped_at: float = 0.0

    def failed(self, error: str, now: float, settings: WebhookSettings) -> EndpointState:
        """The state after a failed attempt at ``now``: the streak is one longer, and the endpoint is
        disabled if the streak is ``max_failures`` long and began ``failing_for`` seconds ago."""
        if self.disabled:
            return self
        failures = self.failures + 1
        began = self.failing_since if self.failures and self.failing_since else now
        state = msgspec.structs.replace(self, failures=failures, failing_since=began)
        if failures < settings.max_failures or now - began < settings.failing_for:
            return state
        reason = f"{failures} consecutive failed attempts (the last: {error})"
        return msgspec.structs.replace(state, disabled=True, reason=reason, since=now)

    def skip(self, reason: str, now: float) -> EndpointState:
        """The state after a delivery was skipped at ``now`` for ``reason``."""
        return msgspec.structs.replace(self, skipped=self.skipped + 1, skip_reason=reason, skipped_at=now)


_state = msgspec.json.Decoder(EndpointState)


class Endpoints:
    """Endpoint states in the webhooks KV bucket, changed by compare-and-set. Changes to one URL in
    this process wait for each other (a lock per stripe of keys), so that the attempts of many
    deliveries to an endpoint that fail together do not exhaust each other's compare-and-set tries;
    between processes, a lost race is tried again."""

    def __init__(self, kv: KV) -> None:
        self.kv = kv
        self._locks = [asyncio.Lock() for _ in range(_LOCK_STRIPES)]

    @staticmethod
    def key(url: str) -> str:
        return "ep_" + hashlib.sha256(url.encode()).hexdigest()[:32]

    async def get(self, url: str) -> EndpointState:
        value = await self.kv.get(self.key(url))
        return _state.decode(value) if value else EndpointState(url=url)

    async def change(
        self, url: str, change: Callable[[EndpointState], EndpointState]
    ) -> tuple[EndpointState, EndpointState]:
        """Apply ``change`` to the current state; (the state before, the state after)."""
        key = self.key(url)
        async with self._locks[int(key[3:11], 16) % _LOCK_STRIPES]:
            for tries in range(_CAS_TRIES):
                if tries:
                    await asyncio.sleep(random.uniform(0, 0.01 * tries))  # another process won
                entry = await self.kv.entry(key)
                old = _state.decode(entry[0]) if entry else EndpointState(url=url)
                new = change(old)
                if new == old:
                    return old, new
                value = msgspec.json.encode(new)
                if await (self.kv.update(key, value, entry[1]) if entry else self.kv.create(key, value)):
                    return old, new
        raise Retryable(f"the state of webhook endpoint {url} is contended ({key})", delay=1.0)


async def enable_endpoint(bus: Bus, url: str) -> bool:
    """Enable ``url`` again (failures forgotten); whether it was disabled."""
    endpoints = Endpoints(await bus.kv(bus.subjects.webhooks_bucket))
    old, _ = await endpoints.change(url, lambda state: EndpointState(url=url))
    return old.disabled


async def endpoint_states(bus: Bus) -> list[EndpointState]:
    """Every endpoint that has a state (it failed, was disabled or had a delivery skipped)."""
    kv = await bus.kv(bus.subjects.webhooks_bucket)
    values = [await kv.get(key) for key in await kv.keys("ep_")]
    return [_state.decode(value) for value in values if value]
