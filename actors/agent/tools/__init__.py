"""Tools agents can call: the workspace tools (``workspace.py``) and the lead's delegation tools."""
