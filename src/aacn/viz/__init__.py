"""aacn.viz."""
