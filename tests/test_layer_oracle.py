"""The NumPy float64 layer oracle against torch float64 autograd, and the canonical parameters.

The torch side here is written from torch's own building blocks (F.linear, F.layer_norm,
F.rms_norm, softmax with torch.tril for causal), independent of the oracle, of
:mod:`attnsuite_impls.layers.layer_reference` and of every variant, so a slip in the hand-written NumPy
backward (projections, LayerNorm, RMSNorm) or in the head layout shows up as a disagreement.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from attnsuite_impls.layers import layer_oracle
from attnsuite.inputs import layer_inputs_np
from attnsuite.problem import Mask, Problem


def _torch_layer(problem: Problem, family: str, x: torch.Tensor, p: dict[str, torch.Tensor]) -> torch.Tensor:
    """The layer in float64 torch ops, autograd for gradients."""
    b, l, _ = x.shape
    h, dh = problem.hq, problem.dqk

    def heads(t):
        return t.unflatten(-1, (h, -1)).permute(0, 2, 1, 3)

    q, k, v = (heads(F.linear(x, p["w" + n], p["b" + n])) for n in "qkv")
    if family == "qknorm-ln-layer":
        q = F.layer_norm(q, (dh,), p["qn_w"], p["qn_b"], eps=1e-6)
        k = F.layer_norm(k, (dh,), p["kn_w"], p["kn_b"], eps=1e-6)
    elif family == "qknorm-rms-layer":
        q = F.rms_norm(q, (dh,), p["qn_w"], eps=1e-6)
        k = F.rms_norm(k, (dh,), p["kn_w"], eps=1e-6)
    s = (q @ k.transpose(-1, -2)) * problem.softmax_scale
    if problem.mask.kind == "causal":
        s = s.masked_fill(~torch.ones(l, l, dtype=torch.bool).tril(), float("-inf"))
    o = torch.softmax(s, dim=-1) @ v
    return F.linear(o.permute(0, 2, 1, 3).flatten(2), p["wo"], p["bo"])


PROBLEMS = [
    ("mha-layer", Problem(batch=2, lq=9, lk=9, hq=3, hkv=3, dqk=8, dv=8, d_model=24, mask=Mask("causal"), dtype="float64")),
    ("mha-layer", Problem(batch=1, lq=5, lk=5, hq=2, hkv=2, dqk=12, dv=12, d_model=24, dtype="float64")),
    ("qknorm-ln-layer", Problem(batch=2, lq=7, lk=7, hq=2, hkv=2, dqk=10, dv=10, d_model=20, scale=0.1,
                                mask=Mask("causal"), dtype="float64")),
    ("qknorm-ln-layer", Problem(batch=1, lq=6, lk=6, hq=4, hkv=4, dqk=6, dv=6, d_model=24, scale=0.3, dtype="float64")),
    ("qknorm-rms-layer", Problem(batch=2, lq=7, lk=7, hq=2, hkv=2, dqk=10, dv=10, d_model=20, scale=0.1,
                                 mask=Mask("causal"), dtype="float64")),
    ("qknorm-rms-layer", Problem(batch=1, lq=6, lk=6, hq=4, hkv=4, dqk=6, dv=6, d_model=24, dtype="float64")),
]


@pytest.mark.parametrize(("family", "problem"), PROBLEMS, ids=[f"{f}@{p.id}" for f, p in PROBLEMS])
def test_numpy_layer_oracle_matches_torch_float64_autograd(family: str, problem: Problem) -> None:
    """Output and every gradient (x and each canonical parameter) agree to ~1e-12 relative."""
    y_ref, grads_ref = layer_oracle.solve(family, problem)
    x_np, dy_np = layer_inputs_np(problem)
    x = torch.tensor(x_np, requires_grad=True)
    params = {k: torch.tensor(v, requires_grad=True) for k, v in layer_oracle.params_np(family, problem).items()}
    y = _torch_layer(problem, family, x, params)
    y.backward(torch.tensor(dy_np))
    torch_grads = {"x": x.grad, **{k: v.grad for k, v in params.items()}}
    assert set(grads_ref) == set(torch_grads), f"oracle gradient keys {sorted(grads_ref)} != {sorted(torch_grads)}"
    scale = max(float(np.abs(g).max()) for g in grads_ref.values())
    for name, got in [("output", y), *torch_grads.items()]:
        ref = y_ref if name == "output" else grads_ref[name]
        got = got.detach().numpy()
        assert ref.shape == got.shape, f"{family} {name}: oracle shape {ref.shape} != torch shape {got.shape}"
        err = float(np.abs(ref - got).max())
        bound = 1e-12 * (float(np.abs(got).max()) if name == "output" else scale)
        assert err <= bound, f"{family} on {problem.id}: {name} differs from torch autograd by {err:.3g} > {bound:.3g}"


def test_the_oracle_sees_a_mask_and_a_scale_change() -> None:
    """Sanity of the cross-check itself: causal vs none and a pinned scale both move the output."""
    base = PROBLEMS[2][1]
    y, _ = layer_oracle.solve("qknorm-ln-layer", base)
    y_nomask, _ = layer_oracle.solve("qknorm-ln-layer", base.with_(mask=Mask()))
    y_scale, _ = layer_oracle.solve("qknorm-ln-layer", base.with_(scale=0.105))
    assert np.abs(y - y_nomask).max() > 1e-3, "the causal mask does not change the layer's output"
    assert np.abs(y - y_scale).max() > 1e-5, "a 5% scale change does not change the layer's output"


@pytest.mark.parametrize("family", sorted(layer_oracle.LAYER_FAMILIES))
def test_canonical_params_are_realistic_seeded_and_shared_across_dtypes(family: str) -> None:
    """Weights ~ N(0, 1/d_model), biases small and nonzero, norm weights near 1 but not 1; same draw per dtype."""
    p64 = Problem(batch=1, lq=3, lk=3, hq=4, hkv=4, dqk=16, dv=16, d_model=64, dtype="float64")
    a = layer_oracle.params_np(family, p64)
    b = layer_oracle.params_np(family, p64)
    bf = layer_oracle.params_np(family, p64.with_(dtype="bfloat16"))
    assert list(a) == list(layer_oracle.LAYER_FAMILIES[family][1]), f"{family}: parameter names {list(a)}"
    for name, arr in a.items():
        np.testing.assert_array_equal(arr, b[name], err_msg=f"{family} {name}: not deterministic")
        assert not arr.flags.writeable, f"{family} {name}: shared canonical array is writeable"
        assert np.abs(arr - bf[name]).max() <= 2.0**-8 * np.abs(arr).max(), f"{family} {name}: bf16 draw differs"
        np.testing.assert_array_equal(bf[name], torch.tensor(bf[name]).bfloat16().double().numpy(),
                                      err_msg=f"{family} {name}: not representable in bf16")
        if name.startswith("w"):
            std = arr.std()
            assert 0.7 / 8 < std < 1.3 / 8, f"{family} {name}: std {std:.3g}, expected about 1/sqrt(64)"
        elif name.endswith("_w"):
            assert np.all(arr != 1.0) and 0.5 < arr.mean() < 1.5, f"{family} {name}: norm weight {arr}"
        else:
            assert np.all(arr != 0.0) and np.abs(arr).max() < 1.0, f"{family} {name}: bias {arr}"
    assert a["wq"].shape == (64, 64) and a["wo"].shape == (64, 64) and a["bo"].shape == (64,)


def test_layer_families_are_registered_with_problems_in_every_dtype() -> None:
    """Importing the module registers the three families; each has small CPU problems per dtype."""
    from attnsuite import registry

    for name in layer_oracle.LAYER_FAMILIES:
        fam = registry._FAMILIES[name]
        assert fam.level == "layer"
        problems = fam.problems("cpu", ("float32", "float64", "bfloat16"))
        for dtype in ("float32", "float64", "bfloat16"):
            mine = [p for p in problems if p.dtype == dtype]
            assert len(mine) >= 3, f"{name}: only {len(mine)} {dtype} problems"
            assert {p.mask.kind for p in mine} == {"none", "causal"}, f"{name}: {dtype} problems miss a mask kind"
        assert all(p.d_model == p.hq * p.dqk and p.hq == p.hkv for p in problems)
        if name != "mha-layer":  # the QK-norm scale is pinned, and not to the default
            assert all(p.scale == layer_oracle.QKNORM_SCALE != 1 / np.sqrt(p.dqk) for p in problems)
        lengths = {p.lq for p in problems}
        assert {17, 97} <= lengths and (1 in lengths or 3 in lengths), f"{name}: lengths {sorted(lengths)}"
    assert max(p.lq for p in registry._FAMILIES["mha-layer"].problems("cpu", ("float32",))) > 1000
