"""Webhook settings and endpoint state: per URL, consecutive failed attempts since when, and whether
(why, since when) the endpoint is disabled; kept in the webhooks KV bucket, changed by compare-and-set.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from bus.connection import Bus
from bus.errors import Retryable
from bus.state import KV

_CAS_TRIES = 10
_LOCK_STRIPES = 64


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

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after failed attempt ``attempt`` (from 1): ``base_delay`` doubled per
        attempt, capped at ``max_delay``, then a random share between half and all of it."""
        delay = min(self.base_delay * 2.0 ** min(max(attempt, 1) - 1, 64), self.max_delay)
        return random.uniform(delay / 2, delay)


class EndpointState(msgspec.Struct, frozen=True, kw_only=True):
    """An endpoint's health, per URL: consecutive failed attempts and when the first of them was
    (Unix time); disabled, why and since when."""

    url: str
    failures: int = 0
    failing_since: float = 0.0
    disabled: bool = False
    reason: str = ""
    since: float = 0.0

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
    """Every endpoint that has a state (it failed, or was disabled, at some point)."""
    kv = await bus.kv(bus.subjects.webhooks_bucket)
    values = [await kv.get(key) for key in await kv.keys("ep_")]
    return [_state.decode(value) for value in values if value]
