"""CLI commands (filled in by the owning work item)."""

import typer


def register(app: typer.Typer) -> None:
    """Add this module's commands to the app."""
