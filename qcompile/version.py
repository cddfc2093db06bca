"""The package version, in a module of its own so that every module can read it without importing the package
root (which imports api: reading it from there would be an import circle)."""

__version__ = "0.1.0"
