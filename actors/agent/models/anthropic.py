"""Claude through the official ``anthropic`` SDK: the only module that imports it.

:class:`AnthropicModel` turns a :class:`ModelRequest` into one ``messages.create`` call (the system
prompt and the tools marked for prompt caching) and the answer back into our blocks, with usage and
its cost (:mod:`actors.agent.models.prices`; a model with no price costs 0, and one
``model_unpriced`` warning per model says how to price it). The SDK's own retries are off: this
module retries, and every failure leaves as one of ours, chained to the SDK's:
:class:`ModelRetryable` (429, 529 and other 5xx, 408, 409, a connection failure, a timeout; raised
once the retries are spent) or :class:`ModelFatal` (any other 4xx, at once). Redacted thinking goes
back to the API as ``redacted_thinking``. The details: docs/architecture.md, "Models".
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from typing import Final

import anthropic
import msgspec
import structlog
from anthropic import types as api

from actors.agent.models.base import ModelFatal, ModelRequest, ModelResponse, ModelRetryable
from actors.agent.models.prices import cost_usd, unpriced_hint
from schemas.base import Usage
from schemas.conversation import (
    ContentBlock,
    TextBlock,
    ThinkingBlock,
    ToolResultBlock,
    ToolSpec,
    ToolUseBlock,
    Turn,
)

__all__ = ["AnthropicModel"]

log = structlog.get_logger("staffwork.model")

#: Statuses worth retrying besides 5xx (529 "overloaded" is one of those).
RETRYABLE_STATUSES: Final = frozenset({408, 409, 429})
#: Upper bound of one backoff sleep, whether computed or asked for by ``retry-after``.
MAX_DELAY: Final = 60.0

_EPHEMERAL: Final[api.CacheControlEphemeralParam] = {"type": "ephemeral"}


class AnthropicModel:
    """A :class:`~actors.agent.models.base.Model` backed by the Messages API.

    ``api_key`` and ``base_url`` default to ``ANTHROPIC_API_KEY`` and ``ANTHROPIC_BASE_URL`` (the
    SDK reads them). A retryable failure is tried again up to ``max_retries`` times, sleeping a
    random time up to ``retry_base_delay * 2**attempt`` (full jitter), or what ``retry-after``
    asks for. ``timeout`` bounds each HTTP request, in seconds.
    """

    name = "anthropic"

    def __init__(
        self,
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        max_retries: int = 4,
        retry_base_delay: float = 1.0,
        timeout: float = 600.0,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        self.max_retries = max_retries
        self.retry_base_delay = retry_base_delay
        self.timeout = timeout
        self._unpriced: set[str] = set()  # models already warned about
        try:
            self._client = anthropic.AsyncAnthropic(
                api_key=api_key, base_url=base_url, max_retries=0, timeout=timeout
            )
        except anthropic.AnthropicError as exc:  # a broken credentials profile, say
            raise ModelFatal(f"anthropic client setup failed: {_one_line(str(exc))}") from exc

    @property
    def base_url(self) -> str:
        return str(self._client.base_url)

    async def close(self) -> None:
        await self._client.close()

    async def complete(self, request: ModelRequest) -> ModelResponse:
        attempt = 0
        while True:
            try:
                return await self._complete_once(request)
            except ModelRetryable as exc:
                attempt += 1
                if attempt > self.max_retries:
                    tries = f"{attempt} attempt" + ("s" if attempt > 1 else "")
                    raise ModelRetryable(
                        f"{exc} (gave up after {tries})", status=exc.status
                    ) from exc.__cause__
                delay = _retry_after(exc.__cause__)
                if delay is None:
                    delay = random.uniform(0, self.retry_base_delay * 2 ** (attempt - 1))
                delay = min(delay, MAX_DELAY)
                log.warning(
                    "model_retry",
                    error=str(exc),
                    attempt=attempt,
                    delay=round(delay, 3),
                    agent=request.agent,
                    thread_id=request.thread_id,
                )
                await asyncio.sleep(delay)

    async def _complete_once(self, request: ModelRequest) -> ModelResponse:
        """One API call, its failure translated."""
        client = self._client
        if client.api_key is None and client.auth_token is None and client.credentials is None:
            raise ModelFatal("no anthropic API key: pass api_key or set ANTHROPIC_API_KEY")
        try:
            message = await self._client.messages.create(
                model=request.model,
                max_tokens=request.max_tokens,
                system=_system_param(request.system) if request.system else anthropic.omit,
                tools=_tools_param(request.tools) if request.tools else anthropic.omit,
                tool_choice={"type": "tool", "name": request.force_tool}
                if request.force_tool
                else anthropic.omit,
                messages=[_message_param(turn) for turn in request.messages],
            )
        except anthropic.APITimeoutError as exc:
            raise ModelRetryable(
                f"anthropic API timed out after {self.timeout:g}s at {self.base_url}"
            ) from exc
        except anthropic.APIConnectionError as exc:
            reason = _one_line(str(exc.__cause__ or exc))
            raise ModelRetryable(f"anthropic API unreachable at {self.base_url}: {reason}") from exc
        except anthropic.APIStatusError as exc:
            status = exc.status_code
            text = f"anthropic API {status} {_describe(exc.body)}"
            if status >= 500 or status in RETRYABLE_STATUSES:
                raise ModelRetryable(text, status=status) from exc
            raise ModelFatal(text, status=status) from exc
        except anthropic.APIError as exc:
            raise ModelFatal(f"anthropic API call failed: {_one_line(exc.message)}") from exc
        response = _response(message)
        return msgspec.structs.replace(response, usage=self._priced(response, request))

    def _priced(self, response: ModelResponse, request: ModelRequest) -> Usage:
        """``response``'s usage with its cost; 0 for a model with no price (warned about once)."""
        usage = response.usage
        cost = cost_usd(usage, response.model, request.prices, requested=request.model)
        if cost is None:
            if response.model not in self._unpriced:
                self._unpriced.add(response.model)
                log.warning(
                    "model_unpriced",
                    model=response.model,
                    cost_usd=0.0,
                    hint=unpriced_hint(response.model),
                    agent=request.agent,
                    session_id=request.session_id,
                )
            cost = 0.0
        return msgspec.structs.replace(usage, cost_usd=cost)


# -- request -----------------------------------------------------------------------------------------


def _system_param(system: str) -> list[api.TextBlockParam]:
    return [{"type": "text", "text": system, "cache_control": _EPHEMERAL}]


def _tools_param(tools: list[ToolSpec]) -> list[api.ToolParam]:
    params: list[api.ToolParam] = [
        {"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in tools
    ]
    params[-1]["cache_control"] = _EPHEMERAL
    return params


def _message_param(turn: Turn) -> api.MessageParam:
    content = [_block_param(block) for block in turn.content]
    if turn.role == "user":
        return {"role": "user", "content": content}
    return {"role": "assistant", "content": content}


def _block_param(block: ContentBlock) -> api.ContentBlockParam:
    match block:
        case TextBlock(text=text):
            return {"type": "text", "text": text}
        case ToolUseBlock(id=id_, name=name, input=input_):
            return {"type": "tool_use", "id": id_, "name": name, "input": input_}
        case ToolResultBlock(tool_use_id=tool_use_id, content=content, is_error=is_error):
            return {
                "type": "tool_result",
                "tool_use_id": tool_use_id,
                "content": content,
                "is_error": is_error,
            }
        case ThinkingBlock(thinking="", signature=data):
            return {"type": "redacted_thinking", "data": data}
        case ThinkingBlock(thinking=thinking, signature=signature):
            return {"type": "thinking", "thinking": thinking, "signature": signature}


# -- response ----------------------------------------------------------------------------------------


def _response(message: api.Message) -> ModelResponse:
    content: list[ContentBlock] = []
    for block in message.content:
        match block:
            case api.TextBlock():
                content.append(TextBlock(text=block.text))
            case api.ToolUseBlock():
                content.append(ToolUseBlock(id=block.id, name=block.name, input=dict(block.input)))
            case api.ThinkingBlock():
                content.append(ThinkingBlock(thinking=block.thinking, signature=block.signature))
            case api.RedactedThinkingBlock():
                content.append(ThinkingBlock(thinking="", signature=block.data))
            case _:
                log.warning("model_block_dropped", block_type=block.type, model=message.model)
    usage = Usage(
        input_tokens=message.usage.input_tokens or 0,
        output_tokens=message.usage.output_tokens or 0,
        cache_creation_input_tokens=message.usage.cache_creation_input_tokens or 0,
        cache_read_input_tokens=message.usage.cache_read_input_tokens or 0,
    )
    return ModelResponse(
        content=content,
        stop_reason=message.stop_reason or "",
        usage=usage,
        model=message.model,
    )


# -- errors ------------------------------------------------------------------------------------------


def _describe(body: object) -> str:
    """``<error.type>: <error.message>`` from an error body, or the body itself as one line."""
    error = body.get("error", body) if isinstance(body, Mapping) else None
    if isinstance(error, Mapping) and isinstance(error.get("message"), str):
        kind = error.get("type")
        message = _one_line(error["message"])
        return f"{kind}: {message}" if isinstance(kind, str) and kind else message
    return _one_line(str(body)) if body else "(no error message)"


def _retry_after(exc: BaseException | None) -> float | None:
    """The seconds a ``retry-after`` header asks us to wait, if ``exc`` is a response that has one."""
    if not isinstance(exc, anthropic.APIStatusError):
        return None
    value = exc.response.headers.get("retry-after")
    try:
        seconds = float(value) if value is not None else None
    except ValueError:  # an HTTP date: not worth parsing, fall back to our backoff
        return None
    return seconds if seconds is not None and seconds >= 0 else None


def _one_line(text: str, limit: int = 500) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"
