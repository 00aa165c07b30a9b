"""W3C trace context (``traceparent``) carried in NATS headers, so spans link across processes.

The span of the work in progress lives in a context variable: the runtime sets it for each message it
handles (a child of the sender's span), and every publish made inside takes it as its parent.
"""

from __future__ import annotations

import contextvars
import os
import re
from dataclasses import dataclass

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


@dataclass(frozen=True, slots=True)
class SpanContext:
    trace_id: str
    span_id: str
    parent_span_id: str = ""

    @classmethod
    def new_root(cls) -> SpanContext:
        return cls(trace_id=os.urandom(16).hex(), span_id=os.urandom(8).hex())

    @classmethod
    def from_traceparent(cls, header: str | None) -> SpanContext | None:
        """Parse a ``traceparent`` header; None when absent or malformed (a new trace starts)."""
        if not header:
            return None
        match = _TRACEPARENT.match(header.strip().lower())
        if not match or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
            return None
        return cls(trace_id=match.group(1), span_id=match.group(2))

    def child(self) -> SpanContext:
        """A new span in the same trace whose parent is this span."""
        return SpanContext(trace_id=self.trace_id, span_id=os.urandom(8).hex(), parent_span_id=self.span_id)

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


current_span: contextvars.ContextVar[SpanContext | None] = contextvars.ContextVar(
    "current_span", default=None
)
