"""Start a staffwork session and print its result, with nats-py alone (no staffwork package). The
team is incident unless named:

    pip install nats-py && STAFFWORK_NATS_URL=nats://127.0.0.1:4222 python submit_nats.py [team]
"""

import asyncio
import json
import os
import sys

import nats


async def main(team: str) -> int:
    nc = await nats.connect(os.environ.get("STAFFWORK_NATS_URL", "nats://127.0.0.1:4222"))
    try:
        request = {"type": "session.submit.v1", "task": "Why did checkout fail?", "team": team}
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
    print(f"session {reply['session_id']}: {result['status']}")
    print(result["final_text"])
    if result.get("error"):
        print(f"{result['error']['kind']}: {result['error']['message']}", file=sys.stderr)
    return 0 if result["status"] == "idle" else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "incident")))
