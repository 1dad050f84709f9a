"""The kernel-level ``dilated`` family (LongNet's dilated attention): ``dilated_oracle`` registers
the family (problems, float64 oracle, base); ``dilated`` registers its variants."""

from . import dilated_oracle  # noqa: F401
from . import dilated  # noqa: F401
