"""Where staffwork keeps its data on this machine (the embedded server's store, state files)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def data_dir() -> Path:
    """``$STAFFWORK_HOME``, else the platform's per-user data directory plus ``staffwork``."""
    if home := os.environ.get("STAFFWORK_HOME"):
        return Path(home).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
    return base / "staffwork"


def server_store_dir() -> Path:
    """The embedded nats-server's JetStream store."""
    return data_dir() / "nats"
