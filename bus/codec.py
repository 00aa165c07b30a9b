"""The codec: msgspec JSON, one encoder, one decoder per type created once."""

from __future__ import annotations

import re
from typing import Any, Generic, TypeVar, overload

import msgspec

from bus.errors import MessageRejected, MessageTooLarge

T = TypeVar("T")

#: Messages stay small: big content goes to the workspace and messages carry its path.
DEFAULT_MAX_BYTES = 256 * 1024

_encoder = msgspec.json.Encoder()


def encode(msg: object) -> bytes:
    """Encode a message (or any msgspec-encodable value) to JSON bytes."""
    return _encoder.encode(msg)


class Decoder(Generic[T]):
    """Decodes payloads into ``type`` (a Struct or a union of tagged Structs), enforcing a size limit.

    Every failure raises :class:`MessageRejected`, whatever its cause, so a caller that handles it
    never meets a payload it cannot survive: msgspec's message with the path of the bad field
    (``Expected `str`, got `int` - at `$.task```), or the cause named (``nesting too deep``: msgspec
    raises ``RecursionError`` on ~1,000 nested arrays or objects, 2 KB of JSON).
    """

    @overload
    def __init__(self: Decoder[T], type: type[T], *, max_bytes: int = DEFAULT_MAX_BYTES) -> None: ...
    @overload  # a union of tagged Structs (``A | B``) is not a ``type[T]`` to the type checker
    def __init__(self: Decoder[Any], type: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None: ...
    def __init__(self, type: Any, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.type = type
        self.max_bytes = max_bytes
        self._decoder: msgspec.json.Decoder[T] = msgspec.json.Decoder(type)

    def decode(self, data: bytes, *, subject: str = "") -> T:
        if len(data) > self.max_bytes:
            raise MessageTooLarge(size=len(data), limit=self.max_bytes, subject=subject)
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:  # ValidationError is a subclass
            raise MessageRejected(str(exc), subject=subject, size=len(data)) from None
        except RecursionError:
            raise MessageRejected(_TOO_DEEP, subject=subject, size=len(data)) from None
        except Exception as exc:  # whatever else a payload can make decoding raise: still the payload's fault
            reason = f"cannot be decoded: {type(exc).__name__}: {exc}"
            raise MessageRejected(reason, subject=subject, size=len(data)) from None


_TOO_DEEP = "JSON nesting too deep (msgspec's recursion limit)"


_loose = msgspec.json.Decoder(dict[str, Any])


_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")


def peek_session(data: bytes) -> str:
    """The ``session_id`` of a payload that may not decode as any message type.

    ``""`` when there is none or it is not a valid id (so events about it go to the system subject).
    """
    try:
        value = _loose.decode(data).get("session_id", "")
    except Exception:  # not JSON, not an object, nested too deep: no session to name
        return ""
    return value if isinstance(value, str) and _TOKEN.match(value) else ""
