"""The build-triage example: a week of CI builds from three CI systems, mostly noise, and a team that
finds the few failures worth acting on."""

from __future__ import annotations

from pathlib import Path

from examples import ensure_generated

TASK = (
    "A week of CI builds failed far too often. Triage every failed build and report only the failures "
    "worth acting on, with counts and example builds."
)


def ensure_data(folder: Path) -> Path:
    """``folder``, with the example's data (the default seed) generated into it if it does not exist."""
    from examples.builds.generate import generate

    return ensure_generated(folder, generate)
