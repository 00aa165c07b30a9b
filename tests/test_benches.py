"""The benchmarks the README lists exist and start: each one's ``--help`` (running them is not CI's
job; each prints its figures against a baseline measured in the same run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BENCHES = sorted(set(re.findall(r"^\.venv/bin/python (bench/\w+\.py)", README, flags=re.MULTILINE)))


def test_the_readme_lists_the_benchmarks() -> None:
    assert set(BENCHES) == {str(p.relative_to(ROOT)) for p in (ROOT / "bench").glob("[!_]*.py")} - {
        "bench/autogen_grpc.py"  # run by fanout.py, not on its own
    }


@pytest.mark.parametrize("bench", BENCHES)
def test_a_benchmark_starts(bench: str) -> None:
    done = subprocess.run(
        [sys.executable, bench, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout
