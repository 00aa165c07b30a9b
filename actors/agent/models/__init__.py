"""Model providers: ``anthropic`` (Claude through the official SDK), ``offline`` (deterministic, no
network, playbook-driven; the default without an API key) and ``scripted`` (for tests)."""

from __future__ import annotations

import os

from actors.agent.models.base import Model


def model_profile(model: Model) -> str:
    """Which provider and endpoint ``model`` calls (never its credentials): ``offline``, or
    ``anthropic at https://api.anthropic.com``. Two processes with the same profile answer a session
    alike; ``run`` shares actors only with processes of its own profile."""
    endpoint = getattr(model, "base_url", "")
    return f"{model.name} at {endpoint}" if endpoint else model.name


def default_model() -> Model:
    """Claude when ``ANTHROPIC_API_KEY`` is set, else the offline model."""
    if os.environ.get("ANTHROPIC_API_KEY"):
        from actors.agent.models.anthropic import AnthropicModel

        return AnthropicModel()
    from actors.agent.models.offline import OfflineModel

    return OfflineModel()
