"""The tour (filled in below)."""
