"""Starting test helper modules as real processes, ready when they print READY."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def ready_process(
    module: str, *args: str, ready_word: bytes = b"READY"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``python -m module args...``, yielded once it printed ``ready_word`` (on stdout, or on stderr
    for ``staffwork`` commands); killed if still running after."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        cwd=ROOT_DIR,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if ready_word != b"READY" else asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = await proc.stdout.readline()
            while ready_word != b"READY" and line and ready_word not in line:
                line = await proc.stdout.readline()
        assert ready_word in line, line + (await proc.stderr.read() if proc.stderr else b"")
        yield proc
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.communicate()
