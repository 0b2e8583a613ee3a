"""aacn.data."""
