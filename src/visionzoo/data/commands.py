"""CLI commands of this package (filled in as the package grows)."""
