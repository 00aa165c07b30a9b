"""One traced model call, made the same way by the lead, the subagents, the grader and the dreamer.

:func:`call_model` emits ``span.model_request_start``, calls the model and emits
``span.model_request_end`` on every way out: with the stop reason, usage and cost, the model's own
name and the duration, or with the error (a cancel included). The events name the request's session,
thread and agent; a request without a session (a dream's) emits on ``<root>.sys.evt.<kind>``.

Errors leave translated: a retryable one (:class:`ModelRetryable`) as :class:`bus.errors.Retryable`,
so the runtime redelivers the message; any other :class:`ModelError` as :class:`ModelFatal`, for
the caller to turn into its own failure (a failed thread, criteria not graded, a failed dream).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from actors.agent.models.base import (
    Model,
    ModelError,
    ModelFatal,
    ModelRequest,
    ModelResponse,
    ModelRetryable,
)
from bus.connection import Bus
from bus.errors import BusError, Retryable
from schemas.base import ErrorInfo
from schemas.trace import ModelRequestEnd, ModelRequestStart


async def call_model(bus: Bus, model: Model, request: ModelRequest) -> ModelResponse:
    """``model``'s answer to ``request``, its call traced on ``bus``."""
    fields: dict[str, Any] = {
        "session_id": request.session_id,
        "thread_id": request.thread_id,
        "agent": request.agent,
    }
    await bus.emit(ModelRequestStart(model=request.model, **fields))
    started = time.perf_counter()

    def ended(**outcome: Any) -> ModelRequestEnd:
        duration = (time.perf_counter() - started) * 1000
        return ModelRequestEnd(duration_ms=duration, **fields, **outcome)

    try:
        response = await model.complete(request)
    except ModelError as exc:
        retryable = isinstance(exc, ModelRetryable)
        error = ErrorInfo(kind=type(exc).__name__, message=str(exc), retryable=retryable)
        await bus.emit(ended(model=request.model, error=error))
        if retryable:
            who = f"{request.agent} model" if request.agent else "model"
            raise Retryable(f"{who} {request.model}: {exc}") from exc
        if isinstance(exc, ModelFatal):
            raise
        raise ModelFatal(str(exc), status=exc.status) from exc
    except (Exception, asyncio.CancelledError) as exc:  # canceled, or a provider's bug: the span ends
        canceled = isinstance(exc, asyncio.CancelledError)
        error = ErrorInfo(kind=type(exc).__name__, message="the call was canceled" if canceled else str(exc))
        with contextlib.suppress(BusError):  # the original failure is the one to report
            await bus.emit(ended(model=request.model, error=error))
        raise
    await bus.emit(
        ended(
            model=response.model or request.model,
            stop_reason=response.stop_reason,
            usage=response.usage,
        )
    )
    return response
