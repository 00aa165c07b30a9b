"""The webhooks actor: a session's lifecycle events become signed HTTP deliveries, retried from JetStream.

``WebhookEvents`` (consumer ``webhooks``) turns each trace event a webhook can announce into one
:class:`~schemas.webhooks.WebhookDelivery` per endpoint of the session's team (read from its session
record) that wants it, on ``<root>.s.<session>.hook``, deduplicated per event and endpoint.
``WebhookDeliverer`` (consumer ``webhook_deliveries``) POSTs each one: a 2xx is delivered, anything
else is nak'ed with backoff until ``max_attempts``, and each URL's failure streak can disable its
endpoint (:mod:`actors.webhooks.endpoints`). Both run in the ``webhooks`` role (``actors.roles``).
The protocol, the backoff and when an endpoint is disabled: docs/architecture.md, "Webhooks".
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
