"""attnsuite: the shared machinery of the attention regression suite (a pytest plugin)."""

__version__ = "0.1.0"
