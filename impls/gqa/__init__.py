"""The ``gqa-layer`` family (a llama-style grouped-query attention layer).

``gqa_oracle`` registers the family (parameters, problems, float64 oracle, base); ``gqa`` registers
its variants.
"""

from . import gqa_oracle  # noqa: F401
from . import gqa  # noqa: F401
