"""Webhooks: signed deliveries that a Standard Webhooks library verifies, retries with the same id,
durability across kill -9, a delivery given up after its last attempt, endpoints disabled after a
lasting streak of failures (not by a short outage), deliveries skipped for a refused address or a
missing secret (told on the trace), tokens in URLs kept out of the trace, the test command. That the
payloads are the anthropic SDK's types: ``tests/test_webhook_sdk.py``.

A local HTTP receiver verifies every request with the ``standardwebhooks`` package and answers as
each test scripts it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import msgspec
import pytest
import standardwebhooks
from nats.aio.client import Client as NATS

from actors.agent.models.scripted import ScriptedModel, text
from actors.client import Client
from actors.roles import RoleConfig, running, running_agents
from actors.sessions.directory import SessionDirectory
from actors.sessions.teams import register_team
from actors.webhooks.actor import (
    EndpointState,
    WebhookSettings,
    WebhookSource,
    enable_endpoint,
    endpoint_states,
)
from actors.webhooks.http import event_id_for, redacted, refusal, send_test_event, signature
from bus.connection import Bus
from bus.direct import read_subject
from bus.errors import StaffworkError
from bus.provision import WEBHOOK_SOURCES, ensure_consumer, provision, webhook_events_consumer
from schemas.base import Usage
from schemas.ids import new_id
from schemas.team import AgentSpec, TeamSpec
from schemas.trace import (
    AnyTraceEvent,
    CustomToolUse,
    SessionStatusIdle,
    ThreadCreated,
    ThreadStatusIdle,
    TraceEvent,
    WebhookDelivered,
    WebhookDeliverySkipped,
    WebhookEndpointDisabled,
    WebhookFailed,
    event_kind,
)
from schemas.webhooks import WebhookDelivery, WebhookSpec
from tests.helpers import ROOT_DIR, NatsServer, free_port, round_trip, run_cli

SECRET = "whsec_" + base64.b64encode(b"staffwork-webhook-test-key-0123").decode()
FAST = {"allow_private": True, "base_delay": 0.05, "max_delay": 0.2, "timeout": 1.0, "ack_wait": 5.0}
E = TypeVar("E", bound=TraceEvent)


# --- a local receiver --------------------------------------------------------------------------------


@dataclass
class Request:
    path: str
    headers: dict[str, str]
    body: bytes
    answer: int  # the status answered; 0: none (it hung until the client gave up)
    at: float  # the event loop's time when it arrived
    payload: Any  # the verified payload; None if the signature did not verify

    @property
    def id(self) -> str:
        return self.headers.get("webhook-id", "")


class Receiver:
    """Records every request, verifying it with ``standardwebhooks``. Answers 422 to the webhook ids
    in ``rejected``, and to the others the ``answers`` given in turn (a status, ``"redirect"`` or
    ``"hang"``), then ``default``."""

    def __init__(
        self, answers: Iterable[int | str] = (), default: int = 200, rejected: Iterable[str] = ()
    ) -> None:
        self.requests: list[Request] = []
        self.answers = list(answers)
        self.default = default
        self.rejected = set(rejected)
        self.changed = asyncio.Condition()
        self.url = ""
        self._verifier = standardwebhooks.Webhook(SECRET)
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Receiver:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    def delivered(self, path: str | None = None) -> list[Request]:
        return [r for r in self.requests if 200 <= r.answer < 300 and path in (None, r.path)]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(check)

    async def _record(self, request: Request) -> None:
        async with self.changed:
            self.requests.append(request)
            self.changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
            _, path, _ = head[0].split(" ", 2)
            headers = {}
            for line in head[1:]:
                if line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            at = asyncio.get_running_loop().time()
            try:
                payload = self._verifier.verify(body, headers)
            except standardwebhooks.webhooks.WebhookVerificationError:
                payload = None
            answer: int | str = self.default
            if headers.get("webhook-id") in self.rejected:
                answer = 422
            elif self.answers:
                answer = self.answers.pop(0)
            if answer == "hang":
                await self._record(Request(path, headers, body, 0, at, payload))
                await reader.read()  # until the client gives up and hangs up
                return
            status, extra = (302, "Location: /elsewhere\r\n") if answer == "redirect" else (int(answer), "")
            text = f"answer {status}".encode()
            writer.write(
                f"HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nContent-Length: {len(text)}\r\n"
                f"{extra}Connection: close\r\n\r\n".encode()
                + text
            )
            await writer.drain()
            await self._record(Request(path, headers, body, status, at, payload))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client hung up
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


# --- helpers -----------------------------------------------------------------------------------------


class Trace:
    """A session's trace events as they are published."""

    def __init__(self) -> None:
        self.events: list[AnyTraceEvent] = []
        self.changed = asyncio.Condition()

    async def add(self, event: AnyTraceEvent) -> None:
        async with self.changed:
            self.events.append(event)
            self.changed.notify_all()

    def of(self, kind: type[E]) -> list[E]:
        return [event for event in self.events if isinstance(event, kind)]

    async def wait_for(self, check: Callable[[], bool], timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(check)


@contextlib.asynccontextmanager
async def watching(bus: Bus, session_id: str) -> AsyncIterator[Trace]:
    trace = Trace()
    listener = await bus.listen(bus.subjects.events(session_id), AnyTraceEvent, trace.add)
    await round_trip(bus)
    try:
        yield trace
    finally:
        await listener.close()


@contextlib.asynccontextmanager
async def webhooks(bus: Bus, **settings: Any) -> AsyncIterator[None]:
    """The webhooks actors in this process, with quick retries (overridable)."""
    config = RoleConfig(webhooks=WebhookSettings(**(FAST | settings)))
    async with running(bus, ["webhooks"], config):
        yield


async def session(bus: Bus, *endpoints: WebhookSpec) -> str:
    """A session recorded in the directory, with a team that lists ``endpoints``."""
    session_id = new_id("ses")
    team = TeamSpec(name="hooks", lead=AgentSpec(name="lead"), webhooks=list(endpoints))
    await SessionDirectory(bus).start(session_id, team, "watch")
    return session_id


async def publish(bus: Bus, event: TraceEvent) -> None:
    """Emit ``event`` and wait until it is stored (so the consumers count it as pending)."""
    await bus.publish(bus.subjects.event(event.session_id, event_kind(event)), event)


async def settled(bus: Bus, timeout: float = 10.0) -> None:
    """Wait until both webhook consumers have handled everything stored (events before deliveries:
    an event is acked only after its deliveries are stored)."""
    durables = (bus.subjects.webhook_events_consumer, bus.subjects.webhook_deliveries_consumer)
    async with asyncio.timeout(timeout):
        for durable in durables:
            while await bus.consumer_backlog(durable):  # noqa: ASYNC110 - the server's state: no event
                await asyncio.sleep(0.02)


async def stored_deliveries(bus: Bus, session_id: str) -> list[WebhookDelivery]:
    decoder = msgspec.json.Decoder(WebhookDelivery)
    subject = bus.subjects.hook(session_id)
    return [decoder.decode(m.data) async for m in read_subject(bus, bus.subjects.log_stream, subject)]


# --- units -------------------------------------------------------------------------------------------


def test_the_signature_is_the_standard_webhooks_one() -> None:
    body = b'{"type":"event","id":"whevt_1","created_at":"2026-01-01T00:00:00Z","data":{}}'
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    expected = base64.b64encode(hmac.new(key, b"whevt_1.1767225600." + body, hashlib.sha256).digest())
    ours = signature(key, "whevt_1", 1767225600, body)
    theirs = standardwebhooks.Webhook(SECRET).sign(
        "whevt_1", datetime.fromtimestamp(1767225600, UTC), body.decode()
    )
    assert ours == theirs == "v1," + expected.decode()


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", "loopback address 127.0.0.1"),
        ("::1", "loopback address ::1"),
        ("10.1.2.3", "private address 10.1.2.3"),
        ("192.168.0.10", "private address 192.168.0.10"),
        ("169.254.169.254", "link-local address 169.254.169.254"),
        ("fe80::1%eth0", "link-local address fe80::1"),
        ("fec0::1", "site-local address fec0::1"),  # deprecated, but routed inside some networks
        ("feff:1::2", "site-local address feff:1::2"),
        ("0.0.0.0", "unspecified address 0.0.0.0"),
        ("224.0.0.1", "multicast address 224.0.0.1"),
        ("100.64.0.1", "non-public address 100.64.0.1"),
        ("::ffff:127.0.0.1", "loopback address 127.0.0.1"),
        ("2002:7f00:1::1", "loopback address 127.0.0.1"),  # 6to4
        ("64:ff9b::a00:1", "private address 10.0.0.1"),  # NAT64
        ("93.184.215.14", None),
        ("64:ff9b::5db8:d70e", None),
        ("2606:4700::6810:84e5", None),
    ],
)
def test_private_and_special_addresses_are_refused(address: str, refused: str | None) -> None:
    assert refusal(address) == refused


def test_backoff_doubles_with_jitter_up_to_the_cap() -> None:
    settings = WebhookSettings(base_delay=1.0, max_delay=600.0)
    for attempt, full in [(1, 1.0), (2, 2.0), (5, 16.0), (10, 512.0), (11, 600.0), (500, 600.0)]:
        delays = [settings.backoff(attempt) for _ in range(200)]
        assert all(full / 2 <= delay <= full for delay in delays), attempt
        assert len(set(delays)) > 1  # jittered


def test_an_endpoint_is_disabled_by_a_streak_of_failures_that_lasts() -> None:
    settings = WebhookSettings(max_failures=3, failing_for=600.0)
    state = EndpointState(url="https://hooks.example.com/x")
    for n in range(25):  # an outage: the first attempts of 25 queued deliveries fail within a second
        state = state.failed("HTTP 503", 1000.0 + n / 100, settings)
    assert (state.failures, state.failing_since, state.disabled) == (25, 1000.0, False)
    state = state.failed("HTTP 503", 1599.0, settings)
    assert not state.disabled  # long enough, but not old enough
    state = state.failed("HTTP 502", 1600.0, settings)
    assert (state.failures, state.disabled, state.since) == (27, True, 1600.0)
    assert state.reason == "27 consecutive failed attempts (the last: HTTP 502)"
    assert state.failed("HTTP 503", 1700.0, settings) == state  # disabled: no longer counted

    rare = EndpointState(url="https://hooks.example.com/x")
    for at in (1000.0, 5000.0):
        rare = rare.failed("HTTP 503", at, settings)
    assert (rare.failures, rare.disabled) == (2, False)  # old enough, but not long enough
    assert rare.failed("HTTP 503", 9000.0, settings).disabled


def test_the_trace_shows_urls_without_userinfo_and_query() -> None:
    assert (
        redacted("https://u:pw@hooks.example.com/T0/B0/x?token=abc#f") == "https://hooks.example.com/T0/B0/x"
    )
    assert redacted("http://[2001:db8::1]:8080/hook?x=1") == "http://[2001:db8::1]:8080/hook"
    assert redacted("https://hooks.example.com") == "https://hooks.example.com"
    assert redacted("/elsewhere?sig=1") == "/elsewhere"


def test_the_actor_reads_exactly_the_events_its_consumer_filters() -> None:
    kinds = {event_kind(kind) for kind in WebhookSource.__args__}
    assert kinds == set(WEBHOOK_SOURCES)
    assert event_id_for("msg_064m3kq1a0s8hvd9u2f7c4bq1g") == "whevt_064m3kq1a0s8hvd9u2f7c4bq1g"
    assert event_id_for("ses_1.accepted").startswith("whevt_")
    assert event_id_for("ses_1.accepted") == event_id_for("ses_1.accepted") != event_id_for("ses_2.accepted")


# --- end to end --------------------------------------------------------------------------------------


async def test_an_event_is_delivered_signed_to_each_endpoint_that_wants_it(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SW_TEST_WEBHOOK_SECRET", SECRET)
    async with Receiver() as receiver, webhooks(bus):
        sid = await session(
            bus,
            WebhookSpec(url=f"{receiver.url}/idle", events=["session.status_idled"], secret=SECRET),
            WebhookSpec(
                url=f"{receiver.url}/threads",
                events=["session.thread_created", "session.status_idled"],
                secret_env="SW_TEST_WEBHOOK_SECRET",
            ),
        )
        unwatched = await session(bus)  # a session without webhooks
        created = ThreadCreated(session_id=sid, thread_id="t-logs", agent="logs", task="look")
        usage = Usage(input_tokens=120, output_tokens=40, cost_usd=0.002)
        idle = SessionStatusIdle(session_id=sid, thread_id="lead", agent="lead", usage=usage)
        for event in (created, idle, ThreadCreated(session_id=unwatched, thread_id="t-x", agent="x")):
            await publish(bus, event)
        await receiver.wait_for(lambda: len(receiver.delivered()) == 3)
        await settled(bus)
        stored = await stored_deliveries(bus, sid)
        assert await stored_deliveries(bus, unwatched) == []
    assert len(receiver.requests) == 3  # nothing else, nothing twice
    assert all(request.payload is not None for request in receiver.requests)  # every signature verified
    assert sorted((d.endpoint, d.event_type) for d in stored) == [
        (0, "session.status_idled"),
        (1, "session.status_idled"),
        (1, "session.thread_created"),
    ]
    [to_idle] = receiver.delivered("/idle")
    assert to_idle.id == event_id_for(idle.msg_id)
    payload = to_idle.payload
    assert datetime.fromisoformat(payload.pop("created_at")) == idle.time
    assert payload == {
        "type": "event",
        "id": event_id_for(idle.msg_id),
        "data": {
            "type": "session.status_idled",
            "id": sid,
            "organization_id": "staffwork",
            "workspace_id": "default",
            "staffwork": {
                "stop_reason": "end_turn",
                "usage": {
                    "input_tokens": 120,
                    "output_tokens": 40,
                    "cache_creation_input_tokens": 0,
                    "cache_read_input_tokens": 0,
                    "cost_usd": 0.002,
                },
            },
        },
    }
    assert b" " not in to_idle.body  # compact JSON
    assert to_idle.headers["content-type"] == "application/json"
    threads = {r.payload["data"]["type"]: r.payload for r in receiver.delivered("/threads")}
    assert threads["session.thread_created"]["data"] == {
        "type": "session.thread_created",
        "id": sid,
        "organization_id": "staffwork",
        "workspace_id": "default",
        "session_thread_id": "t-logs",
        "staffwork": {"agent": "logs"},
    }
    assert threads["session.status_idled"]["id"] == to_idle.id  # one event, the same id everywhere


async def test_the_webhooks_actor_gives_an_existing_consumer_the_new_filters(bus: Bus, nc: NATS) -> None:
    """A deployment provisioned before ``agent.custom_tool_use`` could become a webhook: provisioning
    leaves its ``webhooks`` consumer as it is, and the new webhooks actor updates it when it starts."""
    await provision(bus)
    current = webhook_events_consumer(bus.subjects)
    old = [s for s in current.filter_subjects if not s.endswith(".agent.custom_tool_use")]
    await ensure_consumer(bus, dataclasses.replace(current, filter_subjects=tuple(old)))

    async def filters() -> list[str]:
        info = await nc.jetstream().consumer_info(bus.subjects.log_stream, current.durable)
        return sorted(info.config.filter_subjects or [])

    assert await filters() == sorted(old)
    await provision(bus)
    assert await filters() == sorted(old)  # provisioning does not change an existing consumer
    async with Receiver() as receiver, webhooks(bus):
        assert await filters() == sorted(current.filter_subjects)
        spec = WebhookSpec(url=f"{receiver.url}/act", events=["session.requires_action"], secret=SECRET)
        sid = await session(bus, spec)
        call = CustomToolUse(session_id=sid, thread_id="t-ops", agent="ops", tool_use_id="toolu_1", name="ok")
        await publish(bus, call)
        await receiver.wait_for(lambda: len(receiver.delivered()) == 1)
    [request] = receiver.delivered()
    assert request.payload["data"]["type"] == "session.requires_action"


async def test_failed_attempts_are_retried_with_backoff_and_the_same_id(bus: Bus) -> None:
    async with Receiver(answers=[500, "redirect", "hang"]) as receiver, webhooks(bus, timeout=0.5):
        sid = await session(bus, WebhookSpec(url=f"{receiver.url}/hook", secret=SECRET))
        idle = SessionStatusIdle(session_id=sid)
        async with watching(bus, sid) as trace:
            await bus.emit(idle)
            await trace.wait_for(lambda: bool(trace.of(WebhookDelivered)))
    assert [r.answer for r in receiver.requests] == [500, 302, 0, 200]
    assert {r.id for r in receiver.requests} == {event_id_for(idle.msg_id)}  # every attempt, one id
    assert all(r.payload is not None for r in receiver.requests)
    assert len({r.body for r in receiver.requests}) == 1  # the same payload; timestamps and signatures vary
    failed = trace.of(WebhookFailed)
    assert [f.attempt for f in failed] == [1, 2, 3]
    assert failed[0].error == "HTTP 500: answer 500"
    assert failed[1].error == "HTTP 302: redirect to '/elsewhere' (not followed)"
    assert failed[2].error == "no answer within 0.5s"
    retries = [f.retry_in_s or 0.0 for f in failed]
    assert 0.025 <= retries[0] <= 0.05 <= retries[1] <= 0.1 <= retries[2] <= 0.2  # doubling, jittered
    for before, after, retry in zip(receiver.requests, receiver.requests[1:], retries, strict=False):
        assert after.at - before.at >= retry * 0.9  # the nak's delay was honoured
    [delivered] = trace.of(WebhookDelivered)
    assert (delivered.attempt, delivered.status_code, delivered.event_type) == (
        4,
        200,
        "session.status_idled",
    )
    assert delivered.event_id == event_id_for(idle.msg_id)


WORKER = """
import asyncio, sys
from actors.roles import RoleConfig, serve_roles
from actors.webhooks.actor import WebhookSettings
from bus.connection import Bus
from bus.lifecycle import install_stop_signals
from bus.logs import configure_logging

async def main() -> None:
    configure_logging("info", json=True)
    bus = await Bus.connect(sys.argv[1], root=sys.argv[2], name="webhooks-proc")
    stop = asyncio.Event()
    install_stop_signals(stop)
    settings = WebhookSettings(
        allow_private=True, base_delay=0.05, max_delay=0.2, timeout=1.0, ack_wait=1.0, max_failures=10_000
    )
    config = RoleConfig(webhooks=settings)
    try:
        await serve_roles(bus, ["webhooks"], config, stop, on_ready=lambda: print("READY", flush=True))
    finally:
        await bus.close()

asyncio.run(main())
"""


def tail(log: Path) -> str:
    return log.read_text()[-2000:]


@contextlib.asynccontextmanager
async def worker(nats_server: NatsServer, bus: Bus, log: Path) -> AsyncIterator[asyncio.subprocess.Process]:
    """The webhooks actors in a process of their own (ready when it printed READY); killed after."""
    with log.open("ab") as stderr:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER, nats_server.url, bus.subjects.root,
            cwd=ROOT_DIR, stdout=asyncio.subprocess.PIPE, stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
        assert line.strip() == b"READY", tail(log)
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()


async def test_pending_deliveries_survive_a_killed_webhooks_process(
    nats_server: NatsServer, bus: Bus, tmp_path: Path
) -> None:
    count = 5
    log = tmp_path / "webhooks.log"
    async with Receiver(default=503) as receiver:  # failing while the first process runs
        sid = await session(
            bus, WebhookSpec(url=receiver.url, events=["session.thread_idled"], secret=SECRET)
        )
        events = [ThreadStatusIdle(session_id=sid, thread_id=f"t-{n}", agent="logs") for n in range(count)]
        ids = {event_id_for(event.msg_id) for event in events}
        async with worker(nats_server, bus, log) as first:
            for event in events:
                await bus.emit(event)
            await receiver.wait_for(lambda: {r.id for r in receiver.requests} == ids)  # each one tried
            first.kill()  # kill -9, with every delivery pending (nak'ed with a delay, or in flight)
            await first.wait()
        failed_before = len(receiver.requests)
        receiver.default = 200
        async with worker(nats_server, bus, log):
            await receiver.wait_for(lambda: {r.id for r in receiver.delivered()} == ids, timeout=20)
    assert failed_before >= count
    assert all(r.payload is not None for r in receiver.requests)
    delivered = Counter(r.id for r in receiver.delivered())
    assert set(delivered) == ids, delivered  # none lost (a duplicate, the same id again, is allowed)
    threads = {r.payload["data"]["session_thread_id"] for r in receiver.delivered()}
    assert threads == {f"t-{n}" for n in range(count)}


async def test_an_endpoint_is_disabled_after_consecutive_failures_and_can_be_enabled(bus: Bus) -> None:
    async with Receiver(default=500) as receiver, webhooks(bus, max_failures=3, failing_for=0.0):
        url = f"{receiver.url}/flaky"
        sid = await session(bus, WebhookSpec(url=url, secret=SECRET))
        async with watching(bus, sid) as trace:
            await bus.emit(SessionStatusIdle(session_id=sid))
            await trace.wait_for(lambda: bool(trace.of(WebhookEndpointDisabled)))
            skipped = SessionStatusIdle(session_id=sid)
            await publish(bus, skipped)  # for a disabled endpoint: not attempted, but told
            await trace.wait_for(lambda: bool(trace.of(WebhookDeliverySkipped)))
            await settled(bus)
            assert len(receiver.requests) == 3
            [state] = await endpoint_states(bus)
            assert (state.url, state.failures, state.disabled, state.skipped) == (url, 3, True, 1)

            receiver.default = 200
            assert await enable_endpoint(bus, url) is True
            later = SessionStatusIdle(session_id=sid)
            await bus.emit(later)
            await receiver.wait_for(lambda: bool(receiver.delivered()))
            await trace.wait_for(lambda: bool(trace.of(WebhookDelivered)))
    failed = trace.of(WebhookFailed)
    assert [(f.attempt, f.retry_in_s is None) for f in failed] == [(1, False), (2, False), (3, True)]
    [disabled] = trace.of(WebhookEndpointDisabled)
    assert (disabled.url, disabled.failures) == (url, 3)
    assert disabled.reason == "3 consecutive failed attempts (the last: HTTP 500: answer 500)"
    [skip] = trace.of(WebhookDeliverySkipped)
    assert (skip.url, skip.event_id, skip.event_type) == (
        url,
        event_id_for(skipped.msg_id),
        "session.status_idled",
    )
    assert skip.reason == (
        "the endpoint is disabled (3 consecutive failed attempts (the last: HTTP 500: answer 500)); "
        "staffwork webhooks enable turns it on again"
    )
    assert state.skip_reason == skip.reason
    assert [r.id for r in receiver.delivered()] == [event_id_for(later.msg_id)]


async def test_a_short_outage_neither_disables_the_endpoint_nor_loses_deliveries(bus: Bus) -> None:
    count, settings = 25, {"max_failures": 5}  # more deliveries than failures needed; 10 min to last
    async with Receiver(default=503) as receiver, webhooks(bus, **settings):
        url = f"{receiver.url}/hook"
        sid = await session(bus, WebhookSpec(url=url, secret=SECRET, events=["session.thread_created"]))
        events = [ThreadCreated(session_id=sid, thread_id=f"t-{n}", agent="logs") for n in range(count)]
        ids = {event_id_for(event.msg_id) for event in events}
        async with watching(bus, sid) as trace:
            for event in events:
                await publish(bus, event)
            await receiver.wait_for(lambda: {r.id for r in receiver.requests} == ids)  # each one failed
            receiver.default = 200  # the endpoint is back
            await receiver.wait_for(lambda: {r.id for r in receiver.delivered()} == ids)
            await settled(bus)
            [state] = await endpoint_states(bus)
    assert sum(r.answer == 503 for r in receiver.requests) >= count
    assert (state.url, state.failures, state.disabled) == (url, 0, False)  # the streak ended
    assert trace.of(WebhookEndpointDisabled) == []
    assert all(failed.retry_in_s is not None for failed in trace.of(WebhookFailed))
    assert sorted(r.id for r in receiver.delivered()) == sorted(ids)  # each one, once


async def test_a_delivery_is_given_up_after_its_last_attempt(bus: Bus) -> None:
    async with Receiver() as receiver, webhooks(bus, max_attempts=3):
        url = f"{receiver.url}/hook"
        sid = await session(bus, WebhookSpec(url=url, secret=SECRET, events=["session.thread_created"]))
        rejected = ThreadCreated(session_id=sid, thread_id="t-bad", agent="logs")
        fine = [ThreadCreated(session_id=sid, thread_id=f"t-{n}", agent="logs") for n in range(3)]
        receiver.rejected.add(event_id_for(rejected.msg_id))  # answered 422, while the others arrive
        async with watching(bus, sid) as trace:
            for event in (rejected, *fine):
                await publish(bus, event)
            await trace.wait_for(lambda: any(f.retry_in_s is None for f in trace.of(WebhookFailed)))
            await settled(bus)  # nothing left to retry
            [state] = await endpoint_states(bus)
    assert [r.answer for r in receiver.requests if r.id == event_id_for(rejected.msg_id)] == [422] * 3
    assert {r.id for r in receiver.delivered()} == {event_id_for(event.msg_id) for event in fine}
    failed = trace.of(WebhookFailed)
    assert [(f.attempt, f.retry_in_s is None) for f in failed] == [(1, False), (2, False), (3, True)]
    assert failed[-1].error == "HTTP 422: answer 422"
    assert trace.of(WebhookEndpointDisabled) == []
    assert not state.disabled


async def test_trace_events_show_the_url_without_userinfo_and_query(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SW_TEST_NO_SUCH_SECRET", raising=False)
    async with Receiver(answers=[500]) as receiver, webhooks(bus):
        base = receiver.url.replace("http://", "http://hook:pw@")
        sid = await session(
            bus,
            WebhookSpec(url=f"{base}/a/T0?token=abc", secret=SECRET),
            WebhookSpec(url=f"{receiver.url}/b?token=abc", secret_env="SW_TEST_NO_SUCH_SECRET"),
        )
        async with watching(bus, sid) as trace:
            await bus.emit(SessionStatusIdle(session_id=sid))
            await trace.wait_for(
                lambda: bool(trace.of(WebhookDelivered) and trace.of(WebhookDeliverySkipped))
            )
            states = {state.url for state in await endpoint_states(bus)}
    assert [r.path for r in receiver.requests] == ["/a/T0?token=abc"] * 2  # the token reached the receiver
    [failed] = trace.of(WebhookFailed)
    [delivered] = trace.of(WebhookDelivered)
    [skipped] = trace.of(WebhookDeliverySkipped)
    assert failed.url == delivered.url == f"{receiver.url}/a/T0"
    assert skipped.url == f"{receiver.url}/b"
    assert "abc" not in skipped.reason
    assert states == {f"{base}/a/T0?token=abc", f"{receiver.url}/b?token=abc"}  # the operator's view


async def test_a_private_address_or_a_missing_secret_skips_the_delivery_without_a_request(
    bus: Bus, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Both are the webhooks actor's configuration, not the endpoint's health: each delivery is
    skipped and told, and the endpoint is not disabled, so the actor started with the flag or the
    secret delivers the next event with no ``webhooks enable``."""
    monkeypatch.delenv("SW_TEST_LATE_SECRET", raising=False)
    async with Receiver() as receiver:
        sid = await session(
            bus,
            WebhookSpec(url=f"{receiver.url}/a", secret=SECRET),
            WebhookSpec(url=f"{receiver.url}/b", secret_env="SW_TEST_LATE_SECRET"),
        )
        async with watching(bus, sid) as trace:
            async with webhooks(bus, allow_private=False):
                first = SessionStatusIdle(session_id=sid)
                await bus.emit(first)
                await trace.wait_for(lambda: len(trace.of(WebhookDeliverySkipped)) == 2)
                await settled(bus)
                states = {state.url.rsplit("/", 1)[1]: state for state in await endpoint_states(bus)}
            assert receiver.requests == []
            monkeypatch.setenv("SW_TEST_LATE_SECRET", SECRET)
            async with webhooks(bus, allow_private=True):
                later = SessionStatusIdle(session_id=sid)
                await bus.emit(later)
                await receiver.wait_for(lambda: len(receiver.delivered()) == 2)
    assert trace.of(WebhookFailed) == []
    assert trace.of(WebhookEndpointDisabled) == []
    skipped = {event.url.rsplit("/", 1)[1]: event for event in trace.of(WebhookDeliverySkipped)}
    assert {path: event.reason for path, event in skipped.items()} == {
        "a": "refused: loopback address 127.0.0.1 (allow with --allow-private-webhooks)",
        "b": "secret_env 'SW_TEST_LATE_SECRET' is not set for the webhooks actor",
    }
    assert {event.event_id for event in skipped.values()} == {event_id_for(first.msg_id)}
    assert {path: (s.disabled, s.skipped, s.skip_reason) for path, s in states.items()} == {
        path: (False, 1, event.reason) for path, event in skipped.items()
    }
    assert {r.id for r in receiver.delivered()} == {event_id_for(later.msg_id)}  # no enable needed


async def test_the_test_command_sends_one_verifiable_event() -> None:
    async with Receiver(answers=[200, 410]) as receiver:
        allowed = WebhookSettings(allow_private=True)
        status, text = await send_test_event(f"{receiver.url}/test", SECRET, settings=allowed)
        gone = await send_test_event(f"{receiver.url}/test", SECRET, settings=allowed)
        with pytest.raises(StaffworkError, match="invalid secret: a webhook secret starts with 'whsec_'"):
            await send_test_event(receiver.url, "hunter2", settings=allowed)
        refused = r"refused: loopback address 127\.0\.0\.1 \(allow with --allow-private-webhooks\)$"
        with pytest.raises(StaffworkError, match=refused):
            await send_test_event(receiver.url, SECRET)
        with pytest.raises(StaffworkError, match="ConnectError"):
            await send_test_event(f"http://127.0.0.1:{free_port()}", SECRET, settings=allowed)
        with pytest.raises(StaffworkError, match="not an http"):
            await send_test_event("ftp://example.com/", SECRET)
    assert (status, text) == (200, "answer 200")
    assert gone == (410, "answer 410")
    assert len(receiver.requests) == 2
    payload = receiver.requests[0].payload
    assert payload is not None  # verified
    assert payload["id"] == receiver.requests[0].id
    assert payload["id"].startswith("whevt_test_")
    assert payload["data"]["type"] == "session.status_idled"
    assert payload["data"]["id"].startswith("ses_test_")


async def test_the_webhooks_test_command_sends_a_signed_sample(tmp_path: Path) -> None:
    async def staffwork(*args: str) -> tuple[int, str, str]:
        return await run_cli("webhooks", "test", *args, home=tmp_path)

    async with Receiver() as receiver:
        code, out, err = await staffwork(
            f"{receiver.url}/hook", "--secret", SECRET, "--allow-private-webhooks"
        )
        assert (code, out.strip()) == (0, f"{receiver.url}/hook answered 200: answer 200"), err
        [request] = receiver.requests
        assert request.payload is not None  # it verified with standardwebhooks
        assert json.loads(request.body)["data"]["type"] == "session.status_idled"
        code, out, err = await staffwork(f"{receiver.url}/hook", "--secret", SECRET)
        assert code == 1
        assert err.startswith("error: webhook http://127.0.0.1:")
        assert err.rstrip().endswith("(allow with --allow-private-webhooks)")
        assert len(receiver.requests) == 1  # the refused one never left


async def test_a_run_tells_its_webhook_when_the_session_idles(tmp_path: Path) -> None:
    async with Receiver() as receiver:
        team = tmp_path / "team.toml"
        team.write_text(
            'name = "hooked"\n\n[lead]\nname = "lead"\n\n[[webhooks]]\n'
            f'url = "{receiver.url}/done"\nevents = ["session.status_idled"]\nsecret = "{SECRET}"\n'
        )
        code, out, err = await run_cli(
            "run", "--team", str(team), "--json", "--allow-private-webhooks", "Say hello.",
            home=tmp_path / "home", timeout=120,
        )  # fmt: skip
        assert code == 0, err
        session = json.loads(out)["session_id"]
        [request] = receiver.requests  # delivered before the run ended
    assert request.payload is not None  # verified with standardwebhooks
    body = json.loads(request.body)
    assert (body["type"], body["data"]["type"], body["data"]["id"]) == (
        "event",
        "session.status_idled",
        session,
    )
    assert request.headers["webhook-id"] == body["id"]


async def test_a_submits_own_webhooks_through_the_gateway_are_delivered(bus: Bus) -> None:
    """A submit through ``<root>.api.submit`` whose ``webhooks`` replace its registered team's: the
    gateway stores the effective team, so the webhooks actor (which reads the record) delivers them."""
    await register_team(bus, TeamSpec(name="plain", lead=AgentSpec(name="lead")))
    model = ScriptedModel({"lead": [text("all done")]})
    async with Receiver() as receiver, webhooks(bus), running_agents(bus, model):
        endpoint = WebhookSpec(url=f"{receiver.url}/override", events=["session.status_idled"], secret=SECRET)
        client = Client(bus)
        session_id = await client.submit("Say hello.", team="plain", webhooks=[endpoint])
        result = await client.wait(session_id, timeout=30)
        assert result.status == "idle"
        await receiver.wait_for(lambda: bool(receiver.delivered("/override")))
    record = await SessionDirectory(bus).get(session_id)
    assert record is not None
    assert record.team.webhooks == [endpoint]  # the record holds the effective team
    [request] = receiver.delivered("/override")
    assert request.payload is not None  # verified with standardwebhooks
    assert request.payload["data"] == request.payload["data"] | {
        "type": "session.status_idled",
        "id": session_id,
    }
