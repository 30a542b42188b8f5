"""Cluster: the Ray actors, the leased work queue they pull from, the driver loop that follows them, and submission."""
