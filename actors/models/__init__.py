"""Model providers: ``anthropic`` (Claude through the official SDK), ``offline`` (deterministic, no
network, playbook-driven) and ``scripted`` (for tests)."""
