"""Command modules: one per CLI subcommand, loaded lazily by fwedge.cli."""
