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
