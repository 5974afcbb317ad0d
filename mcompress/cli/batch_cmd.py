"""`mcompress batch` commands (placeholder until its issue lands)."""
