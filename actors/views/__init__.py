"""Read-only views of a session (tail, tree, timeline, provenance): they never publish."""
