"""Misbehaving variants: what kernel authors' code does on a bad day, for trying the suite's isolation.

Each runs in its own worker process under the suite, so each failure is that case's outcome and
the run goes on (docs/isolation.md): ``h-segfault`` reads address 0 (crash, SIGSEGV), ``h-abort``
aborts (crash, SIGABRT), ``h-exit`` calls ``os._exit(1)`` (error, naming its line; the worker lives on), ``h-sysexit`` calls
``sys.exit(0)`` (error, named; in the correctness tests both exits fail their test), ``h-hang`` sleeps
for an hour (timeout), ``h-device-assert`` reads past the end of a tensor (on CUDA a device-side
assert that leaves the process's CUDA context unusable; on the CPU a plain IndexError), ``h-state`` switches torch's default dtype to float64 and leaves it (error,
named), ``h-victim`` is correct but would fail under that leaked dtype (it must pass), and
``h-slow`` is correct and slow. ``h-leak`` is correct and keeps 4 MiB more after every call
(error: memory held call after call), while ``h-keep-once`` keeps 4 MiB from its first call only and
``h-small-leak`` 256 KiB a call (both ok: below what the suite calls a leak, runner.HELD_MIN_BYTES).
``tests/test_isolation.py`` runs them:

    pytest bench --benchmark-only --attn-variants examples/hostile/misbehaving.py --attn-timeout 5 \
        --attn-only h-segfault --attn-only h-abort --attn-only h-hang --attn-only h-state \
        --attn-only h-victim --attn-only explicit --attn-mode fwd --attn-gate off
"""
import ctypes, os, sys, time
import torch
from attnsuite import mask_mods
from attnsuite.registry import KernelVariant, register

MASKS = frozenset({"none", "causal"})


def plain(problem):
    allowed = mask_mods.dense_bool_mask(problem)

    def run(q, k, v):
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, 1), v.repeat_interleave(group, 1)
        s = q @ k.transpose(-1, -2) * problem.softmax_scale
        if allowed is not None:
            s = s.masked_fill(~allowed, float("-inf"))
        return torch.softmax(s, -1) @ v
    return run


class Base(KernelVariant):
    masks = MASKS
    features = frozenset({"gqa", "lq_ne_lk"})


@register
class Segfault(Base):
    name = "h-segfault"
    def build(self, problem):
        return lambda q, k, v: ctypes.string_at(0)


@register
class Abort(Base):
    name = "h-abort"
    def build(self, problem):
        return lambda q, k, v: os.abort()


@register
class Exit(Base):
    name = "h-exit"
    def build(self, problem):
        return lambda q, k, v: os._exit(1)


@register
class SysExit(Base):
    name = "h-sysexit"
    def build(self, problem):
        return lambda q, k, v: sys.exit(0)


@register
class Hang(Base):
    name = "h-hang"
    def build(self, problem):
        def run(q, k, v):
            time.sleep(3600)
        return run


@register
class GilHang(Base):
    name = "h-gil-hang"
    def build(self, problem):
        def run(q, k, v):
            # libc's sleep through PyDLL, which keeps the GIL: no other thread of the process runs,
            # as in a kernel hung in C code that holds it (a .item() on a CUDA stream that never ends)
            ctypes.PyDLL(None).sleep(3600)
        return run


@register
class DeviceAssert(Base):
    name = "h-device-assert"
    def build(self, problem):
        def run(q, k, v):
            past_the_end = torch.full((1,), q.shape[-2] + 1_000_000, device=q.device)
            return q.index_select(-2, past_the_end)
        return run


@register
class StateChanger(Base):
    name = "h-state"
    def build(self, problem):
        torch.set_default_dtype(torch.float64)  # and never puts it back
        return plain(problem)


@register
class DtypeSensitive(Base):
    name = "h-victim"
    def build(self, problem):
        inner = plain(problem)

        def run(q, k, v):
            return inner(q, k, v) * torch.ones(())  # float64 under a leaked default dtype: a contract failure
        return run


@register
class Slow(Base):
    name = "h-slow"
    def build(self, problem):
        inner = plain(problem)

        def run(q, k, v):
            time.sleep(0.05)
            return inner(q, k, v)
        return run


KEPT = []  # what h-leak and h-small-leak keep: a module-level list that grows with every call


def keeper(problem, nbytes, every_call):
    inner = plain(problem)

    def run(q, k, v):
        if every_call or not KEPT:
            KEPT.append(torch.empty(nbytes // 4, dtype=torch.float32, device=q.device))
        return inner(q, k, v)
    return run


@register
class Leak(Base):
    name = "h-leak"
    def build(self, problem):
        return keeper(problem, 4 << 20, every_call=True)


@register
class SmallLeak(Base):
    name = "h-small-leak"
    def build(self, problem):
        return keeper(problem, 256 << 10, every_call=True)


@register
class KeepOnce(Base):
    name = "h-keep-once"
    def build(self, problem):
        KEPT.clear()  # its own first call keeps one block, as a workspace cache would
        return keeper(problem, 4 << 20, every_call=False)
