"""Start a staffwork session and print its result, with staffwork's Python client. The team is
incident unless named:

    STAFFWORK_NATS_URL=nats://127.0.0.1:4222 python submit.py [team]
"""

import asyncio
import os
import sys

from actors.client import Client, SubmitRefused


async def main(team: str) -> int:
    async with await Client.connect(os.environ.get("STAFFWORK_NATS_URL", "nats://127.0.0.1:4222")) as client:
        try:
            session_id = await client.submit("Why did checkout fail?", team=team, timeout=10)
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
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "incident")))
