"""Count the tensor ops one rank of the ring issues in one forward + backward call, on CPU ranks (gloo).

The GPU profile of the ring splits its time into attention kernels and elementwise kernels (fills,
copies, adds); this counts the same ops on CPU, where every op is one kernel too, so a change to the
ring's bookkeeping can be judged without a GPU. Each rank runs the ring once (warm-up) and once under
a ``TorchDispatchMode`` that records every aten op issued by the ring's own code (ops inside the pair
kernels and the transfers are not seen: they are the attention and communication, not bookkeeping),
with the bytes each op writes. Views (slices, reshapes) write nothing and are left out.

    .venv/bin/python scripts/ring_kernel_counts.py [--P 2] [--sharding zigzag] [--math] [--json out.json]

prints one table per rank: op, calls, MiB written.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from attnsuite import registry  # noqa: E402
from attnsuite.distributed.launch import RankPool  # noqa: E402
from attnsuite.distributed.shard import take  # noqa: E402
from attnsuite.inputs import kernel_inputs  # noqa: E402
from attnsuite.problem import Mask, Problem  # noqa: E402

# op families that are elementwise bookkeeping (what the GPU profile calls fill, copy and add kernels)
FAMILIES = {
    "fill": ("zeros", "zeros_like", "ones", "ones_like", "full", "full_like", "fill_", "zero_", "new_zeros",
             "new_full", "new_ones", "masked_fill_", "masked_fill"),
    "copy": ("clone", "_to_copy", "copy_", "contiguous"),
    "add": ("add", "add_", "addcmul", "addcmul_", "sub", "sub_"),
}
# ops that only describe memory (no kernel, nothing written)
_NO_WRITE = ("empty", "empty_like", "new_empty", "empty_strided")


_ZERO_MAKERS = ("zeros", "zeros_like", "new_zeros")  # ops that return a fresh zero-filled tensor
_VALUE_FILLS = ("fill_", "full", "full_like", "new_full")  # zero-filled when their value is 0


def _storage(t) -> int:
    return t.untyped_storage().data_ptr() if isinstance(t, torch.Tensor) and t.numel() else 0


class OpCounter(TorchDispatchMode):
    """Counts each aten op (by its packet name) and the bytes of the tensors it returns, and every
    write into a buffer that was zero-filled earlier in the call (``zero_then_write``: a fill that
    the first contribution could have replaced)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: collections.Counter = collections.Counter()
        self.bytes: collections.Counter = collections.Counter()
        self.zero_then_write: collections.Counter = collections.Counter()  # op name -> writes into zeroed buffers
        self._zeroed: set[int] = set()  # storages zero-filled and not reallocated since

    def _track(self, func, name: str, args, kwargs, out) -> None:
        value = args[1] if len(args) > 1 else kwargs.get("value", kwargs.get("fill_value"))
        zero_fill = name in _ZERO_MAKERS or name == "zero_" or (name in _VALUE_FILLS and value == 0)
        target = kwargs.get("out") if "out" in kwargs else (args[0] if name.endswith("_") and args else None)
        if target is not None:  # an in-place or out= write
            ptr = _storage(target)
            if zero_fill:
                self._zeroed.add(ptr)
            elif ptr in self._zeroed:
                self.zero_then_write[name] += 1
            return
        for t in out if isinstance(out, (tuple, list)) else (out,):
            ptr = _storage(t)
            if ptr and not func.is_view:  # a fresh allocation: whatever was zeroed there is gone
                self._zeroed.discard(ptr)
                if zero_fill:
                    self._zeroed.add(ptr)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        self._track(func, name, args, kwargs, out)
        if (func.is_view or name in _NO_WRITE or name in ("send", "recv_", "recv") or name.startswith("c10d")
                or "scaled_dot_product" in name):
            return out
        self.calls[name] += 1
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.bytes[name] += sum(t.numel() * t.element_size() for t in outs if isinstance(t, torch.Tensor))
        return out


def count_task(ctx, payload: dict) -> dict:
    """Rank task: one warm-up fwd+bwd of the variant, then one counted; ops and bytes by op name."""
    variant, problem = payload["variant"], payload["problem"]
    lay = variant.layout(problem, ctx.world_size)
    ctx.layout = lay
    q, k, v = (payload["inputs"][n] for n in ("q", "k", "v"))
    do = take(payload["grad_out"], lay.q[ctx.rank], 2)
    fn = variant.build_rank(problem, ctx)
    counter = None
    for counted in (False, True):
        shards = [take(t, segs[ctx.rank], 2).requires_grad_(True) for t, segs in ((q, lay.q), (k, lay.kv), (v, lay.kv))]
        counter = OpCounter() if counted else None
        with counter if counted else _null():
            out, _ = fn(*shards)
            out.backward(do)
    return {"calls": dict(counter.calls), "bytes": dict(counter.bytes),
            "zero_then_write": dict(counter.zero_then_write)}


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_ops(pool: RankPool, problem: Problem, sharding: str = "ring-zigzag", fused: bool = True) -> list[dict]:
    """Per rank, one fwd+bwd of ``sharding`` on the pool's ranks:
    {'calls': {op: n}, 'bytes': {op: bytes written}, 'zero_then_write': {op: writes into zero-filled buffers}}."""
    variant = type(registry.get(sharding))(fused=fused)
    q, k, v, _ = kernel_inputs(problem)
    g = torch.Generator().manual_seed(1)
    grad_out = torch.randn(problem.batch, problem.hq, problem.lq, problem.dv, generator=g).to(q.dtype)
    payload = {"variant": variant, "problem": problem, "inputs": {"q": q, "k": k, "v": v}, "grad_out": grad_out}
    return pool.run(count_task, payload, f"op count of {variant.name} on {problem.id}")


def family_totals(rank_counts: dict) -> dict:
    """{family: (calls, bytes)} for the fill / copy / add families."""
    out = {}
    for fam, names in FAMILIES.items():
        out[fam] = (sum(rank_counts["calls"].get(n, 0) for n in names),
                    sum(rank_counts["bytes"].get(n, 0) for n in names))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--P", type=int, default=2)
    ap.add_argument("--sharding", default="ring-zigzag", choices=("ring", "ring-zigzag"))
    ap.add_argument("--math", action="store_true", help="plain-math pairs (fused=False)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--L", type=int, default=64)
    ap.add_argument("--json", help="write the counts here (atomically)")
    args = ap.parse_args(argv)
    registry.load_builtin()
    problem = Problem(batch=1, lq=args.L, lk=args.L, hq=4, hkv=4, dqk=16, dv=16, mask=Mask("causal"),
                      dtype=args.dtype)
    with RankPool(args.P, "cpu", timeout_s=60.0) as pool:
        counts = count_ops(pool, problem, args.sharding, fused=not args.math)
    for rank, c in enumerate(counts):
        print(f"rank {rank}: {args.sharding}{'[math]' if args.math else ''} P={args.P} {problem.id}")
        print(f"  writes into zero-filled buffers: {c['zero_then_write'] or 'none'}")
        print(f"  all ops: {sum(c['calls'].values()):4d} calls {sum(c['bytes'].values()) / 2**20:9.3f} MiB written")
        for fam, (n, b) in family_totals(c).items():
            print(f"  {fam:>5}: {n:4d} calls {b / 2**20:9.3f} MiB")
        for name in sorted(c["calls"], key=lambda n: -c["bytes"][n]):
            print(f"    {name:<24} {c['calls'][name]:4d} {c['bytes'][name] / 2**20:9.3f} MiB")
    if args.json:
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(args.json)) or ".")
        with os.fdopen(fd, "w") as f:
            json.dump(counts, f, indent=1)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
