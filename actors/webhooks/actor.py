"""Webhooks: a session's trace events become signed HTTP deliveries, retried and durable in JetStream.

Two actors, run by one process (:func:`serve_webhooks`):

``WebhookEvents`` (consumer ``webhooks``) reads the trace events a webhook can announce
(``WEBHOOK_SOURCES``), finds the session's endpoints (the ``webhooks`` of the team in the session
directory; the lead has already put a submit's override there) and publishes one
:class:`~schemas.webhooks.WebhookDelivery` per endpoint that wants the event's type, on
``<root>.s.<session>.hook``. The event id is derived from the trace event's ``msg_id`` and the dedup
id from the event id and the endpoint's index, so a redelivered trace event does not deliver twice.

``WebhookDeliverer`` (consumer ``webhook_deliveries``) POSTs each delivery, signed per the Standard
Webhooks spec, so that any Standard Webhooks library verifies it::

    webhook-id: whevt_...                   the same on every attempt
    webhook-timestamp: 1767225600           seconds, at this attempt
    webhook-signature: v1,<base64 HMAC-SHA256(key, "<id>.<timestamp>.<body>")>

    {"type":"event","id":"whevt_...","created_at":"...Z","data":{"type":"session.status_idled","id":"ses_...",...}}

A 2xx answer is a delivery. Anything else is a failed attempt: another status (a redirect too: they
are not followed), a timeout, a connection or resolution error. It is retried with exponential
backoff and jitter (:meth:`WebhookSettings.backoff`) by nak'ing the message with that delay, so a
pending delivery lives in JetStream and survives a restart; the attempt number is the message's
delivery count. Deliveries are not ordered. A delivery is given up after ``max_attempts`` failed
attempts (54 to 107 minutes with the default settings): its last ``webhook.delivery_failed`` event
has ``retry_in_s=None``.

Endpoint state is kept per URL, shared by every session and team that lists it, in the KV bucket
``<key>_webhooks`` under ``ep_<sha256(url)[:32]>``, changed by compare-and-set: the current streak
of consecutive failed attempts (of any delivery) and when it began; disabled, why and since when. A
2xx answer ends the streak. The endpoint is disabled (one ``webhook.endpoint_disabled`` event) by a
failed attempt that makes the streak ``max_failures`` long *and* at least ``failing_for`` seconds
old. Both, so that a short outage does not disable it: the first attempts of many queued deliveries
fail together within a second, and once the endpoint is back they all arrive. With the defaults
(20 failures, 10 minutes), an endpoint that keeps failing is disabled at the first failure after
10 minutes if it had 20 attempts by then, else at its 20th (with one delivery: the attempt at which
that delivery is given up). A delivery the receiver always rejects, while others arrive, is given up
and does not disable it. A missing ``secret_env`` or a refused address disables it at once.
Deliveries for a disabled endpoint, the pending ones included, are acked without an attempt (each
logged as ``webhook_skipped`` with the running count ``skipped``) until :func:`enable_endpoint` is
called; they are not replayed.

Trace events (stored by the collector, shown by ``tail``) show an endpoint's URL
:func:`~actors.webhooks.http.redacted`, without userinfo and query, which can carry tokens; logs and
``webhooks list`` show it whole.

A trace event redelivered after JetStream's duplicate window (two minutes by default; redelivery
comes after ``ack_wait``) would queue its deliveries again: the receiver sees the same ``webhook-id``
twice, which the spec allows for (receivers deduplicate on it).

Addresses: the host is resolved here and the connection goes to the address that was checked (the
``Host`` header and TLS server name stay the URL's), so DNS cannot swap in another address after the
check. Private, loopback, link-local, site-local, reserved, multicast, unspecified and other
non-public addresses (IPv4 inside IPv6 included) are refused unless ``allow_private``; a refused
endpoint is disabled at once. Connections are not kept alive, so a connection is never reused for
another host name.
"""

from __future__ import annotations

import os
import time
from typing import Any, assert_never

import httpx2
import msgspec
import structlog

from actors.sessions.directory import SessionDirectory
from actors.webhooks.endpoints import (
    Endpoints,
    EndpointState,
    WebhookSettings,
    enable_endpoint,
    endpoint_states,
)
from actors.webhooks.http import (
    AddressRefused,
    WebhookError,
    event_id_for,
    http_client,
    payload,
    post,
    redacted,
    send_test_event,
    signed_headers,
)
from bus.actor import BaseActor, Context
from bus.connection import Bus
from bus.errors import BusError, Retryable
from bus.provision import ConsumerSpec, webhook_deliveries_consumer, webhook_events_consumer
from bus.subjects import Subjects
from schemas.trace import (
    OutcomeEvaluationEnd,
    SessionStatusIdle,
    SessionStatusRunning,
    SessionStatusTerminated,
    ThreadCreated,
    ThreadStatusIdle,
    WebhookDelivered,
    WebhookEndpointDisabled,
    WebhookFailed,
)
from schemas.webhooks import WebhookDelivery, WebhookEventType, WebhookSpec, secret_key

__all__ = [
    "AddressRefused",
    "EndpointState",
    "WebhookDeliverer",
    "WebhookError",
    "WebhookEvents",
    "WebhookSettings",
    "enable_endpoint",
    "endpoint_states",
    "send_test_event",
]

log = structlog.get_logger("staffwork.webhooks")

WEBHOOKS = "webhooks"  # the webhooks actor's thread and agent in the trace

_ACTOR_HINT = "allow with --allow-private-webhooks"

#: The trace events a webhook can announce (``bus.provision.WEBHOOK_SOURCES`` filters the same).
WebhookSource = (
    SessionStatusRunning
    | SessionStatusIdle
    | SessionStatusTerminated
    | ThreadCreated
    | ThreadStatusIdle
    | OutcomeEvaluationEnd
)


# --- the actors ------------------------------------------------------------------------------------


def webhook_event(event: WebhookSource) -> tuple[WebhookEventType, dict[str, Any]]:
    """The webhook event type a trace event announces, and its details for ``data``."""
    match event:
        case SessionStatusRunning():
            return "session.status_run_started", {}
        case SessionStatusIdle():
            return "session.status_idled", {
                "stop_reason": event.stop_reason,
                "usage": msgspec.to_builtins(event.usage),
            }
        case SessionStatusTerminated():
            return "session.status_terminated", {"reason": event.reason}
        case ThreadCreated():
            return "session.thread_created", {"thread_id": event.thread_id, "agent": event.agent}
        case ThreadStatusIdle():
            thread: dict[str, Any] = {"thread_id": event.thread_id, "agent": event.agent}
            return "session.thread_idled", {**thread, "stop_reason": event.stop_reason}
        case OutcomeEvaluationEnd():
            verdict: dict[str, Any] = {"outcome_id": event.outcome_id, "iteration": event.iteration}
            return "session.outcome_evaluation_ended", {**verdict, "result": event.result}
        case _:
            assert_never(event)


class WebhookEvents(BaseActor[WebhookSource]):
    """Turns trace events into deliveries, one per endpoint of the session that wants the type."""

    role = "webhook_events"
    inbox = WebhookSource

    def __init__(self, settings: WebhookSettings | None = None) -> None:
        self.settings = settings or WebhookSettings()
        self._directory: SessionDirectory | None = None

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        return webhook_events_consumer(subjects, ack_wait=self.settings.ack_wait)

    async def on_start(self, bus: Bus) -> None:
        self._directory = SessionDirectory(bus)

    async def handle(self, msg: WebhookSource, ctx: Context) -> None:
        assert self._directory is not None
        try:
            team = await self._directory.team(msg.session_id)
            if team is None or not team.webhooks:
                return
            event_type, details = webhook_event(msg)
            event_id = event_id_for(msg.msg_id)
            data = {"type": event_type, "id": msg.session_id, **details}
            for index, spec in enumerate(team.webhooks):
                if event_type not in spec.events:
                    continue
                delivery_id = f"{event_id}.{index}"
                delivery = WebhookDelivery(
                    session_id=msg.session_id,
                    msg_id=delivery_id,
                    endpoint=index,
                    url=spec.url,
                    event_id=event_id,
                    event_type=event_type,
                    created_at=msg.time,
                    data=data,
                )
                await ctx.bus.publish(ctx.bus.subjects.hook(msg.session_id), delivery, msg_id=delivery_id)
                ctx.log.debug("webhook_queued", url=spec.url, event_id=event_id, event_type=event_type)
        except BusError as exc:
            raise Retryable(f"queueing webhooks: {exc}", delay=self.settings.backoff(ctx.delivery)) from exc


class WebhookDeliverer(BaseActor[WebhookDelivery]):
    """POSTs deliveries; see the module docstring. ``delivered``, ``failed`` (attempts) and
    ``skipped`` (deliveries given up without an attempt) count what this instance did."""

    role = "webhook_deliverer"
    inbox = WebhookDelivery

    def __init__(self, settings: WebhookSettings | None = None) -> None:
        self.settings = settings or WebhookSettings()
        self.delivered = 0
        self.failed = 0
        self.skipped = 0
        self._client: httpx2.AsyncClient | None = None
        self._directory: SessionDirectory | None = None
        self._endpoints: Endpoints | None = None

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        return webhook_deliveries_consumer(subjects, ack_wait=self.settings.ack_wait)

    async def on_start(self, bus: Bus) -> None:
        self._endpoints = Endpoints(await bus.kv(bus.subjects.webhooks_bucket))
        self._directory = SessionDirectory(bus)
        log.info(
            "webhooks_ready",
            allow_private=self.settings.allow_private,
            max_attempts=self.settings.max_attempts,
            max_failures=self.settings.max_failures,
            failing_for=self.settings.failing_for,
        )

    async def on_stop(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def handle(self, msg: WebhookDelivery, ctx: Context) -> None:
        try:
            await self._deliver(msg, ctx)
        except BusError as exc:
            raise Retryable(f"webhook {msg.url}: {exc}", delay=self.settings.backoff(ctx.delivery)) from exc

    async def _deliver(self, msg: WebhookDelivery, ctx: Context) -> None:
        assert self._endpoints is not None
        assert self._directory is not None
        endpoints, bound = self._endpoints, ctx.log.bind(url=msg.url, event_id=msg.event_id)
        state = await endpoints.get(msg.url)
        if state.disabled:
            self.skipped += 1
            bound.info("webhook_skipped", reason=f"endpoint disabled: {state.reason}", skipped=self.skipped)
            return
        team = await self._directory.team(msg.session_id)
        spec = team.webhooks[msg.endpoint] if team and msg.endpoint < len(team.webhooks) else None
        if spec is None or spec.url != msg.url:
            self.skipped += 1
            reason = f"the session has no endpoint {msg.endpoint} at this URL"
            bound.warning("webhook_skipped", reason=reason, skipped=self.skipped)
            return
        try:
            key = _key_of(spec)
        except WebhookError as exc:
            await self._disable(msg, exc.reason, ctx)
            return
        if self._client is None:
            self._client = http_client(self.settings.timeout)
        body = payload(msg.event_id, msg.created_at, msg.data)
        started = time.monotonic()
        try:
            status, text = await post(
                self._client,
                msg.url,
                body,
                signed_headers(key, msg.event_id, body),
                allow_private=self.settings.allow_private,
                timeout=self.settings.timeout,
            )
        except AddressRefused as exc:
            await self._disable(msg, f"{exc.reason} ({_ACTOR_HINT})", ctx)
            return
        except WebhookError as exc:
            error = exc.reason
        else:
            if 200 <= status < 300:
                await endpoints.change(msg.url, lambda s: s if s.disabled else EndpointState(url=msg.url))
                self.delivered += 1
                took = (time.monotonic() - started) * 1000
                bound.info(
                    "webhook_delivered", attempt=ctx.delivery, status=status, duration_ms=round(took, 1)
                )
                await ctx.bus.emit(
                    WebhookDelivered(
                        session_id=msg.session_id,
                        thread_id=WEBHOOKS,
                        agent=WEBHOOKS,
                        url=redacted(msg.url),
                        event_id=msg.event_id,
                        event_type=msg.event_type,
                        attempt=ctx.delivery,
                        status_code=status,
                        duration_ms=took,
                    )
                )
                return
            error = f"HTTP {status}" + (f": {text}" if text else "")
        await self._failed(msg, error, ctx)

    async def _failed(self, msg: WebhookDelivery, error: str, ctx: Context) -> None:
        """Count a failed attempt; retry later (raises :class:`Retryable`), or give the delivery up:
        its last attempt, or the endpoint is (now) disabled."""
        assert self._endpoints is not None
        settings = self.settings
        old, new = await self._endpoints.change(msg.url, lambda s: s.failed(error, time.time(), settings))
        self.failed += 1
        final = new.disabled or ctx.delivery >= settings.max_attempts
        retry = None if final else settings.backoff(ctx.delivery)
        bound = ctx.log.bind(url=msg.url, event_id=msg.event_id, attempt=ctx.delivery)
        bound.info("webhook_failed", error=error, retry_in_s=retry)
        await ctx.bus.emit(
            WebhookFailed(
                session_id=msg.session_id,
                thread_id=WEBHOOKS,
                agent=WEBHOOKS,
                url=redacted(msg.url),
                event_id=msg.event_id,
                event_type=msg.event_type,
                attempt=ctx.delivery,
                error=error,
                retry_in_s=retry,
            )
        )
        if retry is not None:
            raise Retryable(f"webhook {msg.url}: {error}", delay=retry)
        if not new.disabled:
            bound.warning("webhook_given_up", reason=f"{ctx.delivery} failed attempts")
        elif not old.disabled:
            await self._announce(msg, new, ctx)

    async def _disable(self, msg: WebhookDelivery, reason: str, ctx: Context) -> None:
        """Disable the endpoint at once (a refused address, no secret) and give up the delivery."""
        assert self._endpoints is not None
        disable = {"disabled": True, "reason": reason, "since": time.time()}
        old, new = await self._endpoints.change(
            msg.url, lambda s: s if s.disabled else msgspec.structs.replace(s, **disable)
        )
        self.skipped += 1
        if not old.disabled:
            await self._announce(msg, new, ctx)

    async def _announce(self, msg: WebhookDelivery, state: EndpointState, ctx: Context) -> None:
        ctx.log.warning(
            "webhook_endpoint_disabled", url=msg.url, reason=state.reason, failures=state.failures
        )
        await ctx.bus.emit(
            WebhookEndpointDisabled(
                session_id=msg.session_id,
                thread_id=WEBHOOKS,
                agent=WEBHOOKS,
                url=redacted(msg.url),
                reason=state.reason,
                failures=state.failures,
            )
        )


def _key_of(spec: WebhookSpec) -> bytes:
    """The endpoint's signing key: its inline secret, or the one in this process's ``secret_env``."""
    secret = spec.secret or os.environ.get(spec.secret_env, "")
    if not secret:
        raise WebhookError(spec.url, f"secret_env {spec.secret_env!r} is not set for the webhooks actor")
    try:
        return secret_key(secret)
    except ValueError as exc:
        raise WebhookError(spec.url, f"the secret in {spec.secret_env!r} is invalid: {exc}") from None
