"""The package version (its own module, so that library code reads it without importing the facade)."""

__version__ = "0.1.0"
