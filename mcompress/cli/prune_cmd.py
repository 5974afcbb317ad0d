"""`mcompress prune` commands (placeholder until its issue lands)."""
