"""aacn.nn."""
