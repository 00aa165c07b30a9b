"""Tools agents can call: the contract (``base.py``), which exist and who gets them (``catalog.py``),
the workspace, ``sql`` and memory tools. The lead's ``delegate`` and ``message_agent`` are in
``actors.lead.delegation``.
"""
