"""The package's version, in a module of its own: the views and the probe read it without importing
the package's entry points (no import circle)."""

__version__ = "0.2.0"
