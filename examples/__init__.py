"""Runnable examples: a team file, the data it works on, and how to run it."""
