"""The latent-attention layer families ``mla-layer`` (DeepSeek-V3) and ``latent-layer``.

``mla_oracle`` registers both (parameters, problems, float64 oracle, base); ``mla`` and
``triton_mla`` register their variants (the Triton kernel lives in ``triton_kernels``).
"""

from . import mla_oracle  # noqa: F401
from . import mla  # noqa: F401
from . import triton_mla  # noqa: F401
