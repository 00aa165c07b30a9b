"""The lead actor: consumes ``<root>.submit`` and drives each session with a :class:`LeadRun`: the
submit's turn, then each follow-up (``session.message.v1``) as a turn of its own.

Before a session starts it makes sure every agent of the team has its task consumer (once per agent
and process; a worker's own consumer settings win). The session's result is published on
``<root>.s.<session>.out.result``; a failure becomes a ``failed`` result. A session another lead is
driving (a history conflict) is retried later.

Each lead process also watches JetStream's max-deliveries advisories for the agents' consumers (in
the queue group ``lead``: one lead takes each): a delegation or follow-up the server will not deliver
again (every worker that took it died) gets a stored failed reply naming its thread, agent and why,
so the session waiting on it goes on.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import structlog

from actors.agent.models.base import Model
from actors.agent.tools.sources import ToolSources
from actors.lead.delegation import given_up_reply
from actors.lead.run import LeadRun, result_id
from actors.sessions.cancel import CancelWatch
from actors.sessions.directory import SessionDirectory
from bus.actor import BaseActor, Context
from bus.connection import Bus, MaxDeliveries
from bus.errors import HistoryConflict, Retryable
from bus.provision import ConsumerSpec, agent_consumer, ensure_consumer, lead_consumer
from bus.state import Listener
from bus.subjects import Subjects
from schemas.base import ErrorInfo, Message
from schemas.session import SessionMessage, SessionResult, SessionSubmit

log = structlog.get_logger("staffwork.lead")


@dataclass(frozen=True)
class LeadSettings:
    ack_wait: float = 30.0
    subagent_ack_wait: float = 30.0
    grade_timeout: float = 900.0  # waiting for the grader's verdict on an attempt
    claim_timeout: float = 120.0  # a delegation no worker has taken by then fails
    session_deadline: float = 3600.0  # the deadline of a session whose submit and team set none


LeadInbox = SessionSubmit | SessionMessage


class LeadActor(BaseActor[LeadInbox]):
    role = "lead"
    inbox = LeadInbox

    def __init__(
        self,
        *,
        model: Model,
        directory: SessionDirectory,
        cancels: CancelWatch,
        settings: LeadSettings | None = None,
    ) -> None:
        self.model = model
        self.directory = directory
        self.cancels = cancels
        self.settings = settings or LeadSettings()
        #: the lead's MCP servers run here
        self.sources = ToolSources()
        self._consumers: set[str] = set()  # agent consumers this process already made sure of
        self._advisories: Listener[MaxDeliveries] | None = None

    async def ensure_agent_consumer(self, bus: Bus, agent: str) -> None:
        if agent not in self._consumers:
            spec = agent_consumer(bus.subjects, agent, ack_wait=self.settings.subagent_ack_wait)
            await ensure_consumer(bus, spec, update=False)  # a worker's own settings win
            self._consumers.add(agent)

    def consumer(self, subjects: Subjects) -> ConsumerSpec:
        return lead_consumer(subjects, ack_wait=self.settings.ack_wait)

    async def on_start(self, bus: Bus) -> None:
        await self.cancels.start()  # shared with the process's workers
        self._advisories = await bus.on_max_deliveries(
            bus.subjects.log_stream, functools.partial(self._given_up, bus), queue="lead"
        )

    async def on_stop(self) -> None:
        if self._advisories is not None:
            await self._advisories.close()
            self._advisories = None
        await self.cancels.stop()
        await self.sources.close()

    async def _given_up(self, bus: Bus, advisory: MaxDeliveries) -> None:
        """JetStream gave up on a message: if it is an agent's request, answer it as failed."""
        if not advisory.consumer.startswith("agent_"):
            return
        reply = await given_up_reply(bus, advisory.stream_seq, advisory.deliveries)
        if reply is None:
            return
        log.warning(
            "delegation_undelivered",
            session_id=reply.session_id,
            thread_id=reply.thread_id,
            agent=reply.agent,
            deliveries=advisory.deliveries,
        )
        await bus.publish(bus.subjects.reply(reply.session_id, reply.thread_id), reply)

    def reply_subject(self, msg: LeadInbox, reply: Message, ctx: Context) -> str | None:
        return ctx.bus.subjects.out(msg.session_id, "result")

    def failure(self, msg: LeadInbox, error: ErrorInfo) -> Message | None:
        turn = msg.turn if isinstance(msg, SessionMessage) else 0
        return SessionResult(
            session_id=msg.session_id,
            msg_id=result_id(msg.session_id, turn),
            turn=turn,
            status="failed",
            final_text=error.message,
            error=error,
        )

    async def handle(self, msg: LeadInbox, ctx: Context) -> Message | None:
        run = LeadRun(
            msg,
            bus=ctx.bus,
            model=self.model,
            directory=self.directory,
            cancels=self.cancels,
            sources=self.sources,
            agent_consumer=functools.partial(self.ensure_agent_consumer, ctx.bus),
            grade_timeout=self.settings.grade_timeout,
            claim_timeout=self.settings.claim_timeout,
            session_deadline=self.settings.session_deadline,
        )
        try:
            return await run.run()
        except HistoryConflict as exc:  # another lead is driving this session: try again later
            raise Retryable(str(exc), delay=2.0) from exc
