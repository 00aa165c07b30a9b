"""Runnable examples: a team file, the data it works on, and how to run it.

Each example is a package with a ``team.toml``, its default ``TASK`` and ``ensure_data(folder)``,
which generates its data into ``folder`` unless it is there (``staffwork run --example NAME``)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any


def ensure_generated(folder: Path, generate: Callable[[Path], Any]) -> Path:
    """``folder``, with ``generate(folder)``'s data in it if it does not exist yet.

    The data is generated privately, then renamed into place: a process starting at the same moment
    never reads half-written files (the rename is atomic; if another process won, its data is used).
    """
    if not folder.exists():
        private = folder.with_name(f".{folder.name}-{os.getpid()}")
        shutil.rmtree(private, ignore_errors=True)
        generate(private)
        try:
            private.rename(folder)
        except OSError:
            shutil.rmtree(private, ignore_errors=True)
    return folder
