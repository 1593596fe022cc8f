"""CLI commands: send (filled in by its issue)."""
