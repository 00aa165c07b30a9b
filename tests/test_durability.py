"""The stateless harness, with real processes: kill -9 a subagent worker or the lead mid-session and
the session still completes, without redoing finished work."""

from __future__ import annotations

import asyncio
from collections import Counter
from contextlib import AbstractAsyncContextManager

import pytest

from bus.codec import Decoder
from bus.connection import Bus
from bus.direct import read_subject
from schemas import SessionSubmit
from schemas.trace import ModelRequestStart
from tests.agents import team, wait_result
from tests.agents_proc import AGENTS
from tests.conftest import NatsServer
from tests.procs import ready_process

pytestmark = pytest.mark.slow
STARTS = Decoder(ModelRequestStart)


def agents_process(
    server: NatsServer, root: str, *args: str
) -> AbstractAsyncContextManager[asyncio.subprocess.Process]:
    """A lead and/or worker process on the deterministic script; yielded once it printed READY."""
    return ready_process("tests.agents_proc", server.url, root, *args)


async def model_calls(bus: Bus, session_id: str) -> Counter[str]:
    subject = bus.subjects.event(session_id, "span.model_request_start")
    return Counter(
        [STARTS.decode(m.data).agent async for m in read_subject(bus, bus.subjects.log_stream, subject)]
    )


async def first_model_call_of(bus: Bus, session_id: str, agent: str) -> None:
    sub = await bus._nc.subscribe(bus.subjects.event(session_id, "span.model_request_start"))
    try:
        async with asyncio.timeout(20):
            while STARTS.decode((await sub.next_msg(timeout=20)).data).agent != agent:
                pass
    finally:
        await sub.unsubscribe()


async def test_killed_subagent_worker_thread_continues_on_another(nats_server: NatsServer, bus: Bus) -> None:
    root = bus.subjects.root
    submit = SessionSubmit(task="incident", team_spec=team(*AGENTS))
    async with (
        agents_process(nats_server, root, "--lead"),
        agents_process(nats_server, root, "--agents", ",".join(AGENTS), "--slow", "slow=60") as doomed,
    ):
        await bus.publish(bus.subjects.submit, submit)
        await first_model_call_of(bus, submit.session_id, "slow")  # the doomed worker is inside it
        async with agents_process(nats_server, root, "--agents", ",".join(AGENTS)):
            doomed.kill()
            await doomed.wait()
            result = await wait_result(bus, submit.session_id, timeout=60)
    assert result.status == "idle", result.final_text
    assert "slow found look at slow" in result.final_text
    assert "fast found look at fast" in result.final_text
    calls = await model_calls(bus, submit.session_id)
    assert calls == Counter({"lead": 2, "fast": 1, "slow": 2})  # only the killed call was made again


async def test_killed_lead_is_replaced_without_rerunning_finished_delegations(
    nats_server: NatsServer, bus: Bus
) -> None:
    root = bus.subjects.root
    submit = SessionSubmit(task="incident", team_spec=team(*AGENTS))
    fast_reply = bus.subjects.reply(submit.session_id, "t-toolu_fast")
    replied = await bus._nc.subscribe(fast_reply)
    async with agents_process(nats_server, root, "--agents", ",".join(AGENTS), "--slow", "slow=3"):
        async with agents_process(nats_server, root, "--lead") as doomed:
            await bus.publish(bus.subjects.submit, submit)
            await replied.next_msg(timeout=20)  # "fast" has replied; "slow" is still working
            doomed.kill()
            await doomed.wait()
        async with agents_process(nats_server, root, "--lead"):
            result = await wait_result(bus, submit.session_id, timeout=60)
    await replied.unsubscribe()
    assert result.status == "idle", result.final_text
    assert "fast found look at fast" in result.final_text
    assert "slow found look at slow" in result.final_text
    calls = await model_calls(bus, submit.session_id)
    assert calls == Counter({"lead": 2, "fast": 1, "slow": 1})  # no delegation ran twice
