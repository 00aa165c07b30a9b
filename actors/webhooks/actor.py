"""The webhooks actor: a session's lifecycle events become signed HTTP deliveries, retried from JetStream.

``WebhookEvents`` (consumer ``webhooks``) turns each trace event a webhook can announce into one
:class:`~schemas.webhooks.WebhookDelivery` per endpoint of the session's team (read from its session
record) that wants it, on ``<root>.s.<session>.hook``, deduplicated per event and endpoint.
``WebhookDeliverer`` (consumer ``webhook_deliveries``) POSTs each one: a 2xx is delivered, anything
else is nak'ed with backoff until ``max_attempts``, and each URL's failure streak can disable its
endpoint (:mod:`actors.webhooks.endpoints`). A delivery that cannot be attempted (a refused address,
no secret, a disabled endpoint) is skipped: ``webhook.delivery_skipped`` on the session's trace says
why. Both run in the ``webhooks`` role (``actors.roles``).
The protocol, the backoff and when an endpoint is disabled: docs/architecture.md, "Webhooks".
"""

from __future__ import annotations

import os
import time

import httpx2
import structlog

from actors.sessions.directory import SessionDirectory
from actors.webhooks.endpoints import (
    Endpoints,
    EndpointState,
    WebhookSettings,
    enable_endpoint,
    endpoint_states,
)
from actors.webhooks.events import WebhookSource, webhook_event
from actors.webhooks.http import (
    ALLOW_PRIVATE_HINT,
    AddressRefused,
    WebhookError,
    http_client,
    payload,
    post,
    redacted,
    send_test_event,
    signed_headers,
    webhook_event_id,
)
from bus.actor import BaseActor, Context
from bus.connection import Bus
from bus.errors import BusError, Retryable
from bus.provision import ConsumerSpec, webhook_deliveries_consumer, webhook_events_consumer
from bus.subjects import Subjects
from schemas.trace import (
    WebhookDelivered,
    WebhookDeliverySkipped,
    WebhookEndpointDisabled,
    WebhookFailed,
)
from schemas.webhooks import WebhookDelivery, WebhookSpec, secret_key

__all__ = [
    "AddressRefused",
    "EndpointState",
    "WebhookDeliverer",
    "WebhookError",
    "WebhookEvents",
    "WebhookSettings",
    "WebhookSource",
    "enable_endpoint",
    "endpoint_states",
    "send_test_event",
    "webhook_event",
    "webhook_event_id",
]

log = structlog.get_logger("staffwork.webhooks")

WEBHOOKS = "webhooks"  # the webhooks actor's thread and agent in the trace


# --- the actors ------------------------------------------------------------------------------------


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
            event_type, data = webhook_event(msg, self.settings)
            event_id = webhook_event_id(msg)
            for index, spec in enumerate(team.webhooks):
                if event_type not in spec.events:
                    continue
                delivery_id = f"{event_id}.{index}"
                sent = {**data, "workspace_id": spec.workspace_id} if spec.workspace_id else data
                delivery = WebhookDelivery(
                    session_id=msg.session_id,
                    msg_id=delivery_id,
                    endpoint=index,
                    url=spec.url,
                    event_id=event_id,
                    event_type=event_type,
                    created_at=msg.time,
                    data=sent,
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
            organization_id=self.settings.organization_id,
            workspace_id=self.settings.workspace_id,
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
            reason = f"the endpoint is disabled ({state.reason}); staffwork webhooks enable turns it on again"
            await self._skip(msg, reason, ctx, known=True)
            return
        team = await self._directory.team(msg.session_id)
        spec = team.webhooks[msg.endpoint] if team and msg.endpoint < len(team.webhooks) else None
        if spec is None or spec.url != msg.url:
            await self._skip(msg, f"the session's team has no endpoint {msg.endpoint} at this URL", ctx)
            return
        try:
            key = _key_of(spec)
        except WebhookError as exc:
            await self._skip(msg, exc.reason, ctx)
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
            await self._skip(msg, f"{exc.reason} ({ALLOW_PRIVATE_HINT})", ctx)
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

    async def _skip(self, msg: WebhookDelivery, reason: str, ctx: Context, *, known: bool = False) -> None:
        """Give the delivery up without an attempt (nothing about the endpoint changes but the count of
        skips): logged, counted in the endpoint's state and told on the session's trace. ``known``:
        the endpoint is disabled, which was announced already (logged at info, not as a warning)."""
        assert self._endpoints is not None
        await self._endpoints.change(msg.url, lambda s: s.skip(reason, time.time()))
        self.skipped += 1
        bound = ctx.log.bind(url=msg.url, event_id=msg.event_id)
        (bound.info if known else bound.warning)("webhook_skipped", reason=reason, skipped=self.skipped)
        await ctx.bus.emit(
            WebhookDeliverySkipped(
                session_id=msg.session_id,
                thread_id=WEBHOOKS,
                agent=WEBHOOKS,
                url=redacted(msg.url),
                event_id=msg.event_id,
                event_type=msg.event_type,
                reason=reason,
            )
        )

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
