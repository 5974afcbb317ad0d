"""`mcompress validate` commands (placeholder until its issue lands)."""
