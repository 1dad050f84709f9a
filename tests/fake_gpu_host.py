"""A pytest plugin (``-p fake_gpu_host``) that makes this CPU-only process claim a CUDA device.

Only ``torch.cuda.is_available`` answers True; nothing can run on CUDA. It lets a test show that a
decision meant to follow the run's device does not follow whether a GPU is present.
"""

import torch

torch.cuda.is_available = lambda: True
