"""The agent: its loop, the one traced model call, the model providers and the tools."""
