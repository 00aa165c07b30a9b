"""Model providers: ``anthropic`` (Claude through the official SDK), ``offline`` (deterministic, no
network, playbook-driven; the default without an API key) and ``scripted`` (for tests)."""

from __future__ import annotations

import os

from actors.agent.models.base import Model


def default_model() -> Model:
    """Claude when ``ANTHROPIC_API_KEY`` is set, else the offline model."""
    if os.environ.get("ANTHROPIC_API_KEY"):
        from actors.agent.models.anthropic import AnthropicModel

        return AnthropicModel()
    from actors.agent.models.offline import OfflineModel

    return OfflineModel()
