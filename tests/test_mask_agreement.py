"""Every form of every mask kind agrees on what is allowed.

Four forms exist: the NumPy oracle (:mod:`attnsuite.oracle_mask`), the torch dense boolean mask
and additive mask (:mod:`attnsuite.mask_mods`), and FlexAttention's BlockMask built from the same
mask_mod. They are compared element by element for every kind, for lengths that are and are not
multiples of the block size (the default 128 and small blocks), Lq != Lk both ways, and both
causal corners. A fifth, deliberately naive definition written straight from the mask definitions in attnsuite/problem.py
(:func:`spec_allowed`, pure Python per element) checks the oracle itself.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attnsuite import mask_mods, oracle, oracle_mask
from attnsuite.problem import Mask, Problem

LENGTHS = [(1, 1), (1, 17), (3, 3), (17, 17), (17, 113), (113, 17), (97, 113), (113, 97), (129, 130), (200, 140)]
ALIGNS = ("top_left", "bottom_right")
BLOCK_SIZES = (128, 8, (16, 8))


def _doc_lens(lk: int) -> tuple[int, ...]:
    """Three packed documents covering lk keys (one when lk is too short to split)."""
    a, b = max(1, lk // 4), max(1, lk // 2)
    return (a, b, lk - a - b) if lk - a - b > 0 else (lk,)


# mask configurations: name -> Mask factory of (lk, align)
MASKS = {
    "causal": lambda lk, al: Mask("causal", align=al),
    "window0": lambda lk, al: Mask("window", window=0, align=al),
    "window5": lambda lk, al: Mask("window", window=5, align=al),
    "frame13": lambda lk, al: Mask("block_causal", block=13, align=al),
    "frame16": lambda lk, al: Mask("block_causal", block=16, align=al),
    "bsparse8": lambda lk, al: Mask("block_sparse", block=8, seed=1, align=al),
    "bsparse16": lambda lk, al: Mask("block_sparse", block=16, seed=2, align=al),
    "document": lambda lk, al: Mask("document", doc_lens=_doc_lens(lk), align=al),
    "document-causal": lambda lk, al: Mask("document", doc_lens=_doc_lens(lk), causal=True, align=al),
    "prefix0": lambda lk, al: Mask("prefix", prefix=0, align=al),
    "prefix10": lambda lk, al: Mask("prefix", prefix=10, align=al),
    "random0": lambda lk, al: Mask("random", seed=0, align=al),
    "random3": lambda lk, al: Mask("random", seed=3, align=al),
}

CASES = [
    pytest.param(name, lq, lk, al, id=f"{name}-q{lq}k{lk}-{al}")
    for name in MASKS
    for lq, lk in LENGTHS
    for al in ALIGNS
]


def make(name: str, lq: int, lk: int, align: str, **kw) -> Problem:
    """A tiny problem carrying mask configuration ``name``."""
    fields = dict(lq=lq, lk=lk, hq=2, hkv=2, dqk=8, dv=8, mask=MASKS[name](lk, align))
    fields.update(kw)
    return Problem(**fields)


def spec_allowed(problem: Problem) -> np.ndarray:
    """The mask definitions (attnsuite/problem.py) written out per element in plain Python: True where query i sees key j."""
    m, lq, lk = problem.mask, problem.lq, problem.lk
    off = lk - lq if m.align == "bottom_right" else 0
    doc_of = [d for d, n in enumerate(m.doc_lens) for _ in range(n)]
    out = np.zeros((lq, lk), dtype=bool)
    for i in range(lq):
        pos = i + off  # the query's position on the key axis
        for j in range(lk):
            if m.kind == "causal":
                ok = j <= pos
            elif m.kind == "window":
                ok = pos - m.window <= j <= pos
            elif m.kind == "block_causal":
                ok = j // m.block <= pos // m.block  # Python // floors, like floor(j/F) <= floor(i/F)
            elif m.kind == "block_sparse":
                qb, kb = i // m.block, j // m.block
                ok = qb == kb or (qb * 7 + kb * 13 + m.seed) % 3 == 0
            elif m.kind == "document":
                ok = 0 <= pos < lk and doc_of[pos] == doc_of[j] and (not m.causal or j <= pos)
            elif m.kind == "prefix":
                ok = j < m.prefix or j <= pos
            elif m.kind == "random":
                ok = bool(oracle_mask.random_keep(np.int64(i), np.int64(j), m.seed, lk))
            else:
                ok = True
            out[i, j] = ok
    return out


def first_difference(a: np.ndarray, b: np.ndarray) -> str:
    """Where two boolean masks first differ, and how many elements do."""
    diff = np.argwhere(a != b)
    if not len(diff):
        return "no difference"
    i, j = (int(x) for x in diff[0])
    return f"{len(diff)} of {a.size} elements differ, first at query {i}, key {j} ({a[i, j]} vs {b[i, j]})"


def eval_mask_mod(mod, lq: int, lk: int, index_dtype: torch.dtype) -> np.ndarray:
    """A mask_mod evaluated on the full (lq, lk) grid with indices of ``index_dtype``."""
    qi = torch.arange(lq, dtype=index_dtype)[:, None]
    kj = torch.arange(lk, dtype=index_dtype)[None, :]
    zero = torch.zeros((), dtype=index_dtype)
    return torch.broadcast_to(mod(zero, zero, qi, kj), (lq, lk)).numpy()


@pytest.mark.parametrize("name,lq,lk,align", CASES)
def test_oracle_mask_is_the_design_definition(name, lq, lk, align):
    problem = make(name, lq, lk, align)
    got, want = oracle_mask.allowed(problem), spec_allowed(problem)
    assert np.array_equal(got, want), f"oracle mask {problem.mask.id} q{lq}k{lk}: {first_difference(got, want)}"


@pytest.mark.parametrize("name,lq,lk,align", CASES)
def test_dense_boolean_mask_agrees_with_the_oracle(name, lq, lk, align):
    problem = make(name, lq, lk, align)
    want = oracle_mask.allowed(problem)
    dense = mask_mods.dense_bool_mask(problem, "cpu")
    assert dense.dtype == torch.bool and tuple(dense.shape) == (lq, lk)
    assert np.array_equal(dense.numpy(), want), f"dense bool mask {problem.mask.id}: {first_difference(dense.numpy(), want)}"
    # Triton's FlexAttention kernels call mask_mods with int32 indices: same answer required
    as_int32 = eval_mask_mod(mask_mods.mask_mod(problem, "cpu"), lq, lk, torch.int32)
    assert np.array_equal(as_int32, want), f"mask_mod on int32 indices {problem.mask.id}: {first_difference(as_int32, want)}"


@pytest.mark.parametrize("name,lq,lk,align", CASES)
def test_additive_mask_agrees_with_the_oracle(name, lq, lk, align):
    problem = make(name, lq, lk, align)
    want = oracle_mask.allowed(problem)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        bias = mask_mods.additive_bias(problem, dtype, "cpu")
        assert bias.dtype == dtype
        b = bias.double().numpy()
        assert np.array_equal(b == 0.0, want), f"additive {dtype} {problem.mask.id}: {first_difference(b == 0.0, want)}"
        assert np.all(np.isneginf(b[~want])), f"additive {dtype} {problem.mask.id}: a masked entry is not -inf"
    # with ALiBi: -inf exactly where masked, the oracle's bias (to fp64 rounding) where allowed
    with_alibi = problem.with_(alibi=True)
    b = mask_mods.additive_bias(with_alibi, torch.float64, "cpu").numpy()
    ref = oracle_mask.alibi_bias(with_alibi)
    assert b.shape == ref.shape
    allowed = np.broadcast_to(want, b.shape)
    assert np.array_equal(np.isfinite(b), allowed), f"ALiBi additive {problem.mask.id}: finite entries != allowed"
    np.testing.assert_allclose(b[allowed], ref[allowed], rtol=1e-15, atol=0, err_msg=f"ALiBi bias {problem.mask.id}")


def block_mask_effective(block_mask, mod, lq: int, lk: int) -> tuple[np.ndarray, list[str]]:
    """What a BlockMask lets the kernel attend: full blocks entirely, partial blocks through mask_mod.

    Also returns structural complaints: blocks listed both full and partial, present blocks in
    which nothing is allowed (work the kernel does for nothing).
    """
    qbs, kbs = block_mask.BLOCK_SIZE
    nq = math.ceil(lq / qbs)

    def listed(num, idx, qb):
        if num is None:
            return []
        return [int(x) for x in idx[0, 0, qb, : int(num[0, 0, qb])]]

    effective = np.zeros((lq, lk), dtype=bool)
    complaints = []
    grid = eval_mask_mod(mod, lq, lk, torch.int32)
    for qb in range(nq):
        rows = slice(qb * qbs, min(lq, (qb + 1) * qbs))
        partial = listed(block_mask.kv_num_blocks, block_mask.kv_indices, qb)
        full = listed(block_mask.full_kv_num_blocks, block_mask.full_kv_indices, qb)
        if set(partial) & set(full):
            complaints.append(f"query block {qb}: key blocks {sorted(set(partial) & set(full))} both full and partial")
        for kb in partial + full:
            cols = slice(kb * kbs, min(lk, (kb + 1) * kbs))
            tile = np.ones_like(grid[rows, cols]) if kb in full else grid[rows, cols]
            if not grid[rows, cols].any():
                complaints.append(f"block ({qb}, {kb}) is listed but allows nothing")
            effective[rows, cols] |= tile
    return effective, complaints


@pytest.mark.parametrize("name,lq,lk,align", CASES)
def test_block_mask_agrees_with_the_oracle(name, lq, lk, align):
    from torch.nn.attention.flex_attention import create_block_mask

    problem = make(name, lq, lk, align)
    want = oracle_mask.allowed(problem)
    mod = mask_mods.mask_mod(problem, "cpu")
    for bs in BLOCK_SIZES:
        bm = create_block_mask(mod, None, None, lq, lk, device="cpu", BLOCK_SIZE=bs)
        got, complaints = block_mask_effective(bm, mod, lq, lk)
        assert not complaints, f"BlockMask {problem.mask.id} BLOCK_SIZE={bs}: {'; '.join(complaints)}"
        assert np.array_equal(got, want), f"BlockMask {problem.mask.id} BLOCK_SIZE={bs}: {first_difference(got, want)}"
        # the block-level picture: a block is present iff something in it is allowed
        dense = bm.to_dense()[0, 0].numpy().astype(bool)
        qbs, kbs = bm.BLOCK_SIZE
        for qb in range(math.ceil(lq / qbs)):
            for kb in range(math.ceil(lk / kbs)):
                any_allowed = bool(want[qb * qbs:(qb + 1) * qbs, kb * kbs:(kb + 1) * kbs].any())
                assert dense[qb, kb] == any_allowed, (
                    f"BlockMask {problem.mask.id} BLOCK_SIZE={bs}: block ({qb}, {kb}) present={dense[qb, kb]} "
                    f"but allows anything={any_allowed}")


@pytest.mark.parametrize(
    "problem",
    [
        pytest.param(make("random3", 113, 97, "top_left", dqk=16, dv=16), id="random3-q113k97"),
        pytest.param(make("document-causal", 17, 113, "bottom_right", dqk=16, dv=16), id="document-causal-q17k113-br"),
    ],
)
def test_compiled_flex_with_a_small_block_mask_matches_the_oracle(problem):
    """The kernel that consumes the BlockMask (compiled, block-sparse) gives the oracle's output."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from attnsuite.inputs import kernel_inputs

    q, k, v, _ = kernel_inputs(problem)
    bm = create_block_mask(mask_mods.mask_mod(problem, "cpu"), None, None, problem.lq, problem.lk,
                           device="cpu", BLOCK_SIZE=16)
    out = torch.compile(flex_attention, dynamic=False)(q, k, v, block_mask=bm, scale=problem.softmax_scale)
    ref = oracle.solve(problem, with_grad=False).out
    err = float(np.abs(out.double().numpy() - ref).max())
    # fp32 accumulation over <= 113 keys: 1e-5 of the output magnitude is ~100x honest rounding
    assert err <= 1e-5 * float(np.abs(ref).max()), f"compiled flex {problem.id}: max error {err:.3g} vs oracle"


# Fully masked rows, with the expected rows derived by hand from each definition.
FULLY_MASKED = [
    pytest.param(Mask("causal", align="bottom_right"), 113, 97, list(range(16)), id="causal-br-lq>lk-first-16-rows"),
    pytest.param(Mask("causal"), 113, 97, [], id="causal-tl-none"),
    pytest.param(Mask("window", window=8), 113, 97, list(range(105, 113)), id="window8-tl-rows-past-lk+w"),
    pytest.param(Mask("document", doc_lens=(50, 47)), 113, 97, list(range(97, 113)), id="document-tl-rows-past-lk"),
    pytest.param(Mask("document", doc_lens=(50, 47), align="bottom_right"), 113, 97, list(range(16)), id="document-br-first-16"),
    pytest.param(Mask("block_causal", block=4, align="bottom_right"), 20, 10, list(range(10)), id="frame4-br-negative-positions"),
    pytest.param(Mask("prefix", prefix=0, align="bottom_right"), 5, 3, [0, 1], id="prefix0-br-two-rows"),
    pytest.param(Mask("prefix", prefix=2, align="bottom_right"), 5, 3, [], id="prefix2-br-none"),
    pytest.param(Mask("random", seed=5), 113, 97, [], id="random-never"),
]


@pytest.mark.parametrize("mask,lq,lk,rows", FULLY_MASKED)
def test_fully_masked_rows_are_found(mask, lq, lk, rows):
    problem = Problem(lq=lq, lk=lk, hq=2, hkv=2, dqk=8, dv=8, mask=mask)
    found = oracle_mask.fully_masked_rows(problem).tolist()
    assert found == rows, f"{problem.id}: fully masked rows {found}, expected {rows}"
    # the oracle's defined answer for such rows: zero output, -inf log-sum-exp, finite elsewhere
    result = oracle.solve(problem)
    assert np.all(result.out[:, :, rows] == 0.0) and np.all(np.isneginf(result.lse[:, :, rows]))
    assert all(np.all(np.isfinite(g)) for g in (result.out, result.dq, result.dk, result.dv))


@pytest.mark.parametrize("align", ALIGNS)
@pytest.mark.parametrize("lq,lk", [(17, 113), (113, 17), (97, 97)])
@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32], ids=["int64-indices", "int32-indices"])
def test_flex_score_mod_matches_the_oracle_alibi_and_softcap(align, lq, lk, index_dtype):
    problem = Problem(lq=lq, lk=lk, hq=4, hkv=2, dqk=8, dv=8, alibi=True, softcap=3.0,
                      mask=Mask("causal", align=align), dtype="float64")
    mod = mask_mods.score_mod(problem, "cpu")
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((problem.hq, lq, lk)) * 4
    h = torch.arange(problem.hq, dtype=index_dtype)[:, None, None]
    qi = torch.arange(lq, dtype=index_dtype)[None, :, None]
    kj = torch.arange(lk, dtype=index_dtype)[None, None, :]
    got = mod(torch.from_numpy(scores), torch.zeros((), dtype=index_dtype), h, qi, kj).numpy()
    t = scores + oracle_mask.alibi_bias(problem)
    want = 3.0 * np.tanh(t / 3.0)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-13, err_msg=f"score_mod {problem.id}")


def test_alibi_slopes_are_the_papers_geometric_sequence():
    # 8 heads: 1/2, 1/4, ..., 1/256 (Press et al.); the torch slopes agree in fp64 to the last bit
    np.testing.assert_array_equal(oracle_mask.alibi_slopes(8), 2.0 ** -np.arange(1, 9))
    for hq in (1, 3, 6, 12):
        torch_slopes = mask_mods.alibi_slopes(hq, "cpu", torch.float64).numpy()
        np.testing.assert_allclose(torch_slopes, oracle_mask.alibi_slopes(hq), rtol=1e-15, atol=0)


def test_oracle_score_mods_follow_the_design_formula_element_by_element():
    """softmax over j of: softcap(scale q.k - m_h |i + off - j|), masked; written as loops."""
    problem = Problem(lq=5, lk=9, hq=2, hkv=1, dqk=4, dv=3, alibi=True, softcap=2.5,
                      mask=Mask("window", window=3, align="bottom_right"), dtype="float64")
    rng = np.random.default_rng(1)
    q, k, v = rng.standard_normal((1, 2, 5, 4)), rng.standard_normal((1, 1, 9, 4)), rng.standard_normal((1, 1, 9, 3))
    out, _, _, _ = oracle.forward(problem, q, k, v)
    off, s = 9 - 5, 0.5  # bottom-right offset, 1/sqrt(4)
    for h in range(2):
        m = 2.0 ** (-8.0 * (h + 1) / 2)
        for i in range(5):
            logits = {}
            for j in range(9):
                if i + off - 3 <= j <= i + off:
                    t = s * float(q[0, h, i] @ k[0, 0, j]) - m * abs(i + off - j)
                    logits[j] = 2.5 * math.tanh(t / 2.5)
            top = max(logits.values())
            w = {j: math.exp(x - top) for j, x in logits.items()}
            o = sum(w[j] * v[0, 0, j] for j in w) / sum(w.values())
            np.testing.assert_allclose(out[0, h, i], o, rtol=1e-12, err_msg=f"head {h} query {i}")


def test_random_mask_keeps_about_half_and_at_least_one_key_per_row():
    problem = Problem(lq=257, lk=200, mask=Mask("random", seed=7))
    allowed = oracle_mask.allowed(problem)
    assert allowed.any(axis=1).all()
    # 48 of 97 hash values kept (+ one forced key per row): a fraction near 0.5 in every quarter
    for part in np.array_split(allowed, 4):
        assert 0.4 < part.mean() < 0.6, f"random mask keeps {part.mean():.2f} of a quarter of the rows"
    # it must not be symmetric or shift-invariant (which would hide a transposed convention)
    assert not np.array_equal(allowed[:200, :200], allowed[:200, :200].T)


@pytest.mark.parametrize("name,lq,lk,align", CASES[::3])
def test_the_block_mask_the_flex_variants_use_agrees_with_the_oracle(name, lq, lk, align):
    problem = make(name, lq, lk, align)
    bm = mask_mods.block_mask(problem.with_(device="cpu"))
    got, complaints = block_mask_effective(bm, mask_mods.mask_mod(problem, "cpu"), lq, lk)
    assert not complaints, f"mask_mods.block_mask {problem.mask.id}: {'; '.join(complaints)}"
    assert np.array_equal(got, oracle_mask.allowed(problem)), f"mask_mods.block_mask {problem.mask.id}"


def test_a_block_mask_is_shared_by_problems_that_differ_only_outside_the_mask_and_lengths():
    base = Problem(batch=2, lq=40, lk=56, hq=4, hkv=2, dqk=16, dv=16, mask=Mask("causal", align="bottom_right"))
    same = mask_mods.block_mask(base)
    assert mask_mods.block_mask(base.with_(batch=3, hq=8, hkv=8, dqk=32, dv=8, dtype="float64")) is same
    other_corner = mask_mods.block_mask(base.with_(mask=Mask("causal")))
    other_length = mask_mods.block_mask(base.with_(lk=57))
    assert other_corner is not same and other_length is not same
    for p, bm in ((base, same), (base.with_(mask=Mask("causal")), other_corner), (base.with_(lk=57), other_length)):
        got, _ = block_mask_effective(bm, mask_mods.mask_mod(p, "cpu"), p.lq, p.lk)
        assert np.array_equal(got, oracle_mask.allowed(p)), p.id
    assert mask_mods.block_mask(base.with_(mask=Mask())) is None
