"""The ring's bookkeeping around its pair kernels stays lean: no zero fill that a first contribution
could replace, no copies of slices the pair kernel can read as they are.

On the GPU these show up as fill, copy and add kernels next to the attention kernels (issue 12: about
4 ms per fwd+bwd call at L 64K on 2 H200s); here the ops are counted on CPU ranks (gloo) with
scripts/ring_kernel_counts.py, which a person reruns to see the whole table.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from attnsuite import registry
from attnsuite.distributed.launch import RankPool
from attnsuite.distributed.ring_attention import FusedOps, OnlineSoftmax, RowSum, strided_pairs_work
from attnsuite.problem import Mask, Problem

REPO = Path(__file__).resolve().parents[1]
# The rank task is pickled by reference to this module, so a rank must be able to import it by name:
# a spawned rank (the start method on any host with a GPU) gets this process's sys.path, not its modules.
if str(REPO / "scripts") not in sys.path:
    sys.path.insert(0, str(REPO / "scripts"))
import ring_kernel_counts as counts  # noqa: E402

registry.load_builtin()
PROBLEM = Problem(batch=1, lq=40, lk=40, hq=4, hkv=2, dqk=16, dv=16, mask=Mask("causal"), dtype="float32")


@pytest.fixture(scope="module")
def pool():
    with RankPool(2, "cpu", timeout_s=60.0) as p:
        yield p


@pytest.mark.parametrize("path", ["fused", "math"])
@pytest.mark.parametrize("sharding", ["ring", "ring-zigzag"])
def test_the_ring_never_writes_into_a_buffer_it_zero_filled_in_the_same_call(sharding, path, pool):
    """Accumulators (the forward's state, dQ, a block's dK/dV) start uninitialised: the first
    contribution is written, not added to zeros; only rows nothing reached are zeroed, at the end."""
    for rank, c in enumerate(counts.count_ops(pool, PROBLEM, sharding, fused=path == "fused")):
        assert c["zero_then_write"] == {}, f"rank {rank}: writes into zero-filled buffers {c['zero_then_write']}"
        assert c["calls"].get("add_", 0) > 0, "the counter saw the ring's adds (it is counting at all)"


@pytest.mark.parametrize("sharding", ["ring", "ring-zigzag"])
def test_fused_pairs_on_cpu_read_query_rows_and_key_slices_without_copying_them(sharding, pool):
    no_gqa = PROBLEM.with_(hkv=PROBLEM.hq)  # under GQA each block's K/V are expanded once for the fused kernel
    for rank, c in enumerate(counts.count_ops(pool, no_gqa, sharding, fused=True)):
        # only the log-sum-exp rows (one float per row) are copied, once per query segment
        clone_bytes, lse_bytes = c["bytes"].get("clone", 0), PROBLEM.hq * PROBLEM.lq * 4
        assert clone_bytes <= lse_bytes, f"rank {rank}: {c['calls']['clone']} contiguous copies, {clone_bytes} bytes"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_pair_backward_gives_identical_gradients_for_row_slices_and_their_copies(dtype):
    """Why the CPU ring passes views: the kernel's result is bit for bit the copies' (on CUDA it is probed)."""
    g = torch.Generator().manual_seed(0)
    q, k, v, do = (torch.randn(2, 3, 40, 16, generator=g).to(dtype) for _ in range(4))
    rows, keys = slice(8, 24), slice(16, 40)
    ops = FusedOps(torch.device("cpu"), 0.25, dtype, 16)
    assert ops.strided and strided_pairs_work(torch.device("cpu"), dtype, 16, ops.kernel)
    out_p, lse_p, aux = ops.forward(q[:, :, rows], k[:, :, keys], v[:, :, keys], False)
    out, lse = torch.zeros_like(q), torch.zeros(q.shape[:3])
    out[:, :, rows], lse[:, :, rows] = out_p, lse_p
    views = (do[:, :, rows], q[:, :, rows], k[:, :, keys], v[:, :, keys], out[:, :, rows], lse[:, :, rows])
    got = ops.backward(*views, False, aux)
    want = ops.backward(*(t.contiguous() for t in views), False, aux)
    for name, a, b in zip(("dq", "dk", "dv"), got, want):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("steps,expected", [
    ([(0, 4, 1.0)], [1, 1, 1, 1, 0, 0]),  # first contribution written; rows 4, 5 never reached: zero
    ([(0, 4, 1.0), (0, 4, 2.0)], [3, 3, 3, 3, 0, 0]),  # the same rows again: added
    ([(0, 3, 1.0), (2, 6, 2.0)], [1, 1, 3, 2, 2, 2]),  # partly overlapping: the new rows start at zero
])
def test_row_sum_writes_first_contributions_adds_later_ones_and_zeroes_rows_never_reached(steps, expected):
    acc = RowSum((1, 6, 2), torch.float32, "cpu", dim=1)
    acc.buf.fill_(float("nan"))  # what an uninitialised buffer may hold
    for lo, hi, value in steps:
        acc.add(slice(lo, hi), torch.full((1, hi - lo, 2), value, dtype=torch.bfloat16))
    assert acc.finish()[0, :, 0].tolist() == expected


@pytest.mark.parametrize("written_first", [False, True])
def test_row_sum_takes_a_whole_received_buffer_as_it_is_when_nothing_was_written(written_first):
    acc = RowSum((1, 4, 2), torch.float32, "cpu", dim=1)
    if written_first:
        acc.add(slice(1, 3), torch.ones(1, 2, 2))
    received = torch.full((1, 4, 2), 2.0)
    acc.add_whole(received)
    out = acc.finish()
    assert (out is received) is not written_first  # no copy of a block this rank's rows never see
    assert out[0, :, 0].tolist() == ([2, 3, 3, 2] if written_first else [2, 2, 2, 2])


def test_online_softmax_sets_rows_no_block_reached_to_zero_and_minus_inf_whatever_the_buffers_held():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(1, 1, 6, 5, generator=g, dtype=torch.float64)
    v = torch.randn(1, 1, 5, 3, generator=g, dtype=torch.float64)
    state = OnlineSoftmax(1, 1, 6, 3, torch.float64, "cpu")
    for t in (state.m, state.l, state.acc):
        t.fill_(float("nan"))  # what uninitialised state may hold
    seen = torch.zeros(6, 5, dtype=torch.bool)
    # rows 0-1 see keys 0-2, then rows 1-3 keys 3-4 (partly overlapping the first); rows 4-5 see nothing
    for rows, keys in ((slice(0, 2), slice(0, 3)), (slice(1, 4), slice(3, 5))):
        blk = s[..., rows, keys]
        m_b = blk.amax(-1)
        p = torch.exp(blk - m_b.unsqueeze(-1))
        state.merge(m_b, p.sum(-1), p @ v[..., keys, :], rows)
        seen[rows, keys] = True
    out, lse = state.result(torch.float32)
    assert out.dtype == torch.float32 and lse.dtype == torch.float64
    masked = s.masked_fill(~seen, float("-inf"))[..., :4, :]
    torch.testing.assert_close(out[..., :4, :], (torch.softmax(masked, -1) @ v).float())
    torch.testing.assert_close(lse[..., :4], torch.logsumexp(masked, -1))
    assert (out[..., 4:, :] == 0).all() and torch.isneginf(lse[..., 4:]).all()
