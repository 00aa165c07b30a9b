"""The lead: the submit gateway, the lead actor and one session's run."""

from actors.lead.actor import LeadActor, LeadSettings
from actors.lead.delegation import LEAD_TOOLS, Delegations
from actors.lead.gateway import SubmitGateway
from actors.lead.revision import Revision
from actors.lead.run import LeadRun
from schemas.thread import LEAD_THREAD

__all__ = [
    "LEAD_THREAD",
    "LEAD_TOOLS",
    "Delegations",
    "LeadActor",
    "LeadRun",
    "LeadSettings",
    "Revision",
    "SubmitGateway",
]
