"""aacn.models."""
