"""The MLA family's Triton kernel (the absorbed attention core), imported on first use.

Importing this package never imports triton.

The execution mode (compiled, or Triton's interpreter for CPU tensors) and the availability checks
live in :mod:`attnsuite.triton_support`.
"""

from __future__ import annotations

from types import ModuleType

from attnsuite.triton_support import device_reason, interpreting, kernel_module, unavailable_reason  # noqa: F401


def kernels(name: str, device_type: str) -> ModuleType:
    """The kernel module ``name`` (a file of this package), for tensors on ``device_type``."""
    return kernel_module(__name__, name, device_type)
