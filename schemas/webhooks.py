"""Webhooks: other systems told when work is done, with signed, retried, durable deliveries.

A team (or a submit, replacing the team's) lists endpoints: :class:`WebhookSpec` (``url``, the
``events`` wanted, and ``secret`` or ``secret_env``). The webhooks actor turns the session's trace
events into :class:`WebhookDelivery` messages, one per endpoint and event, durable in JetStream, and
POSTs each, signed per the Standard Webhooks spec. The body is the anthropic SDK's
``BetaWebhookEvent`` (``{"type": "event", "id", "created_at", "data"}``), ``data`` one of its
``session.*`` event data types plus staffwork's own details under :data:`DETAILS_KEY`.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import msgspec

from schemas.base import Message

#: the webhook event types staffwork sends; each is the ``type`` of one of the anthropic SDK's
#: ``BetaWebhookEventData`` types
WebhookEventType = Literal[
    "session.status_run_started",
    "session.status_idled",
    "session.status_terminated",
    "session.thread_created",
    "session.thread_idled",
    "session.outcome_evaluation_ended",
    "session.requires_action",
]
#: the events an endpoint gets when it does not list any
DEFAULT_EVENTS: tuple[WebhookEventType, ...] = ("session.status_idled", "session.status_terminated")
#: the prefix of a signing secret; the rest is the base64 HMAC key
SECRET_PREFIX = "whsec_"
#: the key in a webhook's ``data`` under which staffwork's own details go (the SDK's event data
#: types allow extra keys; one namespaced key cannot clash with a field the SDK adds later)
DETAILS_KEY = "staffwork"


def secret_key(secret: str) -> bytes:
    """The HMAC key of a ``whsec_<base64>`` secret; ``ValueError`` naming what is wrong."""
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError(f"a webhook secret starts with {SECRET_PREFIX!r}")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"a webhook secret is {SECRET_PREFIX!r} followed by base64") from None
    if len(key) < 16:
        raise ValueError(f"a webhook secret needs at least 16 bytes of key, got {len(key)}")
    return key


class WebhookSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One endpoint: where, which event types, and the signing secret (inline, or the name of an
    environment variable of the webhooks actor, so the secret never travels in a message)."""

    #: where deliveries are POSTed: an http(s) URL with a host (userinfo and query stay out of the trace)
    url: str
    #: the webhook event types this endpoint gets (at least one)
    events: Annotated[list[WebhookEventType], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: list(DEFAULT_EVENTS)
    )
    #: the signing secret itself, ``whsec_`` + base64 of at least 16 bytes; or empty, with ``secret_env``
    secret: str = ""
    #: the name of the webhooks actor's environment variable holding the signing secret; or empty
    secret_env: str = ""
    #: the ``workspace_id`` this endpoint's payloads carry ("": the webhooks actor's, from
    #: ``STAFFWORK_WORKSPACE_ID``); the HTTP API sets its key's workspace here
    workspace_id: str = ""

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"webhook url {self.url!r} must be an http(s) URL with a host")
        if bool(self.secret) == bool(self.secret_env):
            raise ValueError(f"webhook {self.url!r} needs exactly one of secret or secret_env")
        if self.secret:
            secret_key(self.secret)


class WebhookDelivery(Message, frozen=True, kw_only=True, tag="webhook.delivery.v1"):
    """A pending delivery of one event to one endpoint (the session's ``webhooks[endpoint]``),
    durable in JetStream until delivered or given up. Every attempt sends the same ``event_id``."""

    #: the endpoint's index in the session's team's ``webhooks`` (0-based)
    endpoint: int
    #: the endpoint's URL when the delivery was queued (a delivery whose endpoint changed is skipped)
    url: str
    #: the webhook event id, ``whevt_...``: the ``webhook-id`` header and the body's ``id``
    event_id: str
    #: the webhook event type, also ``data["type"]``
    event_type: WebhookEventType
    #: when the announced trace event happened (a datetime; the body's ``created_at``, RFC 3339)
    created_at: datetime
    #: the body's ``data``: the SDK's event data (``type``, ``id`` = the session id,
    #: ``organization_id``, ``workspace_id``, and ``session_thread_id`` for thread events), with
    #: staffwork's details under ``DETAILS_KEY``
    data: dict[str, Any] = msgspec.field(default_factory=dict)
