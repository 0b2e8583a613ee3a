"""aacn.experiments."""
