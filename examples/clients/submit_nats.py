"""Hand in the files below DIR as a staffwork session's inputs, start it and print its result, with
nats-py alone (no staffwork package). The team is incident unless named:

    pip install nats-py && STAFFWORK_NATS_URL=nats://127.0.0.1:4222 python submit_nats.py DIR [TEAM]
"""

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path

import nats


async def main(files: dict[str, Path], team: str = "incident") -> int:
    nc = await nats.connect(os.environ.get("STAFFWORK_NATS_URL", "nats://127.0.0.1:4222"))
    try:
        # Choose the session id, so the inputs can be put before the session starts.
        session_id = f"ses_{secrets.token_hex(8)}"
        store = await nc.jetstream().object_store("sw_files")
        for path, file in files.items():
            with file.open("rb") as data:  # nats-py reads it in chunks, in a thread
                await store.put(f"{session_id}/{path}", data)

        request = {
            "type": "session.submit.v1",
            "task": "Why did checkout fail?",
            "team": team,
            "session_id": session_id,
            "inputs": list(files),
        }
        reply = json.loads((await nc.request("sw.api.submit", json.dumps(request).encode(), timeout=10)).data)
        if not reply["accepted"]:
            print(f"refused: {reply['error']['kind']}: {reply['error']['message']}", file=sys.stderr)
            return 1
        for warning in reply.get("warnings", []):
            print(f"warning: {warning}", file=sys.stderr)
        # An ordered consumer: it also replays a result stored before it started.
        results = await nc.jetstream().subscribe(reply["result_subject"], ordered_consumer=True)
        result = json.loads((await results.next_msg(timeout=600)).data)
    finally:
        await nc.drain()  # the connection closes, so the process can exit
    print(f"session {session_id}: {result['status']}")
    print(result["final_text"])
    if result.get("error"):
        print(f"{result['error']['kind']}: {result['error']['message']}", file=sys.stderr)
    return 0 if result["status"] == "idle" else 1


def files_below(directory: Path) -> dict[str, Path]:
    """Every file below ``directory``, by its path relative to it (``/``-separated)."""
    return {
        file.relative_to(directory).as_posix(): file
        for file in sorted(directory.rglob("*"))
        if file.is_file()
    }


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python submit_nats.py DIR [TEAM]")
    if not (files := files_below(Path(sys.argv[1]))):
        sys.exit(f"no files below {sys.argv[1]}")
    sys.exit(asyncio.run(main(files, *sys.argv[2:])))
