"""The MLA and latent-attention oracles: NumPy backward against torch float64 autograd, RoPE, RMSNorm.

The torch side is the families' own plain math (``mla_torch`` / ``latent_torch``) run in float64;
it is written with torch ops and shares no code with the NumPy forward/backward.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from attnsuite_impls.mla import mla_oracle as mo
from attnsuite.inputs import layer_inputs_np
from attnsuite.problem import Mask, ProblemError

MASKS = [Mask("causal"), Mask()]


def _autograd(fn, problem, params_np):
    x_np, dy_np = layer_inputs_np(problem)
    x = torch.from_numpy(np.array(x_np)).requires_grad_(True)
    params = {n: torch.from_numpy(np.array(a)).requires_grad_(True) for n, a in params_np.items()}
    y = fn(problem, x, params)
    y.backward(torch.from_numpy(np.array(dy_np)))
    grads = {n: t.grad.numpy() for n, t in params.items()}
    grads["x"] = x.grad.numpy()
    return y.detach().numpy(), grads


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: m.id)
@pytest.mark.parametrize("shape", [(2, 7, 32, 2, 12, 10, 6, 4, 8), (1, 11, 24, 3, 16, 8, 4, 6, 5)],
                         ids=["b2-L7-h2", "b1-L11-h3-v5"])
def test_mla_numpy_backward_equals_torch_float64_autograd(shape, mask):
    problem = mo.mla_problem(*shape, mask=mask, dtype="float64")
    params = mo.mla_params_np(problem)
    x, dy = layer_inputs_np(problem)
    y, _ = mo.mla_forward(problem, x, params)
    grads = mo.mla_backward(problem, x, params, dy)
    y_t, grads_t = _autograd(mo.mla_torch, problem, params)
    np.testing.assert_allclose(y, y_t, rtol=1e-11, atol=1e-12, err_msg="MLA forward")
    assert set(grads) == set(mo.MLA_PARAM_NAMES) | {"x"}
    for name in grads:
        np.testing.assert_allclose(grads[name], grads_t[name], rtol=1e-9, atol=1e-11, err_msg=f"MLA grad {name}")


@pytest.mark.parametrize("mask", MASKS, ids=lambda m: m.id)
def test_latent_numpy_backward_equals_torch_float64_autograd(mask):
    problem = mo.latent_problem(2, 9, 24, 3, 6, 8, 5, mask=mask, dtype="float64")
    params = mo.latent_params_np(problem)
    x, dy = layer_inputs_np(problem)
    y, _ = mo.latent_forward(problem, x, params)
    grads = mo.latent_backward(problem, x, params, dy)
    y_t, grads_t = _autograd(mo.latent_torch, problem, params)
    np.testing.assert_allclose(y, y_t, rtol=1e-11, atol=1e-12, err_msg="latent forward")
    for name in set(mo.LATENT_PARAM_NAMES) | {"x"}:
        np.testing.assert_allclose(grads[name], grads_t[name], rtol=1e-9, atol=1e-11, err_msg=f"latent grad {name}")


def test_rope_scores_depend_only_on_the_relative_position_and_inverse_undoes_it():
    rng = np.random.default_rng(0)
    cos, sin = mo.rope_tables(20, 8)
    a, b = rng.standard_normal(8), rng.standard_normal(8)
    ra = mo.rope_apply(np.broadcast_to(a, (20, 8)), cos, sin)
    rb = mo.rope_apply(np.broadcast_to(b, (20, 8)), cos, sin)
    dots = ra @ rb.T
    assert np.allclose(dots[3, 1], dots[15, 13]) and np.allclose(dots[5, 5], a @ b)
    assert not np.allclose(dots[3, 1], dots[3, 2])
    back = mo.rope_apply(ra, cos, sin, inverse=True)
    np.testing.assert_allclose(back, np.broadcast_to(a, (20, 8)), atol=1e-13)


def test_rms_backward_matches_finite_differences():
    rng = np.random.default_rng(1)
    z, g, dy = rng.standard_normal((3, 6)), rng.standard_normal(6), rng.standard_normal((3, 6))
    y, r = mo.rms_forward(z, g)
    dz, dg = mo.rms_backward(z, g, r, dy)
    eps = 1e-6
    num = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += eps
        zm[idx] -= eps
        num[idx] = (np.sum(mo.rms_forward(zp, g)[0] * dy) - np.sum(mo.rms_forward(zm, g)[0] * dy)) / (2 * eps)
    np.testing.assert_allclose(dz, num, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(dg, np.sum(dy * y / g, axis=0), rtol=1e-12)


def test_mla_problem_rejects_dims_that_do_not_add_up_and_names_them():
    p = mo.mla_problem(1, 4, 16, 2, 8, 8, 4, 4, 4)
    with pytest.raises(ProblemError, match="dqk=9 must equal nope_dim \\+ rope_dim"):
        mo.mla_dims(p.with_(dqk=9))
    with pytest.raises(ProblemError, match="rope_dim=3 must be even"):
        mo.mla_problem(1, 4, 16, 2, 8, 8, 4, 3, 4)


def test_deepseek_v3_workload_problem_has_the_published_dims():
    p = mo.deepseek_v3_problem()
    d = mo.mla_dims(p)
    assert (p.batch, p.lq, p.d_model, p.hq) == (2, 2048, 7168, 128)
    assert d == {"q_lora": 1536, "kv_lora": 512, "nope_dim": 128, "rope_dim": 64, "v_dim": 128}
    assert p.softmax_scale == pytest.approx(1 / np.sqrt(192))
