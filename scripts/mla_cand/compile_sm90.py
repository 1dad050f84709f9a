"""Compile an MLA kernel file for an H100/H200 (sm_90) on a machine without a GPU, and say what the
compiler made of it: registers, bytes spilled, shared memory, and the warp layout of each dot.

    python3 scripts/mla_cand/compile_sm90.py KERNEL_FILE [64x64x8x2[,CONFIG...]] [--out DIR]

Run it with the triton of the GPU machine (3.6 on this project's H200 image, e.g. a venv with
``pip install torch==2.13.0 triton==3.6.0``): another triton compiles another kernel. Arguments are
given the specialisations a launch at DeepSeek-V3 size gets (unit strides as the constant 1, every
other size and stride a multiple of 16, 16-byte aligned pointers), so the figures are the GPU's: for
the shipped kernel at 64x64x8x2, 255 registers, 272 bytes of stack (68 words spilled) and 216 KiB of
shared memory, as the H200 reported (docs/triton.md, session s39). Prints one JSON line per config and
writes each config's TTGIR and PTX to --out (default /tmp/mla_sm90).
"""
import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

POINTERS = {"Q": "*bf16", "QR": "*bf16", "KV": "*bf16", "O": "*bf16", "SP": "*bf16", "SA": "*fp32"}
UNIT_STRIDES = {"sqd", "srd", "skd", "sod"}


def compile_one(fn, cfg: tuple[int, ...], out: Path) -> dict:
    bm, bn, warps, stages, *split = cfg
    const = dict(BLOCK_DL=512, BLOCK_DR=64, CAUSAL=True, EVEN_D=True, DOT_F32=False, BLOCK_M=bm, BLOCK_N=bn,
                 SPLIT=split[0] if split else 1, **{n: 1 for n in UNIT_STRIDES})
    names = fn.arg_names
    sig, attrs = {}, {}
    for i, n in enumerate(names):
        if n in const:
            sig[n] = "constexpr"
        elif n in POINTERS:
            sig[n], attrs[(i,)] = POINTERS[n], [["tt.divisibility", 16]]
        elif n == "qk_scale":
            sig[n] = "fp32"
        else:
            sig[n] = "i32"
            if n != "BATCH":
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=fn, signature=sig, constexprs={(names.index(k),): v for k, v in const.items() if k in names},
                    attrs=attrs)
    name = "x".join(map(str, cfg))
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=warps, num_stages=stages))
    (out / f"{name}.ttgir").write_text(k.asm["ttgir"])
    (out / f"{name}.ptx").write_text(k.asm["ptx"])
    (out / f"{name}.cubin").write_bytes(k.asm["cubin"])
    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    usage = subprocess.run([str(tool), "-res-usage", str(out / f"{name}.cubin")], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    layouts = sorted(set(re.findall(r"nvidia_mma<\{[^}]*warpsPerCTA = \[(\d+), (\d+)\], instrShape = \[([\d, ]+)\]",
                                    k.asm["ttgir"])))
    return {"config": name, "registers": int(regs.group(1)) if regs else None,
            "stack_bytes": int(stack.group(1)) if stack else None, "shared": k.metadata.shared,
            "mma_layouts": [f"warps [{a}, {b}] instr [{c}]" for a, b, c in layouts]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernel_file")
    ap.add_argument("configs", nargs="?", default="64x64x8x2")
    ap.add_argument("--out", default="/tmp/mla_sm90")
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    spec = importlib.util.spec_from_file_location("mla_candidate", args.kernel_file)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    fn = mod.mla_fwd
    while not isinstance(fn, triton.runtime.jit.JITFunction):  # under the suite's autotuner wrapper
        fn = fn.fn
    print(json.dumps({"triton": triton.__version__, "kernel": args.kernel_file}), flush=True)
    for c in args.configs.split(","):
        cfg = tuple(int(x) for x in c.split("x"))
        try:
            row = compile_one(fn, cfg, out)
        except Exception as exc:  # a config that does not compile is reported, the others still run
            row = {"config": c, "error": f"{type(exc).__name__}: {str(exc)[:300]}"}
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
