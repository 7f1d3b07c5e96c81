"""Single source of the package version (checkpoints record it)."""

__version__ = "0.1.0"
