"""torch's process-wide state: what every case starts from, and what a variant must leave alone.

A variant that switches grad mode off, changes the default dtype, the thread count, the
deterministic or TF32 flags, or an SDPA backend switch, and does not switch it back, would make
every later case run under its settings, and the blame (and wrong baselines) would land on those
cases. So each case starts from one known state (:func:`restore`, with its RNG seeded from the case
key by :func:`seed_for`), and the state after the case is compared with it (:func:`diff`): a change
is reported against the variant that made it, then undone.
"""

from __future__ import annotations

import zlib
from typing import Any, Callable

import torch


def _set_default_device(device: torch.device) -> None:
    """Put the default device back. CPU is torch's own default: clear the setting rather than set
    "cpu", since a set default device is a function mode that adds a cost to every torch call."""
    torch.set_default_device(None if device == torch.device("cpu") else device)


# name -> (read, write). Each entry is a piece of global state a variant can change by accident.
# Not tracked: torch.set_flush_denormal. torch offers only the setter (its return value says whether
# the CPU supports the mode, not which mode was on), so there is nothing to read and compare.
_ITEMS: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = {
    "grad mode": (torch.is_grad_enabled, torch.set_grad_enabled),
    "default dtype": (torch.get_default_dtype, torch.set_default_dtype),
    # a variant that leaves "meta" (or another device) as the default moves every later tensor made
    # without a device there: the next variant would fail for it
    "default device": (torch.get_default_device, _set_default_device),
    "intra-op threads": (torch.get_num_threads, torch.set_num_threads),
    "deterministic algorithms": (
        lambda: (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()),
        lambda v: torch.use_deterministic_algorithms(v[0], warn_only=v[1]),
    ),
    "anomaly detection": (torch.is_anomaly_enabled, torch.set_anomaly_enabled),
    "float32 matmul precision": (torch.get_float32_matmul_precision, torch.set_float32_matmul_precision),
    "cuda.matmul.allow_tf32": (lambda: torch.backends.cuda.matmul.allow_tf32,
                               lambda v: setattr(torch.backends.cuda.matmul, "allow_tf32", v)),
    "cuda.matmul.allow_fp16_reduced_precision_reduction": (
        lambda: torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction,
        lambda v: setattr(torch.backends.cuda.matmul, "allow_fp16_reduced_precision_reduction", v)),
    "cuda.matmul.allow_bf16_reduced_precision_reduction": (
        lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
        lambda v: setattr(torch.backends.cuda.matmul, "allow_bf16_reduced_precision_reduction", v)),
    "cudnn.allow_tf32": (lambda: torch.backends.cudnn.allow_tf32, lambda v: setattr(torch.backends.cudnn, "allow_tf32", v)),
    "cudnn.deterministic": (lambda: torch.backends.cudnn.deterministic,
                            lambda v: setattr(torch.backends.cudnn, "deterministic", v)),
    "cudnn.benchmark": (lambda: torch.backends.cudnn.benchmark, lambda v: setattr(torch.backends.cudnn, "benchmark", v)),
    "cudnn.enabled": (lambda: torch.backends.cudnn.enabled, lambda v: setattr(torch.backends.cudnn, "enabled", v)),
    "mkldnn.enabled": (lambda: torch.backends.mkldnn.enabled, lambda v: setattr(torch.backends.mkldnn, "enabled", v)),
    "sdpa flash enabled": (torch.backends.cuda.flash_sdp_enabled, torch.backends.cuda.enable_flash_sdp),
    "sdpa mem-efficient enabled": (torch.backends.cuda.mem_efficient_sdp_enabled, torch.backends.cuda.enable_mem_efficient_sdp),
    "sdpa math enabled": (torch.backends.cuda.math_sdp_enabled, torch.backends.cuda.enable_math_sdp),
    "sdpa cuDNN enabled": (torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.enable_cudnn_sdp),
    "dynamo automatic dynamic shapes": (lambda: torch._dynamo.config.automatic_dynamic_shapes,
                                        lambda v: setattr(torch._dynamo.config, "automatic_dynamic_shapes", v)),
}


def compile_per_shape() -> None:
    """Make every ``torch.compile`` graph of this process depend on its call's own shapes only.

    By default dynamo compiles a function's second distinct shape as a dynamic-shape graph, which
    then serves every later shape, so which graph a case runs depends on which cases ran before it
    in the same process: a benchmark worker runs hundreds. torch's own uncompiled ``flex_attention``
    wraps itself in such a compile (``flex-eager``): after other shapes, its dynamic-shape graph reads
    a tensor on the host in every call (``aten::item``, a device synchronisation on CUDA), which a
    fresh process's graph does not (tests/test_torch_state_compile.py). On one H200 two of its
    cases read 5.4% and 2.1% slower in the deferred device-time pass, where other shapes had run
    before them, than in their confirmation, on all three runs of one machine (docs/gate.md); this
    is one explanation that fits, not yet confirmed on a GPU. Off, each new shape gets its own static graph,
    as in a fresh process (costing that shape's compile, about 0.3 s for ``flex-eager`` on this
    project's CPU machine). A compile that asks for ``dynamic=True`` is unaffected.
    Benchmark workers call this before they take the torch state every case starts from, so a
    variant that turns it back on is reported like any other change of that state.
    """
    torch._dynamo.config.automatic_dynamic_shapes = False


State = dict[str, Any]


def snapshot() -> State:
    """The current value of every tracked piece of global state."""
    return {name: read() for name, (read, _) in _ITEMS.items()}


def restore(state: State) -> None:
    """Set every tracked piece of global state back to ``state`` (only what differs is written)."""
    for name, value in state.items():
        read, write = _ITEMS[name]
        if read() != value:
            write(value)


def diff(before: State, after: State) -> list[str]:
    """What changed between two snapshots, one ``name: old -> new`` string per item."""
    return [f"{name}: {before[name]!r} -> {after[name]!r}" for name in before if after.get(name) != before[name]]


def seed_for(key: str) -> int:
    """The RNG seed of a case: stable across runs and processes, different per case key."""
    return zlib.crc32(key.encode("utf-8"))


def start_case(state: State, key: str) -> None:
    """Put the process in ``state`` and seed torch's RNGs (CPU and every GPU) for case ``key``."""
    restore(state)
    torch.manual_seed(seed_for(key))


def end_case(state: State) -> list[str]:
    """Compare the process with ``state``; undo and return what the case left changed."""
    changed = diff(state, snapshot())
    if changed:
        restore(state)
    return changed
