"""`python -m mcompress` runs the CLI."""

from mcompress.cli import main

main()
