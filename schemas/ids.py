"""Identifiers: short, time-sortable, safe as NATS subject tokens and object names.

An id is ``<prefix>_<26 chars>``: 48 bits of milliseconds since the epoch and 80 random bits, in
base32 with the "extended hex" alphabet (``0-9a-v``), whose order is the numeric order, so ids sort by
creation time and never need escaping.
"""

from __future__ import annotations

import base64
import os
import time


def new_id(prefix: str = "msg") -> str:
    """Return a fresh id such as ``ses_064m3kq1a0s8hvd9u2f7c4bq1g``."""
    raw = (time.time_ns() // 1_000_000).to_bytes(6, "big") + os.urandom(10)
    return f"{prefix}_{base64.b32hexencode(raw).decode('ascii')[:26].lower()}"
