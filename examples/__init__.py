"""Runnable examples: a team file, the data it works on, and how to run it.

Each example is a package with a ``team.toml``, its default ``TASK`` and ``ensure_data(folder)``,
which generates its data into ``folder`` unless it is there (``staffwork run --example NAME``)."""

from __future__ import annotations

import argparse
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict
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


def generator_main(name: str, doc: str | None, generate: Callable[..., Any], argv: list[str] | None) -> None:
    """``python -m examples.<name>.generate DIR [--seed N] [--truth]``: write the data into DIR, and
    with ``--truth`` print the ground truth ``generate`` returned, as JSON."""
    parser = argparse.ArgumentParser(prog=f"python -m examples.{name}.generate", description=doc)
    parser.add_argument("folder", type=Path, help="where to write the data")
    parser.add_argument("--seed", type=int, default=7, help="the random seed (default: 7)")
    parser.add_argument("--truth", action="store_true", help="also print the ground truth (JSON)")
    args = parser.parse_args(argv)
    truth = generate(args.folder, seed=args.seed)
    if args.truth:
        print(json.dumps(asdict(truth), indent=2))
