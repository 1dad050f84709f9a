"""In-repo variants. Importing this package registers them all.

To add one: write a ``KernelVariant`` or ``LayerVariant`` subclass in a module here, decorate it
with ``@register``, and import the module below.
"""

import attnsuite.families  # noqa: F401  (the kernel attention family)

from . import dense_kernel  # noqa: F401
from . import mla  # noqa: F401
from . import dilated  # noqa: F401
from . import dense_layer  # noqa: F401
from . import ring  # noqa: F401
from . import gqa  # noqa: F401
from . import decode  # noqa: F401
from . import dropout  # noqa: F401
from . import distributed  # noqa: F401
from . import triton_flash  # noqa: F401
from . import triton_decode  # noqa: F401
from . import triton_mla  # noqa: F401
from . import libraries  # noqa: F401  (optional third-party libraries: registers what imports)
from . import approximate  # noqa: F401  (reference FP8/INT8 fake-quant kernels: approximate accuracy classes)
