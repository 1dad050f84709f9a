"""In-repo variants. Importing this package registers them all.

To add one: write a ``KernelVariant`` or ``LayerVariant`` subclass in a module here, decorate it
with ``@register``, and import the module below.
"""

from . import dense_kernel  # noqa: F401
