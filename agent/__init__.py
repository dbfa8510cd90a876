"""The agent: turns collector findings into reports, metrics and commands."""
