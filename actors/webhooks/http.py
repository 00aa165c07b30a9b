"""Sending one webhook: the Standard Webhooks signature, the address policy, one HTTP attempt.

:func:`signed_headers` signs a body (``webhook-id``, ``webhook-timestamp``, and ``webhook-signature``:
``v1,`` + base64 HMAC-SHA256 of ``<id>.<timestamp>.<body>``), so any Standard Webhooks library
verifies it. :func:`post` resolves the host here and connects to the address it checked (non-public
addresses refused unless allowed; redirects not followed). Connections are not kept alive, so one is
never reused for another host name. :func:`redacted` is a URL as the trace shows it: without
userinfo, query and fragment, where tokens hide.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import re
import socket
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx2
import msgspec

from actors.webhooks.endpoints import WebhookSettings
from actors.webhooks.events import WebhookSource, webhook_event
from bus.errors import StaffworkError
from schemas.ids import new_id
from schemas.trace import CustomToolUse, SessionStatusIdle, ToolConfirmationRequested
from schemas.webhooks import secret_key

USER_AGENT = "staffwork-webhooks"
TEXT_LIMIT = 200  # characters of an answer's body kept for errors and the test command
#: How a refusal tells the user to allow the address (the same flag on every command).
ALLOW_PRIVATE_HINT = "allow with --allow-private-webhooks"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class WebhookError(StaffworkError):
    """A webhook could not be sent to ``url``; ``reason`` says why."""

    def __init__(self, url: str, reason: str) -> None:
        self.url = url
        self.reason = reason
        super().__init__(f"webhook {url}: {reason}")


class AddressRefused(WebhookError):
    """The URL's host is, or resolves to, an address deliveries may not go to."""


# --- signing and sending ---------------------------------------------------------------------------


def event_id_for(msg_id: str) -> str:
    """The webhook event id of the trace event with ``msg_id`` (stable: retries and redeliveries)."""
    suffix = msg_id.partition("_")[2]
    if not _TOKEN.match(suffix):
        suffix = hashlib.sha256(msg_id.encode()).hexdigest()[:26]
    return f"whevt_{suffix}"


def webhook_event_id(event: WebhookSource) -> str:
    """The id of the webhook event announcing ``event``: :func:`event_id_for` its msg id; for a custom
    tool call or a confirmation request, derived from the session and the call, so a call announced
    again (by a worker that picks its thread up after a crash) is the same webhook event."""
    if isinstance(event, CustomToolUse | ToolConfirmationRequested):
        call = f"{event.session_id}/{event.tool_use_id}"
        return f"whevt_{hashlib.sha256(call.encode()).hexdigest()[:26]}"
    return event_id_for(event.msg_id)


def payload(event_id: str, created_at: datetime, data: dict[str, Any]) -> bytes:
    """The body of a webhook, compact JSON: the anthropic SDK's ``BetaWebhookEvent``, ``created_at``
    in RFC 3339 (``data``: :func:`actors.webhooks.events.webhook_event`)."""
    return msgspec.json.encode({"type": "event", "id": event_id, "created_at": created_at, "data": data})


def signature(key: bytes, event_id: str, timestamp: int, body: bytes) -> str:
    """The Standard Webhooks ``v1`` signature of ``body``."""
    digest = hmac.new(key, f"{event_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signed_headers(key: bytes, event_id: str, body: bytes) -> dict[str, str]:
    timestamp = int(time.time())
    return {
        "content-type": "application/json",
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, event_id, timestamp, body),
    }


def redacted(url: str) -> str:
    """``url`` without userinfo, query and fragment, where tokens hide: how the trace shows it."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", ""))


def refusal(address: str) -> str | None:
    """Why deliveries to ``address`` are refused (``"loopback address 127.0.0.1"``), or None."""
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):  # IPv4 inside IPv6 is judged as IPv4
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip.sixtofour is not None:
            ip = ip.sixtofour
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    for kind, flagged in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("site-local", isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local),  # fec0::/10
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("non-public", not ip.is_global),
    ):
        if flagged:
            return f"{kind} address {ip}"
    return None


async def _resolve(url: httpx2.URL, *, allow_private: bool) -> str:
    """The address to connect to. Every address the host resolves to is checked, not only the first."""
    host = url.host
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookError(str(url), f"cannot resolve {host!r}: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    if not addresses:
        raise WebhookError(str(url), f"{host!r} resolves to no address")
    if not allow_private:
        for address in addresses:
            if (why := refusal(address)) is not None:
                shown = why if address == host else f"{host!r} resolves to a {why}"
                raise AddressRefused(str(url), f"refused: {shown}")
    return addresses[0].split("%", 1)[0]


def http_client(timeout: float) -> httpx2.AsyncClient:
    return httpx2.AsyncClient(
        follow_redirects=False,
        timeout=timeout,
        limits=httpx2.Limits(max_keepalive_connections=0),  # see the module docstring: pinned addresses
        headers={"user-agent": USER_AGENT},
    )


async def post(
    client: httpx2.AsyncClient,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    allow_private: bool,
    timeout: float,
) -> tuple[int, str]:
    """One attempt: (status, the start of the answer's body). :class:`AddressRefused` for a refused
    address, :class:`WebhookError` for a resolution, connection or timeout failure."""
    target = httpx2.URL(url)
    try:
        async with asyncio.timeout(timeout):
            address = await _resolve(target, allow_private=allow_private)
            extensions: dict[str, Any] = {}
            if target.scheme == "https" and address != target.host:
                extensions["sni_hostname"] = target.raw_host.decode("ascii")
            async with client.stream(
                "POST",
                target.copy_with(host=address),
                content=body,
                headers={**headers, "host": target.netloc.decode("ascii")},
                extensions=extensions,
            ) as response:
                kept = bytearray()
                async for chunk in response.aiter_bytes():
                    kept += chunk
                    if len(kept) >= 4 * TEXT_LIMIT:
                        break
                text = kept.decode("utf-8", errors="replace").strip()[:TEXT_LIMIT]
                if response.is_redirect:
                    location = response.headers.get("location", "")
                    text = f"redirect to {redacted(location)!r} (not followed)"
                return response.status_code, text
    except (TimeoutError, httpx2.TimeoutException) as exc:
        raise WebhookError(url, f"no answer within {timeout:g}s") from exc
    except httpx2.HTTPError as exc:
        raise WebhookError(url, f"{type(exc).__name__}: {exc}") from exc


async def send_test_event(
    url: str, secret: str, *, settings: WebhookSettings | None = None
) -> tuple[int, str]:
    """Send one signed sample ``session.status_idled`` event (of a made-up session) to ``url``, with
    ``settings``' ids, address policy and timeout; return the answer's status and the start of its
    body. :class:`WebhookError` for an invalid secret or URL, a refused address, a connection
    failure or no answer within the timeout."""
    settings = settings or WebhookSettings()
    allow_private, timeout = settings.allow_private, settings.timeout
    try:
        key = secret_key(secret)
    except ValueError as exc:
        raise WebhookError(url, f"invalid secret: {exc}") from None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookError(url, "not an http(s) URL with a host")
    event_id = new_id("whevt_test")
    _, data = webhook_event(SessionStatusIdle(session_id=new_id("ses_test")), settings)
    body = payload(event_id, datetime.now(UTC), data)
    async with http_client(timeout) as client:
        try:
            return await post(
                client,
                url,
                body,
                signed_headers(key, event_id, body),
                allow_private=allow_private,
                timeout=timeout,
            )
        except AddressRefused as exc:
            raise AddressRefused(url, f"{exc.reason} ({ALLOW_PRIVATE_HINT})") from None
