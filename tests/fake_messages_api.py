"""A local fake of the Messages API: real HTTP on 127.0.0.1, the real wire format, scripted answers.

``POST /v1/messages`` checks the API key (``x-api-key``, or ``Authorization: Bearer`` as newer SDKs
send it), then any failure the test asked for (429, 529, ...), then validates the request the way
the real API does, rejecting a malformed conversation with 400 ``invalid_request_error``, and
finally answers with the next reply the test queued. Every request is recorded, headers and body.

::

    with FakeMessagesAPI(api_key="k") as api:
        api.reply(text("hello"), usage={"input_tokens": 12})
        api.fail_next(2, 429, retry_after="0")
        ... AnthropicModel(api_key="k", base_url=api.url) ...
        assert len(api.requests) == 3
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

__all__ = [
    "FakeMessagesAPI",
    "InvalidRequest",
    "Recorded",
    "Reply",
    "text",
    "thinking",
    "tool_use",
    "validate",
]

#: The ``error.type`` the real API sends with each status.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    422: "invalid_request_error",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}

#: Top-level request fields the real API knows; anything else is "Extra inputs are not permitted".
KNOWN_FIELDS = frozenset(
    {
        "model",
        "max_tokens",
        "messages",
        "system",
        "tools",
        "tool_choice",
        "metadata",
        "stop_sequences",
        "stream",
        "temperature",
        "top_p",
        "top_k",
        "thinking",
        "service_tier",
        "cache_control",
        "container",
        "output_config",
        "inference_geo",
        "speed",
    }
)
#: The content block types a request may carry here, and their required fields.
BLOCK_FIELDS: dict[str, dict[str, type]] = {
    "text": {"text": str},
    "tool_use": {"id": str, "name": str, "input": dict},
    "tool_result": {"tool_use_id": str},
    "thinking": {"thinking": str, "signature": str},
    "redacted_thinking": {"data": str},
}
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
MAX_CACHE_BREAKPOINTS = 4

DEFAULT_USAGE = {
    "input_tokens": 10,
    "output_tokens": 5,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value, "citations": None}


def tool_use(id: str, name: str, input: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "tool_use", "id": id, "name": name, "input": input or {}}


def thinking(value: str, signature: str = "sig") -> dict[str, Any]:
    return {"type": "thinking", "thinking": value, "signature": signature}


@dataclass(frozen=True)
class Recorded:
    """One request as the server saw it. Header names are lower case; ``body`` is the parsed JSON."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any

    @property
    def credential(self) -> str | None:
        """The API key the client sent, from ``x-api-key`` or ``Authorization: Bearer``."""
        return _credential(self.headers)


@dataclass(frozen=True)
class Reply:
    """A queued success: content blocks in wire form, stop reason, usage (merged over defaults)."""

    content: list[dict[str, Any]]
    stop_reason: str | None = "end_turn"
    usage: dict[str, int | None] = field(default_factory=dict)
    model: str | None = None  # None: echo the request's model


@dataclass(frozen=True)
class _Failure:
    status: int
    message: str
    retry_after: str | None


class InvalidRequest(Exception):
    """A request the real API would refuse with 400 ``invalid_request_error``."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class FakeMessagesAPI:
    """The fake server. Use as a context manager, or call :meth:`start` and :meth:`stop`."""

    def __init__(self, *, api_key: str = "test-key") -> None:
        self.api_key = api_key
        self._lock = threading.Lock()
        self._replies: deque[Reply] = deque()
        self._failures: deque[_Failure] = deque()
        self._delays: deque[float] = deque()
        self._requests: list[Recorded] = []
        self._ids = itertools.count(1)
        self._closing = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        server = _Server(("127.0.0.1", 0), _Handler)
        server.api = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(0.01,), name="fake-messages-api", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._closing.set()  # wakes handlers sleeping in a delay
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()  # joins the handler threads
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._server = None
        self._thread = None

    def __enter__(self) -> FakeMessagesAPI:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "the fake API is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- scripting -------------------------------------------------------------------------------------

    def reply(
        self,
        *content: dict[str, Any],
        stop_reason: str | None = "end_turn",
        usage: dict[str, int | None] | None = None,
        model: str | None = None,
    ) -> None:
        """Queue the answer to the next valid request."""
        with self._lock:
            self._replies.append(Reply(list(content), stop_reason, usage or {}, model))

    def fail_next(
        self, count: int, status: int, *, message: str | None = None, retry_after: str | None = None
    ) -> None:
        """Answer the next ``count`` authenticated requests with ``status`` (429, 529, 500, 403, ...)."""
        error_type = ERROR_TYPES.get(status, "api_error")
        failure = _Failure(status, message or f"fake {error_type}", retry_after)
        with self._lock:
            self._failures.extend([failure] * count)

    def delay_next(self, seconds: float) -> None:
        """Hold the next response for ``seconds`` (cut short when the server stops)."""
        with self._lock:
            self._delays.append(seconds)

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    @property
    def pending(self) -> int:
        """Queued replies and failures not yet consumed."""
        with self._lock:
            return len(self._replies) + len(self._failures)

    # -- serving (handler threads) ---------------------------------------------------------------------

    def _serve(self, recorded: Recorded) -> tuple[int, dict[str, Any], dict[str, str]]:
        """The status, JSON body and extra headers of the answer to ``recorded``."""
        with self._lock:
            self._requests.append(recorded)
            delay = self._delays.popleft() if self._delays else 0.0
        if delay:
            self._closing.wait(delay)
        if recorded.method != "POST" or recorded.path.split("?")[0] != "/v1/messages":
            return _error(404, f"{recorded.method} {recorded.path} not found")
        key = recorded.credential
        if key is None:
            return _error(401, "x-api-key header is required")
        if key != self.api_key:
            return _error(401, "invalid x-api-key")
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            status, body, headers = _error(failure.status, failure.message)
            if failure.retry_after is not None:
                headers["retry-after"] = failure.retry_after
            return status, body, headers
        if "anthropic-version" not in recorded.headers:
            return _error(400, "anthropic-version: header is required")
        try:
            validate(recorded.body)
        except InvalidRequest as exc:
            return _error(400, exc.message)
        with self._lock:
            reply = self._replies.popleft() if self._replies else None
            number = next(self._ids)
        if reply is None:
            return _error(400, "fake Messages API: no reply queued for this request")
        return 200, self._message(number, reply, recorded.body["model"]), {}

    @staticmethod
    def _message(number: int, reply: Reply, model: str) -> dict[str, Any]:
        return {
            "id": f"msg_fake{number:04d}",
            "type": "message",
            "role": "assistant",
            "model": reply.model or model,
            "content": reply.content,
            "stop_reason": reply.stop_reason,
            "stop_sequence": None,
            "usage": {**DEFAULT_USAGE, **reply.usage},
        }


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    api: FakeMessagesAPI


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        self._handle()

    def do_GET(self) -> None:
        self._handle()

    def _handle(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")  # validate() refuses it
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, payload, extra = self.server.api._serve(Recorded(self.command, self.path, headers, body))
        data = json.dumps(payload).encode()
        try:
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (a timeout test): nothing to answer
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _error(status: int, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    error_type = ERROR_TYPES.get(status, "api_error")
    body = {"type": "error", "error": {"type": error_type, "message": message}}
    return status, body, {}


def _credential(headers: dict[str, str]) -> str | None:
    if "x-api-key" in headers:
        return headers["x-api-key"]
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


# -- validation ---------------------------------------------------------------------------------------


def validate(body: Any) -> None:
    """Raise :class:`InvalidRequest` with the real API's message if it would refuse ``body``."""
    if not isinstance(body, dict):
        raise InvalidRequest("request body must be a JSON object")
    for key in body:
        if key not in KNOWN_FIELDS:
            raise InvalidRequest(f"{key}: Extra inputs are not permitted")
    if "model" not in body:
        raise InvalidRequest("model: Field required")
    if not isinstance(body["model"], str) or not body["model"]:
        raise InvalidRequest("model: Input should be a valid string")
    if "max_tokens" not in body:
        raise InvalidRequest("max_tokens: Field required")
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        raise InvalidRequest("max_tokens: Input should be a valid integer")
    if max_tokens < 0:
        raise InvalidRequest("max_tokens: Input should be greater than or equal to 0")
    if "messages" not in body:
        raise InvalidRequest("messages: Field required")
    if not isinstance(body["messages"], list):
        raise InvalidRequest("messages: Input should be a valid list")
    breakpoints = _validate_system(body.get("system")) + _validate_tools(body.get("tools"))
    breakpoints += _validate_messages(body["messages"])
    if breakpoints > MAX_CACHE_BREAKPOINTS:
        raise InvalidRequest(
            f"A maximum of {MAX_CACHE_BREAKPOINTS} blocks with cache_control may be provided. "
            f"Found {breakpoints}."
        )


def _validate_system(system: Any) -> int:
    if system is None or isinstance(system, str):
        return 0
    if not isinstance(system, list):
        raise InvalidRequest("system: Input should be a valid string or a list of text blocks")
    for j, block in enumerate(system):
        if not isinstance(block, dict) or block.get("type") != "text":
            raise InvalidRequest(f"system.{j}.type: Input should be 'text'")
        _validate_block(block, f"system.{j}")
    return sum(1 for block in system if block.get("cache_control") is not None)


def _validate_tools(tools: Any) -> int:
    if tools is None:
        return 0
    if not isinstance(tools, list):
        raise InvalidRequest("tools: Input should be a valid list")
    seen: set[str] = set()
    for j, tool in enumerate(tools):
        if not isinstance(tool, dict):
            raise InvalidRequest(f"tools.{j}: Input should be a valid dictionary")
        name = tool.get("name")
        if not isinstance(name, str) or not TOOL_NAME.match(name):
            raise InvalidRequest(f"tools.{j}.custom.name: String should match pattern '{TOOL_NAME.pattern}'")
        if name in seen:
            raise InvalidRequest("tools: Tool names must be unique.")
        seen.add(name)
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise InvalidRequest(f"tools.{j}.custom.input_schema.type: Input should be 'object'")
    return sum(1 for tool in tools if tool.get("cache_control") is not None)


def _validate_messages(messages: list[Any]) -> int:
    if not messages:
        raise InvalidRequest("messages: at least one message is required")
    breakpoints = 0
    previous_role: str | None = None
    previous_tool_uses: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise InvalidRequest(f"messages.{i}: Input should be a valid dictionary")
        role = message.get("role")
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"messages.{i}.role: Input should be 'user' or 'assistant'")
        if i == 0 and role != "user":
            raise InvalidRequest('messages: first message must use the "user" role')
        if role == previous_role:
            raise InvalidRequest(
                f'messages: roles must alternate between "user" and "assistant", '
                f'but found multiple "{role}" roles in a row'
            )
        if "content" not in message:
            raise InvalidRequest(f"messages.{i}.content: Field required")
        content = message["content"]
        if isinstance(content, str):
            content = [{"type": "text", "text": content}] if content else []
        if not isinstance(content, list):
            raise InvalidRequest(f"messages.{i}.content: Input should be a valid string or list")
        if not content and not (role == "assistant" and i == len(messages) - 1):
            raise InvalidRequest(
                f"messages.{i}: all messages must have non-empty content "
                "except for the optional final assistant message"
            )
        for j, block in enumerate(content):
            _validate_block(block, f"messages.{i}.content.{j}")
            if block["type"] == "tool_result" and role != "user":
                raise InvalidRequest(
                    f"messages.{i}.content.{j}: tool_result blocks may only be sent by the user"
                )
            if block["type"] == "tool_use" and role != "assistant":
                raise InvalidRequest(
                    f"messages.{i}.content.{j}: tool_use blocks may only be sent by the assistant"
                )
            breakpoints += block.get("cache_control") is not None
        if role == "user":
            _validate_tool_results(i, content, previous_tool_uses)
        previous_tool_uses = [b["id"] for b in content if b["type"] == "tool_use"]
        previous_role = role
    return breakpoints


def _validate_tool_results(i: int, content: list[dict[str, Any]], tool_use_ids: list[str]) -> None:
    """A user turn after tool_use blocks must open with exactly one tool_result for each of them."""
    answered: set[str] = set()
    opening = True
    for j, block in enumerate(content):
        if block["type"] != "tool_result":
            opening = False
            continue
        result_id = block["tool_use_id"]
        if result_id not in tool_use_ids:
            raise InvalidRequest(
                f"messages.{i}.content.{j}: unexpected `tool_use_id` found in `tool_result` blocks: "
                f"{result_id}. Each `tool_result` block must have a corresponding `tool_use` block "
                "in the previous message."
            )
        if not opening:
            raise InvalidRequest(
                f"messages.{i}.content.{j}: `tool_result` blocks must come first in the user message "
                "that answers `tool_use` blocks, before any other content"
            )
        if result_id in answered:
            raise InvalidRequest(
                f"messages.{i}.content.{j}: `tool_use` id {result_id} has more than one `tool_result` block"
            )
        answered.add(result_id)
    missing = [id_ for id_ in tool_use_ids if id_ not in answered]
    if missing:
        raise InvalidRequest(
            f"messages.{i}: `tool_use` ids were found without `tool_result` blocks immediately after: "
            f"{', '.join(missing)}. Each `tool_use` block must have a corresponding `tool_result` block "
            "in the next message."
        )


def _validate_block(block: Any, where: str) -> None:
    if not isinstance(block, dict):
        raise InvalidRequest(f"{where}: Input should be a valid dictionary")
    kind = block.get("type")
    if kind not in BLOCK_FIELDS:
        raise InvalidRequest(
            f"{where}.type: Input tag {kind!r} found using 'type' does not match any of the expected tags"
        )
    for name, type_ in BLOCK_FIELDS[kind].items():
        if name not in block:
            raise InvalidRequest(f"{where}.{kind}.{name}: Field required")
        if not isinstance(block[name], type_):
            raise InvalidRequest(f"{where}.{kind}.{name}: Input should be a valid {type_.__name__}")
    if kind == "text" and not block["text"]:
        raise InvalidRequest("messages: text content blocks must be non-empty")
    if kind == "tool_result" and not isinstance(block.get("content", ""), str | list):
        raise InvalidRequest(f"{where}.tool_result.content: Input should be a valid string or list")
