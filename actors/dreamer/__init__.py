"""The dreamer: curates a memory store from past sessions into a new store."""
