"""Identifiers: short, time-sortable, safe as NATS subject tokens and object names.

An id is ``<prefix>_<26 chars>``: 48 bits of milliseconds since the epoch and 80 random bits in
Crockford base32, lower case (the ULID layout), so ids sort by creation time and never need escaping.
"""

from __future__ import annotations

import os
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


def new_id(prefix: str = "msg") -> str:
    """Return a fresh id such as ``ses_01jd3k9x0c7v4d2m8q6r1t5w9y``."""
    value = (time.time_ns() // 1_000_000) << 80 | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        value, digit = divmod(value, 32)
        chars.append(_ALPHABET[digit])
    return f"{prefix}_{''.join(reversed(chars))}"
