"""The incident example: a bad deploy, the data it leaves behind, and a team that investigates it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def standard_data() -> Path:
    """Where ``staffwork run --example incident`` keeps its data: ``data_dir()/examples/incident``."""
    from bus.paths import data_dir

    return data_dir() / "examples" / "incident"


def ensure_data(folder: Path) -> Path:
    """``folder``, with the example's data (the default seed) generated into it if it does not exist.

    The data is generated privately, then renamed into place: a process starting at the same moment
    never reads half-written files (the rename is atomic; if another process won, its data is used).
    """
    # imported here: the package must not import the module `python -m examples.incident.generate` runs
    from examples.incident.generate import generate

    if not folder.exists():
        private = folder.with_name(f".{folder.name}-{os.getpid()}")
        shutil.rmtree(private, ignore_errors=True)
        generate(private)
        try:
            private.rename(folder)
        except OSError:
            shutil.rmtree(private, ignore_errors=True)
    return folder
