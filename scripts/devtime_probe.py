"""Why graph device time can read above the event-timed median (docs/gate.md, third H200 session).

On a 2-GPU H200 host, graph replay read more than 3% above the event timer in 106 of 386 full-tier
cases, nearly all memory-bound steps of 10 ms or more (explicit, einsum: +5.4%). This probe times a
few such steps, each several ways in one process, and logs the SM clock and power around each:

- ``event``      the suite's event timer (L2 flushed before each sample: idle gaps between calls);
- ``event-b2b``  the event timer with no flush: calls back to back;
- ``graph``      the suite's device time (graph replays back to back, a guard kernel before each);
- ``graph-idle`` the same graph replays with 50 ms of host sleep (an idle GPU) before each;
- ``kernel-sum`` the profiler's sum of the step's kernel durations (eager launches);
and the step's device time by kernel, eager and replayed from a graph (which kernels differ).

Seen on 2026-11-30 (2 H200s, commit 16be3e4): graph +6.5% over event for explicit and einsum at
16K (35 ms), graph-idle the same, event back to back the same as event, SM clock 1980 MHz
throughout: not the clock, not idle gaps. sdpa-flash at 16K: graph +1.4%, graph-idle +2.2%.

If ``graph-idle`` agrees with ``event`` and ``graph`` with ``event-b2b``, the difference is the GPU
under sustained load (clocks or power), not the measuring method. Writes JSON lines to --out.
Usage (on the GPU machine): python3 scripts/devtime_probe.py --out $OUT/devtime_probe.jsonl

``--cases decode`` asks another question, of issue 9's host-bound bound: the ~40-54 us decode steps
(B 8, 1 query against 4096 cached keys, GQA 32:8: a 134 MB KV cache, larger than the L2) whose
graph device time fell into two groups of fresh H200 machines, 8% apart, differently per variant
(docs/evidence/h200-2026-12-01-s14). Beside ``graph`` and ``kernel-sum`` it times
``kernel-sum-cold``: the profiler's kernel durations with the L2 overwritten before each call. If
the cold figure agrees across machines where ``graph`` does not, what is left in L2 from the
previous call is what differs, and cold device time is the measure to gate such steps by. It also
re-allocates each step's inputs ``--placements`` times, behind a pad of a different size each time
(other physical addresses), and times ``graph`` and ``kernel-sum-cold`` for each: if one machine's
spread over placements is as wide as the spread between machines, where the cache lands in memory
is what differs, not the GPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from attnsuite import registry, timing  # noqa: E402
from attnsuite.case import prepare  # noqa: E402
from attnsuite.problem import Mask, Problem  # noqa: E402

CASES = [  # (variant, problem): the long memory-bound steps that read high, and a compute-bound control
    ("explicit", Problem(batch=1, lq=16384, lk=16384, hq=16, hkv=16, dqk=64, dv=64, mask=Mask("causal"),
                         dtype="bfloat16", device="cuda")),
    ("einsum", Problem(batch=1, lq=16384, lk=16384, hq=16, hkv=16, dqk=128, dv=128, mask=Mask("causal"),
                       dtype="bfloat16", device="cuda")),
    ("sdpa-flash", Problem(batch=1, lq=16384, lk=16384, hq=16, hkv=16, dqk=128, dv=128, mask=Mask("causal"),
                           dtype="bfloat16", device="cuda")),
]

DECODE = Mask("causal", align="bottom_right")
DECODE_CASES = [(name, Problem(batch=8, lq=1, lk=4096, hq=32, hkv=8, dqk=128, dv=128, mask=DECODE,
                               dtype="bfloat16", device="cuda"))
                for name in ("triton-decode", "flex", "sdpa", "kvcache-sdpa", "einsum")]


def gpu_state() -> dict:
    """SM clock (MHz) and power (W) of GPU 0 as nvidia-smi reads them now."""
    try:
        line = subprocess.run(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                               "-i", "0"], capture_output=True, text=True, timeout=10).stdout.strip()
        clock, power = (float(x) for x in line.split(","))
        return {"sm_mhz": clock, "power_w": power}
    except Exception as exc:  # the probe's numbers stand without it
        return {"error": str(exc)}


def graph_idle(fn, replays: int = 8, idle_s: float = 0.05) -> list[float]:
    """Seconds per call of one-call graph replays, each after ``idle_s`` of host sleep (an idle GPU)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    out = []
    for _ in range(replays):
        time.sleep(idle_s)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        out.append(start.elapsed_time(end) / 1e3)
    graph.reset()
    return out


def captured(fn) -> "torch.cuda.CUDAGraph":
    """``fn`` captured into a CUDA graph (warmed on the capture stream first)."""
    graph, stream = torch.cuda.CUDAGraph(), torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return graph


def placements(name: str, problem: Problem, count: int) -> list[dict]:
    """Graph and cold kernel-sum medians (ms) of the step with its inputs re-allocated ``count`` times,
    each behind a pad of another size, so the KV cache lands on other physical pages."""
    rows = []
    for i in range(count):
        pad = torch.empty((i * 37 + 3) * 2**20, dtype=torch.uint8, device="cuda")
        case = prepare(registry.get(name), problem, requires_grad=False)

        def fwd():
            with torch.no_grad():
                return case.forward()
        graph = timing.device_time(fwd, "cuda").samples_s
        cold = timing.device_time(fwd, "cuda", setup=lambda: timing.flush_l2("cuda"), allow_graph=False).samples_s
        rows.append({"pad_mib": pad.numel() // 2**20, "graph_ms": statistics.median(graph) * 1e3,
                     "cold_ms": statistics.median(cold) * 1e3})
        case = pad = None
        torch.cuda.empty_cache()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", choices=("long", "decode"), default="long",
                    help="long: the memory-bound 16K steps (default); decode: the 134 MB KV-cache decode steps")
    ap.add_argument("--placements", type=int, default=4,
                    help="decode only: input allocations per step, each behind another pad size (default 4)")
    args = ap.parse_args()
    registry.load_all()
    decode = args.cases == "decode"
    with open(args.out, "w") as fh:
        for name, problem in (DECODE_CASES if decode else CASES):
            case = prepare(registry.get(name), problem, requires_grad=False)

            def fwd():
                with torch.no_grad():
                    return case.forward()
            row = {"variant": name, "problem": problem.id}
            ways = [
                ("event", lambda: timing.measure(fwd, "cuda", timing.FULL_GPU).samples_s),
                ("event-b2b", lambda: timing.measure(fwd, "cuda", dataclasses.replace(timing.FULL_GPU, flush_l2=False)).samples_s),
                ("graph", lambda: timing.device_time(fwd, "cuda").samples_s),
                ("graph-idle", lambda: graph_idle(fwd)),
                ("kernel-sum", lambda: timing.device_time(fwd, "cuda", allow_graph=False).samples_s),
            ]
            if decode:
                ways.append(("kernel-sum-cold", lambda: timing.device_time(
                    fwd, "cuda", setup=lambda: timing.flush_l2("cuda"), allow_graph=False).samples_s))
            for label, run in ways:
                before = gpu_state()
                samples = run()
                row[label] = {"median_ms": statistics.median(samples) * 1e3, "n": len(samples),
                              "before": before, "after": gpu_state()}
            base = row["event"]["median_ms"]
            row["vs_event"] = {k: row[k]["median_ms"] / base - 1 for k, _ in ways if k != "event"}
            # which kernels take longer when replayed from a graph than when launched one by one
            row["kernels_eager"] = timing.profile_step(fwd, "cuda", top=8)
            row["kernels_graph"] = timing.profile_step(captured(fwd).replay, "cuda", top=8)
            print(json.dumps({"variant": name, "problem": problem.id, "event_ms": round(base, 4),
                              **{k: f"{v:+.2%}" for k, v in row["vs_event"].items()}}), flush=True)
            if decode:
                row["placements"] = placements(name, problem, args.placements)
                print(json.dumps({"variant": name, "placements": row["placements"]}), flush=True)
            fh.write(json.dumps(row) + "\n")
            case = None
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
