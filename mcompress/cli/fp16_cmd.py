"""`mcompress fp16` commands (placeholder until its issue lands)."""
