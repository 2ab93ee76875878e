"""Conversations the node remembers: their turns (store), kept on disk if asked (persist), and
the budget their saved KV states may use (the engine keeps those: engine/kvstates.py)."""
