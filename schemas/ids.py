"""Identifiers: short, time-sortable, safe as NATS subject tokens and object names.

An id is ``<prefix>_<26 chars>``: 48 bits of milliseconds since the epoch and 80 random bits, in
base32 with the "extended hex" alphabet (``0-9a-v``), whose order is the numeric order, so ids sort by
creation time and never need escaping.
"""

from __future__ import annotations

import os
import random
import time

# The random bits come from a generator seeded from the OS (a system call per id was most of an id's
# cost, on every message), reseeded in a forked child so parent and child never share a sequence.
# Ids are unique, not secret: access to the bus, not an id, is what guards a session.
_random = random.Random(os.urandom(32))
os.register_at_fork(after_in_child=lambda: _random.seed(os.urandom(32)))

_DIGITS = "0123456789abcdefghijklmnopqrstuv"
#: every 10-bit value as its two base32hex digits (ids are made on every message: the stdlib's
#: base32 encoder, pure Python in 3.11, was most of their cost)
_PAIRS = [a + b for a in _DIGITS for b in _DIGITS]


def new_id(prefix: str = "msg") -> str:
    """Return a fresh id such as ``ses_064m3kq1a0s8hvd9u2f7c4bq1g``."""
    # 48 bits of milliseconds and 80 random bits: 128 bits, of which the first 130 - 2 = 128 fill 26
    # base32hex digits (the last digit holds 3 bits and two zero bits, as base32 of 16 bytes does).
    n = ((time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF) << 80 | _random.getrandbits(80)
    n <<= 2
    pairs = _PAIRS
    return prefix + "_" + "".join([pairs[(n >> shift) & 0x3FF] for shift in range(120, -1, -10)])
