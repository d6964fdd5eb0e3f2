"""Defaults that the command line needs before anything heavy is imported (no torch here)."""

DEFAULT_MODEL = "smollm2-135m"
