"""Experiment check: a candidate MLA kernel file against float64 attention, on the CPU under Triton's
interpreter, on the shapes of test_correctness/test_triton.py's MLA core test (tiles starting at other
query positions, causal and not, even and padded head dims, both SPLITs).

    TRITON_INTERPRET=1 .venv/bin/python scripts/mla_cand/check_interp.py scripts/mla_cand/scratch.py

Prints one line per shape and exits 1 when any fails the suite's tolerance rule.
"""
import importlib.util
import itertools
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from attnsuite.tolerance import compare  # noqa: E402
from test_correctness.test_triton import _mla_core_reference  # noqa: E402


def main(path: str) -> int:
    spec = importlib.util.spec_from_file_location("mla_candidate", path)
    cand = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cand)
    failed = 0
    for causal, (dl, dr), split in itertools.product((True, False), ((32, 16), (24, 8)), (1, 2)):
        g = torch.Generator().manual_seed(7)
        b, h, lq, lk = 2, 3, 40, 70
        q_lat, q_pe, kv = (torch.randn(*shape, generator=g, dtype=torch.float64)
                           for shape in ((b, h, lq, dl), (b, lq, h, dr), (b, lk, dl + dr)))
        q_pe = q_pe.transpose(1, 2)
        scale = (dl + dr) ** -0.5
        args = [t.float() for t in (q_lat, q_pe, kv)]
        out = cand.mla_forward(*args, scale, causal, config=(32, 32, 4, 1, split))
        ref = _mla_core_reference(*(t.double() for t in args), scale, causal, torch.float64)
        base = _mla_core_reference(*args, scale, causal, torch.float32)
        c = compare(f"{Path(path).name} causal={causal} dl={dl} dr={dr} split={split}", out, ref, base, "float32")
        print(("ok    " if c.passed else "FAILED ") + c.describe(), flush=True)
        failed += not c.passed
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
