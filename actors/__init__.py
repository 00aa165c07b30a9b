"""Behaviour: one package (or module) per role (lead, subagent, grader, collector, webhooks,
dreamer), the agent (loop, models, tools), the session state every role shares, the read-only views,
the table of roles (``roles.py``), the client and the command line.
"""
