"""A hostile GPU variant: a Triton kernel that writes far outside its buffer.

The store lands at an address no allocation owns, so the GPU raises an illegal memory access,
which poisons the process's CUDA context for good: every later CUDA call in that process fails.
With case isolation (the default) the suite records this case as ``crash`` and the cases after
it run in a fresh worker. ``tests/test_gpu_isolation.py`` runs it on a GPU:

    pytest bench --benchmark-only --attn-variants examples/hostile/triton_oob.py \
        --attn-only triton-oob --attn-only sdpa-flash --attn-workload fa-sweep --attn-mode fwd
"""

from __future__ import annotations

import torch

from attnsuite.registry import KernelVariant, register

try:
    import triton
    import triton.language as tl
except ImportError:  # a CPU machine without triton: the variant is not registered
    triton = None


if triton is not None:

    @triton.jit
    def _store_out_of_bounds(out_ptr, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        far = offs.to(tl.int64) + (1 << 40)  # 4 TiB past the buffer
        tl.store(out_ptr + far, tl.zeros([BLOCK], dtype=tl.float32))

    @register
    class TritonOutOfBounds(KernelVariant):
        name = "triton-oob"
        description = "SDPA plus a Triton kernel that stores 4 TiB past its buffer (illegal address)"
        masks = frozenset({"none", "causal"})
        features = frozenset({"gqa", "lq_ne_lk", "bottom_right"})
        devices = frozenset({"cuda"})
        dtypes = frozenset({"float16", "bfloat16", "float32"})

        def build(self, problem):
            def run(q, k, v):
                scratch = torch.empty(1024, dtype=torch.float32, device=q.device)
                _store_out_of_bounds[(4,)](scratch, BLOCK=256)
                return torch.nn.functional.scaled_dot_product_attention(
                    q, k, v, is_causal=problem.mask.kind == "causal", enable_gqa=q.shape[1] != k.shape[1])
            return run
