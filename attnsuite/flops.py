"""The FLOP model, written once, and the device peaks that FLOP/s is measured against.

Attention forward: two matrix products over the (query, key) pairs the mask allows, per batch and
query head: ``2 * B * Hq * pairs * (dqk + dv)`` (= 4·B·H·Lq·Lk·D for a dense square problem with
dqk = dv = D). Causal counts about half the pairs, a sliding window its band, a block-sparse
pattern its tiles: masked pairs are not work a good kernel has to do. Backward counts 2.5x the
forward (the convention of the FlashAttention benchmarks: five matmuls against two), so fwd+bwd is
3.5x. Layer problems add their projections (2 FLOPs per multiply-add; backward 2x forward, one
product for the input gradient and one for the weight gradient). FLOPs depend on the family and
the problem, never on the variant: every variant of a family is credited the same work, so a
variant that does extra work shows up slower instead of "more FLOP/s" (the defect class
"projections counted twice").
"""

from __future__ import annotations

import functools
import time
from typing import Optional

import numpy as np
import torch

from . import oracle_mask, registry
from .problem import Problem
from .record import CALIBRATION_OTHER_CPU

BACKWARD_FACTOR = 2.5
PROJECTION_BACKWARD_FACTOR = 2.0


def _row_positions(problem: Problem) -> np.ndarray:
    """Each query's position on the key axis (alignment applied), int64."""
    return np.arange(problem.lq, dtype=np.int64) + problem.align_offset


def allowed_pairs(problem: Problem) -> int:
    """Number of (query, key) pairs the problem's mask allows, for one batch element and head.

    Closed forms per row for the structured kinds (O(Lq) memory, so 32K x 32K costs nothing);
    the pattern kinds (block-sparse, random) count ``oracle_mask.allowed``.
    """
    m = problem.mask
    lk = problem.lk
    pos = _row_positions(problem)
    if m.kind == "none":
        return problem.lq * lk
    if m.kind == "causal":
        return int(np.clip(pos + 1, 0, lk).sum())
    if m.kind == "window":
        hi = np.minimum(pos, lk - 1)
        lo = np.maximum(pos - m.window, 0)
        return int(np.clip(hi - lo + 1, 0, None).sum())
    if m.kind == "block_causal":
        # keys j with j // F <= pos // F: all keys before the end of pos's frame
        end = np.where(pos >= 0, (np.floor_divide(pos, m.block) + 1) * m.block, 0)
        return int(np.clip(end, 0, lk).sum())
    if m.kind == "prefix":
        causal = np.clip(pos + 1, 0, lk)
        return int(np.maximum(causal, min(m.prefix, lk)).sum())
    if m.kind == "document":
        lens = np.asarray(m.doc_lens, dtype=np.int64)
        ends = np.cumsum(lens)
        starts = ends - lens
        valid = (pos >= 0) & (pos < lk)
        doc = np.searchsorted(ends, np.clip(pos, 0, lk - 1), side="right")
        if m.causal:
            counts = pos - starts[doc] + 1
        else:
            counts = lens[doc]
        return int(np.where(valid, counts, 0).sum())
    return int(oracle_mask.allowed(problem).sum())


def dilated_pairs(problem: Problem) -> int:
    """Pairs per head of LongNet dilated attention: per (segment w, dilation r) group, each segment
    keeps every r-th row and attends among those; causal keeps the lower triangle of each block.
    A segment longer than the sequence is the whole sequence."""
    segments = problem.arg("segments", ())
    dilations = problem.arg("dilations", ())
    if len(segments) != len(dilations) or not segments:
        raise ValueError(f"dilated problem {problem.id}: needs args segments and dilations of equal length")
    causal = problem.mask.kind != "none"
    total = 0
    n = problem.lq
    for w, r in zip(segments, dilations):
        w = min(w, n)
        for start in range(0, n, w):
            kept = -(-min(w, n - start) // r)  # ceil
            total += kept * (kept + 1) // 2 if causal else kept * kept
    return total


def attention_flops(problem: Problem, family: str = "attention") -> float:
    """Forward FLOPs of the attention core: 2 * B * Hq * pairs * (dqk + dv)."""
    pairs = dilated_pairs(problem) if family == "dilated" else allowed_pairs(problem)
    return 2.0 * problem.batch * problem.hq * pairs * (problem.dqk + problem.dv)


def projection_flops(problem: Problem, family: str) -> float:
    """Forward FLOPs of a layer's projections (0 for kernel problems).

    MHA/GQA/QK-norm layers: Q (d_model -> hq*dqk), K (-> hkv*dqk), V (-> hkv*dv), O (hq*dv ->
    d_model). MLA (DeepSeek-V3, expanded form): x -> q_lora -> hq*(nope+rope); x -> kv_lora + rope;
    kv_lora -> hq*(nope + v_dim); O (hq*v_dim -> d_model). The plain latent layer: the same without
    the decoupled RoPE part and without the query compression (its problems carry no q_lora). The absorbed
    decode form is credited the expanded form's FLOPs: one function, one count.
    """
    if problem.d_model is None:
        return 0.0
    tokens = problem.batch * problem.lq
    d = problem.d_model
    if family in ("mla-layer", "latent-layer"):
        q_lora = problem.arg("q_lora")
        kv_lora = problem.arg("kv_lora", 0)
        rope = problem.arg("rope_dim", 0) if family == "mla-layer" else 0
        nope = problem.arg("nope_dim", problem.dqk - rope)
        v_dim = problem.arg("v_dim", problem.dv)
        q_in = d * q_lora + q_lora * problem.hq * (nope + rope) if q_lora else d * problem.hq * (nope + rope)
        macs = q_in + d * (kv_lora + rope) + kv_lora * problem.hq * (nope + v_dim) + problem.hq * v_dim * d
    else:
        macs = d * (problem.hq * problem.dqk + problem.hkv * problem.dqk + problem.hkv * problem.dv)
        macs += problem.hq * problem.dv * d
    return 2.0 * tokens * macs


def decode_step_flops(problem: Problem, family: str) -> float:
    """Forward FLOPs of one decode step: the problem's last ``s = decode_step`` tokens after the rest.

    The step projects only its own s tokens (the cache holds the others' keys and values): the
    full sequence's projection FLOPs times s / L. Its attention is s query rows against all L keys
    with the causal corner bottom-right (new row r, 0-based, sees L - s + r + 1 keys).
    """
    from .record import DECODE_STEP_ARG

    s, length = problem.arg(DECODE_STEP_ARG), problem.lk
    if not isinstance(s, int) or not 1 <= s < length:
        raise ValueError(f"{problem.id}: decode needs 1 <= {DECODE_STEP_ARG} < L ({length}), got {s!r}")
    pairs = s * (length - s) + s * (s + 1) // 2
    attn = 2.0 * problem.batch * problem.hq * pairs * (problem.dqk + problem.dv)
    return attn + projection_flops(problem, family) * s / problem.lq


def case_flops(problem: Problem, family: str, mode: str) -> float:
    """FLOPs of one call in ``mode`` ("fwd", "bwd", "fwd+bwd", "decode"): the family's own count when
    it gives one (``Family.flops``, a function with another cost than softmax attention's), else the
    model of this module."""
    own = registry.family_flops(family)
    if own is not None:
        return float(own(problem, mode))
    if mode == "decode":
        return decode_step_flops(problem, family)
    attn = attention_flops(problem, family)
    proj = projection_flops(problem, family)
    fwd = attn + proj
    bwd = BACKWARD_FACTOR * attn + PROJECTION_BACKWARD_FACTOR * proj
    if mode == "fwd":
        return fwd
    if mode == "bwd":
        return bwd
    if mode == "fwd+bwd":
        return fwd + bwd
    raise ValueError(f"unknown mode {mode!r}; expected fwd, bwd, fwd+bwd or decode")


# Dense (no sparsity) peaks in TFLOP/s from NVIDIA's datasheets. fp32 means plain fp32 FMA (TF32 off,
# as the suite runs unless a case says otherwise); fp64 uses the fp64 tensor-core rate.
GPU_PEAKS = {
    "H100 SXM": {"bfloat16": 989.4, "float16": 989.4, "tf32": 494.7, "float32": 66.9, "float64": 66.9},
    "H100 PCIe": {"bfloat16": 756.5, "float16": 756.5, "tf32": 378.0, "float32": 51.2, "float64": 51.2},
    "H200": {"bfloat16": 989.4, "float16": 989.4, "tf32": 494.7, "float32": 66.9, "float64": 66.9},
    "A100": {"bfloat16": 312.0, "float16": 312.0, "tf32": 156.0, "float32": 19.5, "float64": 19.5},
}


def gpu_model_key(name: str) -> Optional[str]:
    """The GPU_PEAKS key for a CUDA device name, or None when the suite has no datasheet for it."""
    n = name.upper()
    if "H200" in n:
        return "H200"
    if "H100" in n:
        return "H100 PCIe" if "PCIE" in n else "H100 SXM"  # "H100 80GB HBM3" is the SXM part
    if "A100" in n:
        return "A100"
    return None


@functools.lru_cache(maxsize=8)
def measured_cpu_peak(dtype: str, n: int = 512, seconds: float = 0.2) -> float:
    """TFLOP/s of ``torch.matmul`` on an n x n x n problem on this CPU, measured now.

    Not used as a peak: on a shared 2-core runner it moved 5.8x between runs (2026-11-30: 58 of
    374 cases showed more than 100%). Kept for diagnostics; % of peak on CPU uses :func:`stated_peak`.
    """
    dt = getattr(torch, dtype)
    a = torch.randn(n, n).to(dt)
    b = torch.randn(n, n).to(dt)
    torch.matmul(a, b)
    reps, start = 0, time.perf_counter()
    while True:
        torch.matmul(a, b)
        reps += 1
        elapsed = time.perf_counter() - start
        if elapsed >= seconds or reps >= 10000:
            break
    return 2.0 * n**3 * reps / elapsed / 1e12


CPU_NO_PEAK = ("no % of peak on CPU: a CPU has no datasheet peak here and a per-run measurement is not stable "
               "(it moves with the machine's load); it is shown against a baseline's stored calibration probe instead")


def peak_tflops(device: str, dtype: str) -> tuple[Optional[float], str]:
    """(dense peak TFLOP/s, where the number comes from) for ``device`` and ``dtype``.

    Only stable, stated peaks: NVIDIA's datasheet figure for a known GPU. On CPU there is none
    (``(None, CPU_NO_PEAK)``): reports compute % of peak there from the baseline's calibration probe
    (:func:`stated_peak`), so a record never carries a per-run figure that can exceed 100%.
    """
    if str(device).startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        key = gpu_model_key(name)
        if key is None:
            return None, f"no datasheet peak for GPU {name!r}"
        tf32 = dtype == "float32" and torch.backends.cuda.matmul.allow_tf32
        return GPU_PEAKS[key]["tf32" if tf32 else dtype], f"datasheet dense peak, {key}, {'tf32' if tf32 else dtype}"
    return None, CPU_NO_PEAK


def stated_peak(rec_peak: Optional[float], rec_source: str, dtype: str,
                calibration: Optional[dict] = None, calibration_label: str = "the baseline") -> tuple[Optional[float], str]:
    """The peak a record's % is honestly shown against, and that peak stated in words.

    A record's own peak is used when it has one (a GPU datasheet figure). Otherwise a stored
    calibration probe (``calibrate.probe``: ``matmul_tflops`` of ``matmul_dtype``) stands in, and
    only for the dtype it measured. Otherwise ``(None, why not)``.
    """
    if rec_peak and rec_source.startswith(DATASHEET_PREFIX):  # older runs stored a per-run CPU measurement
        return float(rec_peak), rec_source
    cal = calibration or {}
    mm, mm_dtype = cal.get("matmul_tflops"), cal.get("matmul_dtype")
    if not (isinstance(mm, (int, float)) and not isinstance(mm, bool) and mm > 0):
        if calibration_label == NO_BASELINE:
            return None, "no % of peak: no baseline was compared (without a datasheet peak, % of peak is " \
                         "against the calibration probe a baseline stores)"
        return None, f"no % of peak: {calibration_label} stores no calibration probe"
    if cal.get(CALIBRATION_OTHER_CPU):
        return None, (f"no % of peak: {calibration_label}'s calibration probe measured another CPU model "
                      f"({cal[CALIBRATION_OTHER_CPU]}), not this one")
    if mm_dtype != dtype:
        return None, f"no % of peak: {calibration_label}'s calibration probe is {mm_dtype}, not {dtype}"
    return float(mm), f"{PROBE_PREFIX} {mm_dtype} matmul probe stored with {calibration_label}, {float(mm):.3g} TFLOP/s"


PROBE_PREFIX = "calibrated"
NO_BASELINE = "no baseline"  # the calibration label of a run judged against none
DATASHEET_PREFIX = "datasheet"


def pct_of_peak(tflops: Optional[float], peak: Optional[float], source: str = "") -> tuple[Optional[float], str]:
    """(% of ``peak``, flag): the flag is "" at or below 100%, else why the figure is above its peak.

    Against a probe (``source`` from :func:`stated_peak`) above 100% is possible: a 1024^3 matmul is
    not the machine's ceiling, and cache-resident work or a faster instance than the probe's can beat
    it. Against a datasheet peak it cannot be: the FLOP count or the time is wrong.
    """
    if tflops is None or not peak:
        return None, ""
    pct = 100.0 * tflops / peak
    if pct <= 100.0:
        return pct, ""
    if source.startswith(PROBE_PREFIX):
        return pct, ("above 100% of a probe: the probe is one 1024^3 matmul, not a ceiling; cache-resident "
                     "work or a faster instance than the probe's beats it")
    return pct, "above 100% of a datasheet peak: impossible, so the FLOP count or the time is wrong"


def throughput(flops: float, seconds: Optional[float], peak: Optional[float]) -> tuple[Optional[float], Optional[float]]:
    """(TFLOP/s, % of peak) for ``flops`` done in ``seconds``."""
    if not seconds or seconds <= 0:
        return None, None
    tflops = flops / seconds / 1e12
    return tflops, (100.0 * tflops / peak if peak else None)
