"""The incident example: a bad deploy, the data it leaves behind, and a team that investigates it."""

from __future__ import annotations

from pathlib import Path

from examples import ensure_generated

TASK = "Payments are failing since this afternoon. Find out what happened and write the incident report."


def standard_data() -> Path:
    """Where ``staffwork run --example incident`` keeps its data: ``data_dir()/examples/incident``."""
    from bus.paths import data_dir

    return data_dir() / "examples" / "incident"


def ensure_data(folder: Path) -> Path:
    """``folder``, with the example's data (the default seed) generated into it if it does not exist."""
    # imported here: the package must not import the module `python -m examples.incident.generate` runs
    from examples.incident.generate import generate

    return ensure_generated(folder, generate)
