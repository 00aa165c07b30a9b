"""The transport: the only package that imports ``nats``; the public names are exported here.

``Bus`` (the connection: publishing, requests, subscriptions, KV), ``Subjects`` (every subject and
resource name), and the error hierarchy (``bus.errors``). Modules: ``connection``, ``subjects``,
``codec``, ``provision``, ``server`` (the embedded nats-server), ``workspace`` (the shared
filesystem), ``memory`` (memory stores), ``actor`` / ``runtime`` / ``lifecycle`` (the actor runtime).
``Bus`` is imported on first use, so ``from bus.errors import ...`` does not load nats.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bus.errors import *  # noqa: F403 (the hierarchy is public as a whole)
from bus.errors import __all__ as _errors
from bus.subjects import Subjects

if TYPE_CHECKING:
    from bus.connection import Bus

__all__ = ["Bus", "Subjects", *_errors]


def __getattr__(name: str) -> Any:
    if name == "Bus":
        from bus.connection import Bus

        return Bus
    raise AttributeError(f"module 'bus' has no attribute {name!r}")
