"""aacn.train."""
