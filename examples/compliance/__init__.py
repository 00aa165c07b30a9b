"""The vendor-contract compliance example: a vendor's MSA reviewed against the procurement policy and
the regulations, with the past deals in a memory store, and a memo of flagged clauses, recommended
changes and references."""

from __future__ import annotations

from pathlib import Path

from examples import ensure_generated

#: the data folder's part that is the session's input
INPUTS = "inputs"
#: the memory stores the team reads, each seeded from a folder of the data on first use
MEMORY = {"deals": "memory/deals"}
TASK = (
    "Review Northwind's MSA before we sign: flag every clause that breaks our procurement policy or a "
    "regulation, recommend the change, and back it with what we agreed in past deals."
)


def ensure_data(folder: Path) -> Path:
    """``folder``, with the example's data (the default seed) generated into it if it does not exist."""
    from examples.compliance.generate import generate

    return ensure_generated(folder, generate)
