"""The kernel-level ``attention`` family (q, k, v to o) and its variants.

``family`` registers the family (its problems come from ``problems_dense`` and
``problems_structured``; oracle :mod:`attnsuite.oracle`, base :mod:`attnsuite.reference_math`);
the other modules register variants: dense kernels, dropout, simulated ring, KV-cache decoding,
multi-process (distributed), Triton, optional third-party libraries, approximate (FP8/INT8) kernels.
"""

from . import family  # noqa: F401  (first: the variants below compute this family)
from . import dense_kernel  # noqa: F401
from . import ring  # noqa: F401
from . import decode  # noqa: F401
from . import dropout  # noqa: F401
from . import distributed  # noqa: F401
from . import triton_flash  # noqa: F401
from . import triton_decode  # noqa: F401
from . import libraries  # noqa: F401  (optional third-party libraries: registers what imports)
from . import approximate  # noqa: F401  (reference FP8/INT8 fake-quant kernels: approximate accuracy classes)
