"""Hand in the files below DIR as a staffwork session's inputs, start it and print its result, with
staffwork's Python client. The team is incident unless named:

    STAFFWORK_NATS_URL=nats://127.0.0.1:4222 python submit.py DIR [TEAM]
"""

import asyncio
import os
import secrets
import sys
from pathlib import Path

from actors.client import Client, SubmitRefused


async def main(directory: Path, team: str = "incident") -> int:
    async with await Client.connect(os.environ.get("STAFFWORK_NATS_URL", "nats://127.0.0.1:4222")) as client:
        # Choose the session id, so the inputs can be put before the session starts.
        session_id = f"ses_{secrets.token_hex(8)}"
        inputs = await client.upload(session_id, directory)
        if not inputs:
            print(f"no files below {directory}", file=sys.stderr)
            return 1
        try:
            await client.submit(
                "Why did checkout fail?", team=team, session_id=session_id, inputs=inputs, timeout=10
            )
        except SubmitRefused as exc:
            print(f"refused: {exc.kind}: {exc}", file=sys.stderr)
            return 1
        result = await client.wait(session_id, timeout=600)  # replays a result stored already
    print(f"session {session_id}: {result.status}")
    print(result.final_text)
    if result.error:
        print(f"{result.error.kind}: {result.error.message}", file=sys.stderr)
    return 0 if result.status == "idle" else 1


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python submit.py DIR [TEAM]")
    sys.exit(asyncio.run(main(Path(sys.argv[1]), *sys.argv[2:])))
