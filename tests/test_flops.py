"""The FLOP model: mask-aware pair counts, the backward factor, layer projections, device peaks."""

from __future__ import annotations

import pytest

from attnsuite import flops, oracle_mask
from attnsuite.problem import Mask, Problem


def test_dense_forward_is_4_b_h_lq_lk_d():
    p = Problem(batch=2, lq=64, lk=48, hq=3, hkv=3, dqk=32, dv=32, mask=Mask())
    assert flops.case_flops(p, "attention", "fwd") == 4 * 2 * 3 * 64 * 48 * 32


def test_causal_counts_the_lower_triangle_about_half():
    p = Problem(batch=1, lq=1000, lk=1000, hq=1, hkv=1, dqk=64, dv=64, mask=Mask("causal"))
    dense = p.with_(mask=Mask())
    assert flops.allowed_pairs(p) == 1000 * 1001 // 2
    ratio = flops.attention_flops(p) / flops.attention_flops(dense)
    assert ratio == pytest.approx(0.5, abs=0.001)


def test_window_counts_exactly_its_band():
    w, n = 16, 200
    p = Problem(lq=n, lk=n, mask=Mask("window", window=w))
    # rows 0..w-1 see i+1 keys, later rows see w+1
    expected = sum(i + 1 for i in range(w)) + (n - w) * (w + 1)
    assert flops.allowed_pairs(p) == expected


@pytest.mark.parametrize("mask,lq,lk", [
    (Mask("causal"), 37, 37), (Mask("causal", align="bottom_right"), 5, 70), (Mask("causal"), 70, 5),
    (Mask("causal", align="bottom_right"), 70, 5), (Mask("window", window=7), 50, 50),
    (Mask("window", window=7, align="bottom_right"), 9, 60), (Mask("block_causal", block=13), 78, 78),
    (Mask("block_causal", block=13, align="bottom_right"), 20, 78), (Mask("prefix", prefix=10), 40, 40),
    (Mask("document", doc_lens=(10, 20, 7)), 37, 37), (Mask("document", doc_lens=(10, 20, 7), causal=True), 37, 37),
    (Mask("block_sparse", block=8, seed=3), 40, 48), (Mask("random", seed=2), 33, 29), (Mask(), 11, 13),
])
def test_closed_form_pair_count_equals_the_oracle_mask(mask, lq, lk):
    p = Problem(lq=lq, lk=lk, mask=mask)
    assert flops.allowed_pairs(p) == int(oracle_mask.allowed(p).sum())


def test_backward_is_2_5x_forward_and_fwd_bwd_3_5x_for_kernels():
    p = Problem(batch=2, lq=128, lk=128, hq=4, hkv=2, dqk=64, dv=32, mask=Mask("causal"))
    fwd = flops.case_flops(p, "attention", "fwd")
    assert fwd == 2 * 2 * 4 * flops.allowed_pairs(p) * (64 + 32)
    assert flops.case_flops(p, "attention", "bwd") == pytest.approx(2.5 * fwd)
    assert flops.case_flops(p, "attention", "fwd+bwd") == pytest.approx(3.5 * fwd)
    with pytest.raises(ValueError, match="unknown mode"):
        flops.case_flops(p, "attention", "sideways")


def test_layer_problems_add_their_projections_once():
    p = Problem(batch=2, lq=16, lk=16, hq=4, hkv=2, dqk=8, dv=8, d_model=32, mask=Mask("causal"))
    proj = 2 * (2 * 16) * (32 * (4 * 8 + 2 * 8 + 2 * 8) + 4 * 8 * 32)
    assert flops.projection_flops(p, "gqa-layer") == proj
    assert flops.case_flops(p, "gqa-layer", "fwd") == flops.attention_flops(p) + proj
    assert flops.case_flops(p, "gqa-layer", "bwd") == pytest.approx(2.5 * flops.attention_flops(p) + 2 * proj)
    assert flops.projection_flops(p.with_(d_model=None), "attention") == 0.0


def test_mla_projections_use_the_compressed_ranks():
    args = tuple(sorted({"q_lora": 96, "kv_lora": 32, "nope_dim": 32, "rope_dim": 16, "v_dim": 32}.items()))
    p = Problem(batch=1, lq=8, lk=8, hq=4, hkv=4, dqk=48, dv=32, d_model=64, args=args)
    macs = 64 * 96 + 96 * 4 * 48 + 64 * (32 + 16) + 32 * 4 * (32 + 32) + 4 * 32 * 64
    assert flops.projection_flops(p, "mla-layer") == 2 * 8 * macs


def test_dilated_pairs_count_each_segment_block():
    args = (("dilations", (1, 2)), ("segments", (4, 8)))
    p = Problem(lq=8, lk=8, args=args, mask=Mask())
    # segment 4, dilation 1: two blocks of 4 rows -> 2*16; segment 8, dilation 2: one block of 4 rows -> 16
    assert flops.dilated_pairs(p) == 2 * 16 + 16
    causal = p.with_(mask=Mask("causal"))
    assert flops.dilated_pairs(causal) == 2 * 10 + 10
    assert flops.attention_flops(p, "dilated") == 2 * 1 * 2 * 48 * (32 + 32)


def test_h100_peaks_come_from_the_datasheet_and_unknown_gpus_have_none():
    assert flops.gpu_model_key("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert flops.gpu_model_key("NVIDIA H100 PCIe") == "H100 PCIe"
    assert flops.GPU_PEAKS["H100 SXM"]["bfloat16"] == 989.4
    assert flops.GPU_PEAKS["H100 SXM"]["tf32"] == 494.7
    assert flops.GPU_PEAKS["H100 SXM"]["float32"] == 66.9
    assert flops.gpu_model_key("Some Future GPU") is None


def test_cpu_has_no_per_run_peak_and_says_why():
    # a per-run matmul measurement moved 5.8x between runs: % of peak on CPU comes from a stored probe
    value, source = flops.peak_tflops("cpu", "float32")
    assert value is None and source == flops.CPU_NO_PEAK
    tflops, pct = flops.throughput(2e12, 1.0, 4.0)
    assert tflops == 2.0 and pct == 50.0
    assert flops.throughput(1.0, None, 1.0) == (None, None)
