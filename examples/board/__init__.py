"""The board-report example: a quarter's finance, sales, operations and HR data in four shapes, one
analyst per department, and a lead that writes the report whose every figure the outcome checks
against the sources."""

from __future__ import annotations

from pathlib import Path

from examples import ensure_generated

TASK = "Write the Q3 2026 board report, with every department's figures against Q2 and a short narrative."


def ensure_data(folder: Path) -> Path:
    """``folder``, with the example's data (the default seed) generated into it if it does not exist."""
    from examples.board.generate import generate

    return ensure_generated(folder, generate)
