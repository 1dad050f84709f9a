"""The dense layer families ``mha-layer``, ``qknorm-ln-layer`` and ``qknorm-rms-layer``.

``layer_oracle`` registers the three (canonical parameters, problems, float64 oracle; the base is
``layer_reference``); ``dense_layer`` registers their variants.
"""

from . import layer_oracle  # noqa: F401
from . import dense_layer  # noqa: F401
