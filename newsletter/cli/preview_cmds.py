"""CLI commands: preview (filled in by its issue)."""
