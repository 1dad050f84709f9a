"""``triton-decode``: split-KV decoding in Triton (a few queries against a long KV cache, GQA).

Pass 1 splits the cached keys into chunks, one program per (batch, KV head, chunk) holding the
GQA group's queries in one tile (so each key and value is read from memory once per group) and
writing a partial output and log-sum-exp per row; pass 2 merges the chunks. The number of chunks
is chosen to fill the GPU (about four programs per SM). Kernels: :mod:`.triton_kernels.decode`.

It takes the decode workload's problems (lq <= 16 new queries, any cache length, GQA/MQA,
causal with either corner, sliding window), bf16 and fp16 on CUDA, also fp32 on the CPU
interpreter. Like ``kvcache-sdpa`` it is inference only: no backward. Deterministic: fixed
chunk boundaries and merge order, no atomics.
"""

from __future__ import annotations

from attnsuite.problem import Problem
from attnsuite.registry import KernelVariant, register

from .triton_flash import MASK_CODES, MAX_HEAD_DIM, interpreter_budget, triton_reasons
from .triton_kernels import kernels

MAX_ROWS = 128  # group * lq query rows share one tile
MAX_QUERIES = 16  # "a few new queries": longer query blocks are prefill, triton-flash's job


@register
class TritonDecode(KernelVariant):
    name = "triton-decode"
    description = "split-KV decoding in Triton: per-chunk partial outputs + log-sum-exp, then a merge (GQA in one tile)"
    masks = frozenset(MASK_CODES)
    features = frozenset({"gqa", "lq_ne_lk", "dv_ne_dqk", "bottom_right", "custom_scale"})
    dtypes = frozenset({"bfloat16", "float16", "float32"})
    backward_devices = frozenset()  # decoding is inference
    fused = True
    deterministic = True
    backend = "triton:split-kv"

    def extra_reasons(self, problem: Problem, backward: bool) -> list[str]:
        reasons = triton_reasons(problem)
        rows = problem.hq // problem.hkv * problem.lq
        if rows > MAX_ROWS:
            reasons.append(f"{self.name} is for decoding: (hq/hkv) * lq query rows share one tile, at most "
                           f"{MAX_ROWS} (this problem has {rows}); prefill belongs to triton-flash")
        if problem.lq > MAX_QUERIES:
            reasons.append(f"{self.name} decodes at most {MAX_QUERIES} new queries per step, got lq={problem.lq}")
        if max(problem.dqk, problem.dv) > MAX_HEAD_DIM:
            reasons.append(f"{self.name} takes head dims up to {MAX_HEAD_DIM}, got {problem.dqk}/{problem.dv}")
        # one tile of query rows per KV head: steps are (batch * hkv) x key tiles
        reasons.extend(interpreter_budget(problem.device, problem.batch * problem.hkv, 1, problem.lk))
        return reasons

    def build(self, problem: Problem):
        mask, off, win = MASK_CODES[problem.mask.kind], problem.align_offset, problem.mask.window
        scale = problem.softmax_scale

        def run(q, k, v):
            return kernels("decode", q.device.type).decode(q, k, v, mask, off, win, scale)

        return run
