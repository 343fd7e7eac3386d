"""Command-line tools (console scripts steerseg-*)."""
