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
from schemas import SessionSubmit, ThreadReply
from schemas.trace import ModelRequestStart
from tests.agents_proc import AGENTS
from tests.helpers import NatsServer, inbox, ready_process, submit, team, wait_result

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
    starts = await inbox(bus, bus.subjects.event(session_id, "span.model_request_start"), ModelRequestStart)
    try:
        async with asyncio.timeout(20):
            while (await starts.next(timeout=20)).agent != agent:
                pass
    finally:
        await starts.close()


async def test_killed_subagent_worker_thread_continues_on_another(nats_server: NatsServer, bus: Bus) -> None:
    root = bus.subjects.root
    async with (
        agents_process(nats_server, root, "--lead"),
        agents_process(nats_server, root, "--agents", ",".join(AGENTS), "--slow", "slow=60") as doomed,
    ):
        session_id = await submit(bus, SessionSubmit(task="incident", team_spec=team(*AGENTS)))
        await first_model_call_of(bus, session_id, "slow")  # the doomed worker is inside it
        async with agents_process(nats_server, root, "--agents", ",".join(AGENTS)):
            doomed.kill()
            await doomed.wait()
            result = await wait_result(bus, session_id, timeout=60)
    assert result.status == "idle", result.final_text
    assert "slow found look at slow" in result.final_text
    assert "fast found look at fast" in result.final_text
    calls = await model_calls(bus, session_id)
    assert calls == Counter({"lead": 2, "fast": 1, "slow": 2})  # only the killed call was made again


async def test_killed_lead_is_replaced_without_rerunning_finished_delegations(
    nats_server: NatsServer, bus: Bus
) -> None:
    root = bus.subjects.root
    submit = SessionSubmit(task="incident", team_spec=team(*AGENTS))
    replied = await inbox(bus, bus.subjects.reply(submit.session_id, "t-toolu_fast"), ThreadReply)
    async with agents_process(nats_server, root, "--agents", ",".join(AGENTS), "--slow", "slow=3"):
        async with agents_process(nats_server, root, "--lead") as doomed:
            # Straight on <root>.submit, the lead pool's durable inbox: the stored request outlives the
            # lead that took it, and the next lead picks the session up from its log.
            await bus.publish(bus.subjects.submit, submit)
            await replied.next(timeout=20)  # "fast" has replied; "slow" is still working
            doomed.kill()
            await doomed.wait()
        async with agents_process(nats_server, root, "--lead"):
            result = await wait_result(bus, submit.session_id, timeout=60)
    await replied.close()
    assert result.status == "idle", result.final_text
    assert "fast found look at fast" in result.final_text
    assert "slow found look at slow" in result.final_text
    calls = await model_calls(bus, submit.session_id)
    assert calls == Counter({"lead": 2, "fast": 1, "slow": 1})  # no delegation ran twice
