"""The governor: sensors read into Snapshots, a pure policy, and the loop that applies it."""
