"""The lead: the submit gateway, the lead actor and one session's run."""
