"""`mcompress quantize` commands (placeholder until its issue lands)."""
