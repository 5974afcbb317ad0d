"""`mcompress cluster` commands (placeholder until its issue lands)."""
