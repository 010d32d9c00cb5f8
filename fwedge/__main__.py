"""`python -m fwedge` runs the CLI."""
from fwedge.cli import main

main()
