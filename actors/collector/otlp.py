"""Optional OTLP export: trace events as OpenTelemetry spans, POSTed to a receiver as OTLP/HTTP JSON.

:meth:`OtlpExporter.add` turns each newly stored event into spans
(:class:`~actors.collector.spans.SpanBuilder`), only updating bounded state and a bounded queue. A
background task posts batches to ``<url>/v1/traces`` and retries a receiver that is down with
backoff; spans beyond the queue are dropped and counted, so export never slows or stops the
collector. :meth:`OtlpExporter.close` exports the runs still open as unfinished and sends what is
queued, within ``timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
from collections import deque
from datetime import UTC, datetime
from typing import Literal

import httpx2
import msgspec
import structlog

from actors.collector.spans import Span, SpanBuilder, encode_attributes, trace_id
from schemas.trace import AnyTraceEvent, event_kind

__all__ = ["OtlpExporter", "SpanBuilder", "trace_id", "traces_url"]

log = structlog.get_logger("staffwork.otlp")

SCOPE = "staffwork"
TRACES_PATH = "/v1/traces"
_RETRYABLE = frozenset({429, 502, 503, 504})  # the OTLP/HTTP spec's retryable statuses
_RETRY_AFTER = frozenset({429, 503})  # the statuses whose Retry-After the spec says to honour


def traces_url(url: str) -> str:
    """The receiver's traces endpoint: ``url`` itself if it ends with ``/v1/traces``, else appended."""
    url = url.rstrip("/")
    return url if url.endswith(TRACES_PATH) else url + TRACES_PATH


def _parse_retry_after(value: str | None) -> float:
    """Seconds to wait from a ``Retry-After`` header (delay seconds or an HTTP date); 0 if none."""
    value = (value or "").strip()
    if not value:
        return 0.0
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return 0.0
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - datetime.now(UTC)).total_seconds()
    return seconds if seconds > 0 else 0.0  # (NaN is not > 0)


class OtlpExporter:
    """Exports spans built from trace events to an OTLP/HTTP receiver, in the background.

    ``add`` never blocks and never raises. ``exported`` and ``dropped`` count spans, ``unfinished``
    the runs exported unfinished.
    """

    def __init__(
        self,
        url: str,
        *,
        service_name: str = "staffwork",
        batch_size: int = 512,
        interval: float = 1.0,
        timeout: float = 10.0,
        max_queue: int = 8192,
        max_sessions: int = 1024,
        max_backoff: float = 30.0,
    ) -> None:
        self.url = traces_url(url)
        scheme = httpx2.URL(self.url).scheme
        if scheme not in ("http", "https"):
            raise ValueError(f"an OTLP/HTTP endpoint is an http(s) URL, not {url!r}")
        self.service_name = service_name
        self.batch_size = max(1, batch_size)
        self.interval = interval
        self.timeout = timeout
        self.max_backoff = max_backoff
        self.max_queue = max(self.batch_size, max_queue)
        self.exported = 0
        self.dropped = 0
        self._builder = SpanBuilder(max_sessions=max_sessions)
        self._resource = {"attributes": encode_attributes({"service.name": service_name})}
        self._queue: deque[Span] = deque()
        self._wake = asyncio.Event()
        self._client: httpx2.AsyncClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._failures = 0  # consecutive failed posts
        self._retry_after = 0.0  # the last failed post's Retry-After, in seconds
        self._overflowing = False
        self._closed = False

    async def start(self) -> None:
        """Start the background flushes (every ``interval``, or as soon as a batch is full)."""
        if self._task is None and not self._closed:
            self._task = asyncio.create_task(self._run(), name="otlp-exporter")

    @property
    def unfinished(self) -> int:
        """Runs exported unfinished: still open when the exporter closed (or their session was evicted)."""
        return self._builder.unfinished

    def add(self, event: AnyTraceEvent) -> None:
        """Queue the spans ``event`` finishes. Never blocks, never raises."""
        if self._closed:
            return
        try:
            spans = self._builder.add(event)
        except Exception:  # a span is not worth a collector: log it and carry on
            log.exception("otlp_event_skipped", session_id=event.session_id, kind=event_kind(event))
            return
        self._enqueue(spans)

    def _enqueue(self, spans: list[Span]) -> None:
        for span in spans:
            if len(self._queue) < self.max_queue:
                self._queue.append(span)
                continue
            self.dropped += 1
            if not self._overflowing:
                self._overflowing = True
                log.warning(
                    "otlp_queue_full", url=self.url, max_queue=self.max_queue, action="dropping spans"
                )
        if len(self._queue) >= self.batch_size and not self._failures:
            self._wake.set()

    async def close(self) -> None:
        """Export the runs still open as unfinished, stop the background task, send what is queued
        (within ``timeout``), close the client."""
        if self._closed:
            return
        self._closed = True
        try:
            self._enqueue(self._builder.finish())
        except Exception:
            log.exception("otlp_finish_failed", url=self.url)
        self._wake.set()  # the background task ends, after the post it may be making
        try:
            async with asyncio.timeout(self.timeout):
                if self._task is not None:
                    await asyncio.wait({self._task})
                await self._flush()
        except TimeoutError:
            log.warning("otlp_flush_timed_out", url=self.url, timeout_s=self.timeout)
        finally:
            if self._task is not None and not self._task.done():
                self._task.cancel()
                await asyncio.wait({self._task})
            if self._queue:
                self.dropped += len(self._queue)
                log.warning("otlp_spans_dropped", url=self.url, count=len(self._queue))
                self._queue.clear()
            if self._client is not None:
                with contextlib.suppress(Exception):
                    await self._client.aclose()
        log.info(
            "otlp_exporter_closed",
            url=self.url,
            exported=self.exported,
            dropped=self.dropped,
            unfinished=self.unfinished,
        )

    async def _run(self) -> None:
        while not self._closed:
            # Wait for a full batch (add() wakes us, except while backing off), close(), or the interval.
            delay = self.interval
            if self._failures:
                backoff = self.interval * 2 ** min(self._failures - 1, 32)
                delay = min(max(backoff, self._retry_after), self.max_backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            if self._closed:
                return  # close() sends the rest
            try:
                await self._flush()
            except Exception:  # a bug must not end the exports for good
                log.exception("otlp_flush_failed", url=self.url)
                self._failures += 1

    async def _flush(self) -> None:
        """Post queued spans, a batch at a time, until the queue is empty or a post must be retried."""
        while self._queue:
            batch = list(itertools.islice(self._queue, self.batch_size))
            outcome = await self._post(batch)
            if outcome == "retry":
                return  # stays queued for a try after a backoff (on close: dropped and counted)
            for _ in batch:
                self._queue.popleft()
            self._overflowing = False
            if outcome == "ok":
                self.exported += len(batch)
            else:
                self.dropped += len(batch)

    async def _post(self, batch: list[Span]) -> Literal["ok", "retry", "drop"]:
        body = msgspec.json.encode(
            {
                "resourceSpans": [
                    {"resource": self._resource, "scopeSpans": [{"scope": {"name": SCOPE}, "spans": batch}]}
                ]
            }
        )
        if self._client is None:
            self._client = httpx2.AsyncClient(timeout=self.timeout)
        try:
            response = await self._client.post(
                self.url, content=body, headers={"Content-Type": "application/json"}
            )
        except httpx2.HTTPError as exc:
            self._retry_after = 0.0
            return self._failed(f"{type(exc).__name__}: {exc}", retry=True)
        if not response.is_success:
            status = response.status_code
            wait = response.headers.get("Retry-After") if status in _RETRY_AFTER else None
            self._retry_after = _parse_retry_after(wait)
            return self._failed(f"HTTP {status}: {response.text[:200]}", retry=status in _RETRYABLE)
        if self._failures:
            log.info("otlp_export_recovered", url=self.url, failed_posts=self._failures, dropped=self.dropped)
            self._failures = 0
            self._retry_after = 0.0
        self._log_partial_success(response.content)
        return "ok"

    def _failed(self, error: str, *, retry: bool) -> Literal["retry", "drop"]:
        self._failures += 1
        if self._failures == 1:  # once per failure streak
            log.warning(
                "otlp_export_failed",
                url=self.url,
                error=error,
                action="retrying with backoff" if retry else "dropping the batch",
                queued=len(self._queue),
            )
        return "retry" if retry else "drop"

    def _log_partial_success(self, content: bytes) -> None:
        try:
            answer = msgspec.json.decode(content) if content else {}
            partial = answer.get("partialSuccess") or {}
            rejected = int(partial.get("rejectedSpans") or 0)
        except (msgspec.DecodeError, AttributeError, TypeError, ValueError):
            return
        if rejected:
            message = str(partial.get("errorMessage", ""))
            log.warning("otlp_spans_rejected", url=self.url, rejected=rejected, message=message)
