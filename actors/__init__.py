"""Behaviour: one module per role (lead, subagent, grader, collector, webhooks, dreamer), the model
providers, the tools, and the command line."""
