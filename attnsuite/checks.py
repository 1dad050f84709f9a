"""The correctness checks (README, "Correctness: what is checked"), for any registered variant of any family.

Each check runs a variant on a problem and returns a :class:`CheckResult`: passed or not, and a
message that names the variant, the problem, the check and how far off it is. The checks never
raise for a misbehaving variant: an exception inside the variant becomes a failed result with the
exception text, so one broken variant cannot stop the run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import traceback
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch

from . import oracle_mask, registry
from .case import Case, prepare
from .exits import OsExitCalled, os_exit_raises
from .frames import own_frames
from .inputs import torch_dtype
from .memory import poison_free_memory
from .problem import LARGE_LOGITS, Problem
from .registry import Variant
from .tolerance import UNWRITTEN, Comparison, as_float64, compare, compare_as, compare_within_values
from .wording import exception_text


@dataclass
class CheckResult:
    """Outcome of one check of one variant on one problem."""

    check: str
    variant: str
    problem: str
    passed: bool
    details: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # reported facts that are not failures

    @property
    def message(self) -> str:
        head = f"{self.variant} on {self.problem}: {self.check} {'passed' if self.passed else 'FAILED'}"
        return "\n  ".join([head, *self.details, *self.notes])


@lru_cache(maxsize=256)
def reference(family_name: str, problem: Problem):
    """Float64 oracle output and gradients (cached per family and problem)."""
    return registry.family(family_name).reference(problem)


@contextlib.contextmanager
def full_fp32() -> Iterator[None]:
    """TF32 off inside (put back after): the base is plain math in the problem's dtype, and one computed
    with TF32 (a session that switched it on) is ~1e-3 of |ref| max from the oracle in fp32, at
    tolerance.BASE_LIMIT, where it had loosened the bound before that limit existed."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
        torch.set_float32_matmul_precision(precision)  # last: allow_tf32 = True had set "high"


@lru_cache(maxsize=256)
def base(family_name: str, problem: Problem):
    """Plain math in the problem's dtype (cached), TF32 off: the noise level of the tolerance rule."""
    with full_fp32():
        return registry.family(family_name).base(problem)


def references_first(family_name: str, *problems: Problem) -> None:
    """Compute (and cache) the oracle and base of ``problems`` now, before a check calls the variant:
    the base is torch math, and a variant that changes torch's global state (a replaced softmax) had
    computed it for every later check of the problem in the process, a base then far from the oracle."""
    for problem in problems:
        reference(family_name, problem)
        base(family_name, problem)


def live_rows(problem: Problem) -> Optional[np.ndarray]:
    """Boolean mask of query rows that attend to at least one key, or None when all do."""
    rows = oracle_mask.allowed(problem).any(axis=1)
    return None if rows.all() else rows


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equality of two runs' results: same shape and dtype, NaN where the other has NaN (a fully
    masked row may legitimately hold NaN), every other element equal, infinities included.

    +0 and -0 count as equal: a masked key's exact-zero weight times a value whose sign changed
    (the causality check's perturbation) is a zero of the other sign, no leak. A result in
    another dtype, or an infinity where the other run has the dtype's largest finite value, is
    not the same (both had passed: ``nan_to_num`` turned infinities into that value).
    """
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    nan_a, nan_b = torch.isnan(a), torch.isnan(b)
    return torch.equal(nan_a, nan_b) and torch.equal(a.masked_fill(nan_a, 0), b.masked_fill(nan_b, 0))


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc`` and the exceptions it was raised from or while handling, outermost first."""
    chain: list[BaseException] = []
    current: Optional[BaseException] = exc
    while current is not None and all(current is not seen for seen in chain):
        chain.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return chain


def traceback_text(exc: BaseException, tail: int = 3) -> str:
    """The traceback's last ``tail`` frames, and before them the last frame of the variant's own code
    when those are all library frames: an error raised deep inside Triton's interpreter had shown only
    Triton's frames, never the line of the kernel that caused it. The interpreter re-raises a kernel's
    error as ``InterpreterError(...) from e``: the kernel's own line is then in the cause's frames,
    and is shown first (with the launch line of the error's own frames after it)."""
    frames = traceback.extract_tb(exc.__traceback__)
    shown = list(frames[-tail:])
    own = own_frames(exc)
    # the innermost cause's own frame (a kernel's line under an interpreter that re-raised its error)
    deeper = next((o[-1] for o in (own_frames(c) for c in reversed(_causes(exc)[1:])) if o), None)
    lead = [f for f in (deeper, own[-1] if own else None) if f is not None and f not in shown]
    prepended = bool(lead)
    if prepended:
        shown = lead + shown
    # the header says what is shown: it had promised the variant's frame first where that frame was
    # simply among the innermost ones, after the suite's
    lines = ["Traceback (the variant's last own frame, then the innermost frames):\n" if prepended
             else f"Traceback (the innermost {len(shown)} frames, the last where it was raised):\n"]
    lines += traceback.format_list(shown) + traceback.format_exception_only(type(exc), exc)
    return "".join(lines).strip()


def _again(result: CheckResult, what: str, call: Callable[[], Any]) -> Any:
    """``call``, the second of two identical calls whose first returned: when it raises, the failure
    says so before the exception (:func:`_guarded` adds it), which alone had not told that the first
    call of the same inputs had worked."""
    try:
        return call()
    except Exception:
        result.details.append(f"the second of two identical {what} calls raised where the first had returned: "
                              "the variant depends on earlier calls (state kept between calls; a variant with "
                              "state declares reset())")
        raise


def _guarded(check: str, variant: Variant, problem: Problem, body: Callable[[CheckResult], None]) -> CheckResult:
    result = CheckResult(check, variant.name, problem.id, True)
    try:
        body(result)
    except Exception as exc:  # the variant raised: a failure of this check, not of the run
        result.passed = False
        result.details.append(f"raised {exception_text(exc)}")
        result.details.append(traceback_text(exc).replace("\n", "\n  "))
    return result


def _add(result: CheckResult, comparisons: list[Comparison]) -> None:
    for c in comparisons:
        if not c.passed:
            result.passed = False
            result.details.append(c.describe())


def _contract(result: CheckResult, variant: Variant, problem: Problem, out, ref_out) -> bool:
    """Shape, dtype and device of the output against the contract; False when broken."""
    ok = True
    if not isinstance(out, torch.Tensor):
        result.details.append(f"returned {type(out).__name__}, not a tensor")
        result.passed = False
        return False
    if tuple(out.shape) != tuple(np.shape(ref_out)):
        result.details.append(f"output shape {tuple(out.shape)} != expected {tuple(np.shape(ref_out))}")
        ok = False
    if out.dtype != torch_dtype(problem.dtype):
        result.details.append(f"output dtype {out.dtype} != problem dtype {torch_dtype(problem.dtype)} (silent cast)")
        ok = False
    if out.device.type != problem.device.split(":")[0]:
        result.details.append(f"output on {out.device}, problem on {problem.device}")
        ok = False
    result.passed = result.passed and ok
    return ok


def check_forward(variant: Variant, problem: Problem, cache: Optional[dict] = None) -> CheckResult:
    """Output contract (shape, dtype, device, every element written, no zero head) and value vs oracle."""

    def body(result: CheckResult) -> None:
        ref_out, _ = reference(variant.family, problem)
        base_out, _ = base(variant.family, problem)
        poison_free_memory(int(np.prod(np.shape(ref_out))) * 8, problem.device)
        case = prepare(variant, problem, requires_grad=False, cache=cache)
        before = {name: t.detach().clone() for name, t in case.inputs.items()}
        with torch.no_grad():
            out = case.forward()
        _inputs_unchanged(result, before, case.inputs)
        if not _contract(result, variant, problem, out, ref_out):
            return
        rows = live_rows(problem) if problem.level == "kernel" else None
        _add(result, [_output_comparison(variant, problem, out, case.inputs.get("v"), ref_out, base_out, rows)])
        if variant.accuracy != "exact" and problem.tag == LARGE_LOGITS:
            return
        _zero_heads(result, out, ref_out, rows)
        note = fully_masked_report(out, rows) if rows is not None else ""
        if note:
            result.notes.append(note)

    return _guarded("forward", variant, problem, body)


def _output_comparison(variant: Variant, problem: Problem, out: torch.Tensor, v: Optional[torch.Tensor], ref_out, base_out,
                       rows: Optional[np.ndarray]) -> Comparison:
    """An output against the oracle by the variant's declared accuracy class: exact (compare) or its
    budget. At large logits an approximate class's budget (measured at ordinary logits) does not apply:
    the output is held to what any softmax average gives, finite and inside the values' range
    (tolerance.compare_within_values)."""
    if variant.accuracy != "exact" and problem.tag == LARGE_LOGITS:
        return compare_within_values(variant.accuracy, "output", out, v, problem.hq, rows)
    return compare_as(variant.accuracy, "output", out, ref_out, base_out, problem.dtype, "output", rows)


def _inputs_unchanged(result: CheckResult, before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> None:
    """Fail, naming each input, when the call wrote into the caller's tensors.

    A kernel that rescales or recentres an input in place (SageAttention 1.0.6 subtracts the keys'
    mean from ``k`` itself) can still return the right output, since softmax ignores a shift common
    to all keys, so only a comparison of the inputs shows it; the caller's next use of them is wrong.
    """
    for name, old in before.items():
        new = after[name].detach()
        if same_bits(old, new):
            continue
        diff = (new.double() - old.double()).abs().nan_to_num()
        result.passed = False
        result.details.append(f"the call changed its input {name} in place: {int((diff > 0).sum())} of "
                              f"{diff.numel()} elements differ (max {float(diff.max()):.3g}); the caller's "
                              "tensors are not the variant's to write")


def _zero_heads(result: CheckResult, out: torch.Tensor, ref_out, rows) -> None:
    """Name any (batch, head) whose output is exactly zero where the oracle's is not."""
    if out.dim() != 4:
        return
    o = out.detach().to("cpu", torch.float64).numpy()
    r = np.asarray(ref_out)
    if rows is not None:
        o, r = o[..., rows, :], r[..., rows, :]
    zero = (np.abs(o).sum(axis=(2, 3)) == 0) & (np.abs(r).sum(axis=(2, 3)) > 0)
    for b, h in np.argwhere(zero):
        result.passed = False
        result.details.append(f"head {h} of batch {b} is all zeros (the oracle's is not)")


def fully_masked_report(out: torch.Tensor, rows: np.ndarray) -> str:
    """Say what the variant put in query rows that may attend to nothing, or "" when it put zeros
    there: the oracle's own convention needs no word (every run of a correct variant had warned)."""
    dead = out.detach().to("cpu", torch.float64).numpy()[..., ~rows, :]
    n = int((~rows).sum())
    if n == 0 or (dead == 0).all():
        return ""
    if np.isnan(dead).all():
        what = "NaN"
    else:
        what = f"other values (max |x| {np.nanmax(np.abs(dead)):.3g})"
    return f"reported: {n} fully masked query rows come out as {what} (not compared: no softmax exists there)"


# Said when a backward fails on a problem with query rows that may attend to nothing.
DEAD_ROW_GRADIENTS = (
    "the problem has {n} fully masked query rows: the float64 oracle gives them zero output and zero "
    "gradient (dq there is 0 and they add nothing to dk/dv); NaN here usually means the forward wrote NaN "
    "in those rows (softmax over only -inf), which poisons the gradients of every key"
)


# Said when a canonical parameter's name is not among the keys a layer variant's canonical_grads returns
# (a kernel variant's gradients always hold every input's name).
CANONICAL_KEY_ABSENT = ("the variant's canonical_grads returns no {name!r} key (it must map every canonical "
                        "parameter, also one the module keeps under another name or fused with others)")


def compare_gradients(accuracy: str, grads: dict, ref_grads: dict, base_grads: dict,
                      dtype: str) -> tuple[list[Comparison], list[str]]:
    """Each of the oracle's gradients against the variant's, by the rule for ``accuracy`` (the
    floor at the scale of the largest reference gradient: an analytically zero gradient still
    carries rounding noise at its siblings' scale). Returns the comparisons and what could not be
    compared (a gradient missing or of another shape). The correctness suite's backward check and
    the benchmarks' numerics check both judge by this."""
    magnitude = max((float(np.max(np.abs(r))) for r in ref_grads.values() if np.size(r)), default=0.0)
    comps, broken = [], []
    for name, ref in ref_grads.items():
        got = grads.get(name)
        if name not in grads:
            # an absent key is the layout map's omission, not a detached tensor: it had read "missing (None):
            # the input or parameter is detached" for a canonical_grads that left the biases out
            broken.append(f"grad {name}: not returned: {CANONICAL_KEY_ABSENT.format(name=name)}")
        elif got is None:
            # "detached" alone had misled for a bias held but never added to the output
            broken.append(f"grad {name}: missing (None): no gradient reached it: the output does not use it, or it "
                          "is detached")
        elif tuple(got.shape) != tuple(np.shape(ref)):
            broken.append(f"grad {name}: shape {tuple(got.shape)} != {tuple(np.shape(ref))}")
        else:
            comps.append(compare_as(accuracy, f"grad {name}", got, ref, base_grads[name], dtype, "grad",
                                    magnitude=magnitude))
    return comps, broken


def check_backward(variant: Variant, problem: Problem, cache: Optional[dict] = None) -> CheckResult:
    """Every input and parameter gets a finite gradient, within tolerance of the oracle's.

    Problems with fully masked query rows are checked too: the oracle's convention (zero
    gradient from those rows) is what a training step needs, since one NaN there spreads to
    every key's gradient.

    The training path is held to what the forward check holds the inference path to (an outside
    tester's trials, each passed by every check before): the output computed with inputs that
    require grad is judged against the oracle (a kernel whose "save for backward" path used a wrong
    scale had read as a failure of strided inputs only), and neither the forward nor the backward may
    write into the inputs or into the output gradient the caller passed (a backward that halved it in
    place, or doubled ``v``, had passed every check and broken the caller's next use of them).
    """

    def body(result: CheckResult) -> None:
        ref_out, ref_grads = reference(variant.family, problem)
        base_out, base_grads = base(variant.family, problem)
        case = prepare(variant, problem, requires_grad=True, cache=cache)
        before = {name: t.detach().clone() for name, t in case.inputs.items()}
        grad_out = case.grad_out.detach().clone() if isinstance(case.grad_out, torch.Tensor) else None
        with torch.enable_grad():
            out = case.forward()
            broken = case.output_problem(out)
            if broken:
                result.passed = False
                result.details.append(broken)
                return
            if not out.requires_grad:
                result.passed = False
                result.details.append("output does not require grad: the graph is detached from every input (a "
                                      "forward-only variant declares backward_devices = frozenset(), or the devices "
                                      "it has a backward on, and its backward checks are skipped saying so)")
                return
            case.backward(out)
        rows = live_rows(problem) if problem.level == "kernel" else None
        trained = _output_comparison(variant, problem, out.detach(), before.get("v"), ref_out, base_out, rows)
        _add(result, [dataclasses.replace(trained, what=f"{trained.what} (inputs requiring grad)")])
        _inputs_unchanged(result, before, case.inputs)
        if grad_out is not None and not same_bits(grad_out, case.grad_out.detach()):
            result.passed = False
            result.details.append("the backward changed the output gradient it was given in place: the caller's "
                                  "tensor is not the variant's to write (a residual connection or a second loss "
                                  "term reads it after)")
        comps, broken = compare_gradients(variant.accuracy, case.grads(), ref_grads, base_grads, problem.dtype)
        if broken:
            result.passed = False
            result.details.extend(broken)
        _add(result, comps)
        if rows is not None and not result.passed:
            result.details.append(DEAD_ROW_GRADIENTS.format(n=int((~rows).sum())))

    return _guarded("backward", variant, problem, body)


def backward_bitwise(variant: Variant, problem: Problem) -> bool:
    """Are two identical backward calls of ``variant`` on ``problem``'s device held to the same bits?"""
    return variant.deterministic and problem.device.split(":")[0] not in variant.nondeterministic_backward_devices


def _gradients_once(variant: Variant, problem: Problem, cache: Optional[dict]) -> dict:
    """One forward and backward of a freshly prepared case: its gradients, copied."""
    case = prepare(variant, problem, requires_grad=True, cache=cache)
    with torch.enable_grad():
        case.backward(case.forward())
    return {name: (None if g is None else g.detach().clone()) for name, g in case.grads().items()}


def _judge_calls(variant: Variant, problem: Problem, first: dict, second: dict) -> list:
    """Both calls' gradients judged against the oracle by the suite's rule: [(comparisons, broken)] in call order."""
    _, ref_grads = reference(variant.family, problem)
    _, base_grads = base(variant.family, problem)
    return [compare_gradients(variant.accuracy, grads, ref_grads, base_grads, problem.dtype) for grads in (first, second)]


def _why_calls_differ(variant: Variant, problem: Problem, first: dict, second: dict) -> str:
    """Why two identical backward calls of a variant declared deterministic gave other bits, told apart
    by the oracle (the suite's rule): a varying order of additions keeps both calls within its
    tolerance; state kept between calls (a buffer not cleared) makes a later call wrong, which declaring
    the device nondeterministic would not fix (an outside tester's trial)."""
    device = problem.device.split(":")[0]
    judged = _judge_calls(variant, problem, first, second)
    wrong = [[c.describe() for c in comps if not c.passed] + list(broken) for comps, broken in judged]
    state = ("the backward depends on earlier calls (state kept between calls, e.g. gradients added into a "
             "buffer it never clears; a variant with state declares reset())")
    if not wrong[0] and wrong[1]:
        return f"the second call's gradients are wrong where the first call's are right: {state}: {'; '.join(wrong[1])}"
    if wrong[0]:
        # not "both within tolerance": in the correctness suite the backward check's call on this case
        # comes first, so a first call of this check that is wrong had followed a right one
        return (f"the first of the two calls is already wrong ({'; '.join(wrong[0])}): where the backward check "
                f"passes on this problem (its call comes before this check's), {state}; where it fails too, "
                "it says why")
    return (f"both calls are within the oracle's tolerance: the variant declares its backward deterministic on "
            f"{device}; a backward that adds up gradients in a varying order (atomics) declares "
            f"nondeterministic_backward_devices = frozenset({{{device!r}}})")


def check_backward_repeat(variant: Variant, problem: Problem, cache: Optional[dict] = None) -> CheckResult:
    """Two identical forward-and-backward calls give the same gradients: bit for bit where the variant
    declares its backward deterministic on the problem's device (:func:`backward_bitwise`), otherwise
    each within the oracle's tolerance (the backward check judges one call; state a backward keeps
    between calls, such as gradients added into a buffer it never clears, shows in the second).

    ``test_two_runs_agree`` holds only the forward; a backward that accumulated in another order on
    each call (atomics) had passed every check of a variant declaring ``deterministic = True``.
    """

    def body(result: CheckResult) -> None:
        references_first(variant.family, problem)  # judged after the calls (_judge_calls)
        first = _gradients_once(variant, problem, cache)
        second = _again(result, "forward and backward", lambda: _gradients_once(variant, problem, cache))
        for name in first:
            if (first[name] is None) != (second.get(name) is None):
                # a gradient left out by one call only: both alone had passed (the backward check makes one call)
                result.passed = False
                result.details.append(f"grad {name}: the {'first' if first[name] is None else 'second'} of two "
                                      "identical calls gave none (None) where the other gave a gradient")
        if not result.passed:
            return
        if backward_bitwise(variant, problem):
            differ = {name: (a, second[name]) for name, a in first.items()
                      if a is not None and not same_bits(a, second[name])}
            if not differ:
                return
            result.passed = False
            for name, (a, b) in differ.items():
                diff = (a.double() - b.double()).abs().nan_to_num()
                result.details.append(
                    f"grad {name}: two identical calls differ in {int((diff > 0).sum())} of {diff.numel()} "
                    f"elements (max |diff| {float(diff.max()):.3g}, largest |grad| "
                    f"{float(a.double().abs().nan_to_num().max()):.3g})")
            result.details.append(_why_calls_differ(variant, problem, first, second))
            return
        for label, (comps, broken) in zip(("first", "second"), _judge_calls(variant, problem, first, second)):
            comps = [dataclasses.replace(c, what=f"{c.what} ({label} of two identical calls)") for c in comps]
            if broken:
                result.passed = False
                result.details.extend(broken)
            _add(result, comps)

    return _guarded("backward-repeat", variant, problem, body)


def future_pivot(problem: Problem) -> Optional[int]:
    """Key position from which keys are perturbed: the largest split leaving some rows unaffected."""
    if not problem.mask.is_causal_like:
        return None
    allowed = oracle_mask.allowed(problem)
    for pivot in range(problem.lk // 2, problem.lk):
        if pivot >= 1 and not allowed[:, pivot:].any(axis=1).all():
            return pivot
    return None


def check_causality(variant: Variant, problem: Problem, cache: Optional[dict] = None) -> CheckResult:
    """Perturb keys/values (or tokens) a row must not see: that row's output must not change, bit for bit.

    Bit for bit only where the output is bitwise repeatable: a variant declaring ``deterministic = False``
    is judged within tolerance, and so is one whose unperturbed output differs when run again (it is
    told that it claims determinism, not that its mask leaks, and a real leak still fails). A leak is
    blamed only once :data:`CAUSALITY_RERUNS` further unperturbed runs repeat the first (bit for bit, or
    within tolerance where the rows are judged so); these runs happen only on a failure.
    """

    def body(result: CheckResult) -> None:
        pivot = future_pivot(problem)
        family = registry.family_of(variant)
        inputs, _ = family.inputs(problem)
        allowed = oracle_mask.allowed(problem)
        # rows that must not see keys >= pivot; fully masked rows are undefined (reported by forward)
        blind = ~allowed[:, pivot:].any(axis=1) & allowed.any(axis=1)
        perturbed = {}
        rng = np.random.default_rng(1234)
        for name, a in inputs.items():
            a = np.array(a)
            axis = 1 if problem.level == "layer" else a.ndim - 2
            if problem.level == "layer" or name in ("k", "v"):
                idx = [slice(None)] * a.ndim
                idx[axis] = slice(pivot, None)
                a[tuple(idx)] = rng.standard_normal(a[tuple(idx)].shape) * 3.0
            perturbed[name] = a
        if problem.level == "layer":
            blind &= np.arange(problem.lq) < pivot  # a changed token changes its own query too
        with torch.no_grad():
            case_a = prepare(variant, problem, False, cache=cache)
            out_a = case_a.forward()
            case_b = prepare(variant, problem, False, inputs_np=perturbed, cache=cache)
            out_b = case_b.forward()
        first_a, first_b = out_a, out_b  # as the calls gave them, before non-finite values are zeroed below
        # a malformed output is reported as such and not compared: it had read as a future leak, an
        # IndexError or an AttributeError
        for what, case, out in (("unperturbed", case_a, out_a), ("perturbed", case_b, out_b)):
            broken = case.output_problem(out)
            if broken:
                result.passed = False
                result.details.append(f"{what} call: {broken}; causality not judged")
                return
        # before any comparison: with one buffer returned by both calls, the unperturbed output is the
        # perturbed one, and the check had said the variant "ignores keys it must attend to"
        if _shared_output(result, variant, {"unperturbed call": out_a, "perturbed call": out_b}):
            return
        # non-finite values are named, and the rest is still compared (an inverted mask leaves some rows
        # NaN and leaks the future into the others): NaN never equals itself, so both sides' are zeroed,
        # and "the perturbation was ignored" is not concluded from such output
        non_finite = [f"{what} call: {why}" for what, out in (("unperturbed", out_a), ("perturbed", out_b))
                      for why in [_non_finite(out, problem, allowed.any(axis=1))] if why]
        if non_finite:
            result.passed = False
            result.details += non_finite
            if len(non_finite) == 2 and not bool(torch.isfinite(out_a).any()):
                result.details[-1] += "; causality not judged (no finite value to compare)"
                return
            out_a, out_b = _zero_non_finite(out_a), _zero_non_finite(out_b)
        axis = _row_axis(problem, out_a)
        rows = torch.as_tensor(np.flatnonzero(blind), device=out_a.device)
        a_rows, b_rows = out_a.index_select(axis, rows), out_b.index_select(axis, rows)

        def rows_of(out: torch.Tensor) -> torch.Tensor:  # as a_rows was taken from out_a
            return (_zero_non_finite(out) if non_finite else out).index_select(axis, rows)

        if variant.deterministic and not same_bits(a_rows, b_rows):
            result.passed = False
            # a variant cycling through output buffers may reuse their storage below
            first_a, first_b = first_a.clone(), first_b.clone()
            runs = _runs_again(case_a)  # is the output repeatable at all?
            differing = next((run for run in runs if not same_bits(first_a, run)), None)
            which, first, reruns = "unperturbed", first_a, runs
            if differing is None:
                # the perturbed call may have been the noisy one: a kernel noisy on a random share of its
                # calls had been told "future leak" when only that call was (an outside tester's trial)
                runs_b = _runs_again(case_b)
                differing = next((run for run in runs_b if not same_bits(first_b, run)), None)
                which, first, reruns = "perturbed", first_b, runs_b
            if differing is None:  # it is: the perturbation made the change
                diff = (a_rows.double() - b_rows.double()).abs()
                row = int(np.flatnonzero(blind)[int(diff.amax(dim=tuple(d for d in range(diff.dim()) if d != axis)).argmax())])
                result.details.append(
                    f"future leak: changing keys/tokens >= {pivot} changed {int((diff > 0).sum())} output "
                    f"elements of rows that must not see them (max change {float(diff.max()):.3g}, e.g. row {row})"
                )
            else:
                # nondeterminism (or state kept between calls) had been reported as a future leak. Bit for
                # bit says nothing here, so the rows are judged within tolerance, as for a variant declaring
                # deterministic = False, on the first calls of fresh instances: state kept between calls
                # (the repeat check names it) must not read as a leak either
                fresh_a, fresh_b = _fresh_output(variant, problem), _fresh_output(variant, problem, perturbed)
                if non_finite:
                    fresh_a, fresh_b = _zero_non_finite(fresh_a), _zero_non_finite(fresh_b)
                leak = _leak_within_tolerance(pivot, fresh_a.index_select(axis, rows),
                                              fresh_b.index_select(axis, rows), problem.dtype)
                result.details.append(_not_repeatable(variant, pivot, first, differing, leak.passed, which))
                _add_leak(result, variant, pivot, leak, rows_of(first), [rows_of(run) for run in reruns],
                          problem.dtype, which)
        elif not variant.deterministic:
            leak = _leak_within_tolerance(pivot, a_rows, b_rows, problem.dtype)
            if not leak.passed:  # the further runs only on a failure: passing costs no more calls
                _add_leak(result, variant, pivot, leak, a_rows, [rows_of(run) for run in _runs_again(case_a)],
                          problem.dtype)
        changed = out_a.index_select(axis, torch.as_tensor(np.flatnonzero(~blind), device=out_a.device))
        changed_b = out_b.index_select(axis, torch.as_tensor(np.flatnonzero(~blind), device=out_a.device))
        if changed.numel() and not non_finite and same_bits(changed, changed_b):
            result.passed = False
            # said of the variant, not of the check: "the perturbation was ignored" had read as the suite's fault
            result.details.append(f"{variant.name} ignores keys it must attend to: changing keys/tokens >= {pivot} "
                                  f"changed none of the rows that must see them (wrong causal corner or a dropped "
                                  f"key block?)")

    return _guarded("causality", variant, problem, body)


def _zero_non_finite(out: torch.Tensor) -> torch.Tensor:
    """``out`` with NaN and Inf set to zero, so that output holding them can still be compared."""
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


# How many more times the causality check runs the unperturbed input, only once the rows that must not
# see the future changed, before it blames the mask: a single further run had agreed with the first by
# chance for a variant noisy on every other call, and the noise was reported as a future leak
CAUSALITY_RERUNS = 4


def _runs_again(case: Case) -> list[torch.Tensor]:
    """``case`` (the unperturbed or the perturbed input) run :data:`CAUSALITY_RERUNS` more times, each output cloned:
    a variant cycling through a few output buffers would overwrite one run's output with a later one's."""
    with torch.no_grad():
        return [case.forward().clone() for _ in range(CAUSALITY_RERUNS)]


def _within_floor(what: str, x: torch.Tensor, ref: torch.Tensor, dtype: str) -> Comparison:
    """``x`` against ``ref`` given as reference and base at once, so the bound is the dtype's floor:
    how two outputs of the variant itself are held to each other within tolerance."""
    return compare(what, x, ref.double(), ref.double(), dtype)


def _leak_within_tolerance(pivot: int, a_rows: torch.Tensor, b_rows: torch.Tensor, dtype: str) -> Comparison:
    """The rows that must not see keys/tokens >= ``pivot``, perturbed (``b_rows``) against unperturbed
    (``a_rows``): how causality is judged for output that is not bitwise repeatable. Rounding noise
    passes; a real leak does not."""
    return _within_floor(f"future leak (judged within tolerance, the output not being bitwise repeatable): rows "
                         f"that must not see keys/tokens >= {pivot}", b_rows, a_rows, dtype)


def _add_leak(result: CheckResult, variant: Variant, pivot: int, leak: Comparison, first_rows: torch.Tensor,
              run_rows: list[torch.Tensor], dtype: str, which: str = "unperturbed") -> None:
    """Add ``leak`` (the perturbed rows judged within tolerance) to ``result``, unless the same rows of
    the unperturbed input's further runs (``run_rows``) are not within tolerance of its first
    (``first_rows``) either: then the output is nondeterministic beyond tolerance, the causality check
    cannot tell a leak from that noise, and that is said instead of a future leak."""
    if leak.passed:
        return
    result.passed = False
    label = f"{which} input run again: rows that must not see keys/tokens >= {pivot}"
    unrepeated = next((c for c in (_within_floor(label, run, first_rows, dtype) for run in run_rows)
                       if not c.passed), None)
    if unrepeated is None:  # the unperturbed output repeats within tolerance: the perturbation made the change
        result.details.append(leak.describe())
        return
    result.details.append(
        f"{variant.name}: the output is not repeatable within tolerance across identical calls: of "
        f"{len(run_rows)} further runs of the {which} input, one is beyond tolerance of the first in the rows "
        f"that must not see keys/tokens >= {pivot}, so the causality check cannot tell whether the mask leaks "
        "(the forward and repeat checks judge the output itself)")
    result.details.append(unrepeated.describe())


def _not_repeatable(variant: Variant, pivot: int, first: torch.Tensor, again: torch.Tensor, no_leak: bool,
                    which: str = "unperturbed") -> str:
    """Say that the ``which`` input run again gave different output (``again``, the first further run
    that differs from ``first``), so the bit-for-bit causality check cannot blame the mask; ``no_leak``:
    the judgment within tolerance saw no leak either."""
    diff = (first.double() - again.double()).abs().nan_to_num()
    return (f"{variant.name}: the output is not bitwise repeatable across identical calls: of {CAUSALITY_RERUNS} "
            f"further runs of the {which} input, one differs from the first in {int((diff > 0).sum())} elements "
            f"(max {float(diff.max()):.3g}), "
            f"though the variant claims determinism ({determinism_claim(variant)}; the repeat check, "
            "test_two_runs_agree, names the cause), so the rows that must not see "
            f"keys/tokens >= {pivot} were compared within tolerance, not bit for bit"
            + ("; within tolerance they did not change: no future leak seen" if no_leak else ""))


def _row_axis(problem: Problem, out: torch.Tensor) -> int:
    """The axis of query rows (tokens) in an output of the contract's shape."""
    return 1 if problem.level == "layer" else out.dim() - 2


def _non_finite(out: torch.Tensor, problem: Problem, rows: np.ndarray) -> Optional[str]:
    """Say how many NaN/Inf values ``out`` holds in the query rows ``rows`` (those that attend to some
    key: a fully masked row may hold NaN), or None when there are none."""
    index = torch.as_tensor(np.flatnonzero(rows), device=out.device)
    picked = out.detach().index_select(_row_axis(problem, out), index)
    bad = int((~torch.isfinite(picked)).sum())
    if not bad:
        return None
    return f"non-finite output: {bad} of {picked.numel()} values in rows that attend to some key are NaN or Inf"


def determinism_claim(variant: Variant) -> str:
    """Where a variant's claim of determinism comes from, and how to drop it: ``deterministic = True`` is
    the default, so a first-time author had been told of a claim they never made."""
    made = ("it sets deterministic = True" if registry.sets_itself(variant, "deterministic")
            else "deterministic = True, the default")
    return f"{made}; a variant nondeterministic by design sets deterministic = False"


def check_repeat(variant: Variant, problem: Problem, cache: Optional[dict] = None) -> CheckResult:
    """Two identical runs agree: bitwise for forward of deterministic variants, within tolerance otherwise;
    and, between them, a call on other values of the same shapes is right for those values (a kernel
    variant: :func:`_reads_each_calls_inputs`).

    A failure names its cause: one output buffer returned by every call (:func:`_shared_output`),
    output the call never wrote, state kept between calls (the variant needs ``reset()``), or
    nondeterminism. State is told apart with freshly built instances
    (:func:`_fresh_output`), never with this check's own first call: the build cache hands the check
    an instance that earlier checks may already have called, so that call is not the instance's
    first, and the diagnosis had depended on which tests ran before. The fresh builds happen only
    on a failure, so a variant whose build is expensive pays for them only then.
    """

    def body(result: CheckResult) -> None:
        other = _other_values(variant, problem)
        # judged after the calls: the problem's own values on some paths, the other values' always
        references_first(variant.family, problem, *([other[0]] if other is not None else []))
        with torch.no_grad():
            a = prepare(variant, problem, False, cache=cache).forward()
            # between the two: the same built function on other values of the same shapes
            between = prepare(variant, problem, False, inputs_np=other[1], cache=cache) if other is not None else None
            between_out = between.forward() if between is not None else None
            b = _again(result, "forward", lambda: prepare(variant, problem, False, cache=cache).forward())
        outs = (a, b) if between is None else (a, between_out, b)
        kind = next((type(o).__name__ for o in outs if not isinstance(o, torch.Tensor)), None)
        if kind is not None:  # in the forward check's words: a tuple had failed here with an AttributeError
            result.details.append(f"returned {kind}, not a tensor")
            result.passed = False
            return
        # before any comparison: one buffer returned by every call holds only the last call's output,
        # so the first two compared equal and the call on other values had read as "reuses data from an
        # earlier call"
        names = ("first call", "second call") if between is None else ("first call", "call on other values",
                                                                        "second call")
        if _shared_output(result, variant, dict(zip(names, outs))):
            return
        if other is not None:
            _reads_each_calls_inputs(result, variant, problem, other, between, between_out)
        if variant.deterministic:
            if not same_bits(a, b):
                diff = (a.double() - b.double()).abs()
                result.passed = False
                unwritten = _unwritten(variant, problem, a, b)
                if unwritten:
                    result.details.append(unwritten)
                elif _calls_repeat_per_instance(variant, problem):
                    result.details.append(_depends_on_earlier_calls(variant, int((diff > 0).sum()),
                                                                    float(diff.nan_to_num().max())))
                else:
                    result.details.append(
                        f"two identical runs differ in {int((diff > 0).sum())} elements "
                        f"(max {float(diff.nan_to_num().max()):.3g}) though the variant claims determinism "
                        f"({determinism_claim(variant)})"
                    )
        else:
            ref_out, _ = reference(variant.family, problem)
            base_out, _ = base(variant.family, problem)
            second = compare("second run", b, ref_out, base_out, problem.dtype)
            _add(result, [second])
            # a fresh instance's first call, not ``a``: the cached instance may have been called before
            if not second.passed and compare("first run", _fresh_output(variant, problem), ref_out, base_out,
                                             problem.dtype).passed:
                diff = (a.double() - b.double()).abs()
                result.details.append(_depends_on_earlier_calls(variant, int((diff > 0).sum()),
                                                                float(diff.nan_to_num().max())))

    return _guarded("repeat", variant, problem, body)


# The call on other values runs on problems up to this many scores per head (Lq x Lk): state kept
# between calls shows on any shape, and every variant's problems include small ones; on all of them
# the second oracle had added half again to the repeat tests' time (50 -> 74-112 s on this project's
# 2-core CPU machine, `pytest test_correctness/test_variants.py -k two_runs -n 2`).
OTHER_VALUES_MAX_SCORES = 64 * 64


def _other_values(variant: Variant, problem: Problem) -> Optional[tuple[Problem, dict]]:
    """The problem with the next input seed and its inputs (other values, the same shapes and mask), or
    None where a built variant holds seeded data of its own: a layer's parameters are drawn from the
    seed too, so its built module cannot be held to another seed's oracle."""
    if not isinstance(variant, registry.KernelVariant) or problem.lq * problem.lk > OTHER_VALUES_MAX_SCORES:
        return None
    other = dataclasses.replace(problem, seed=problem.seed + 1)
    return other, registry.family_of(variant).inputs(other)[0]


def _reads_each_calls_inputs(result: CheckResult, variant: Variant, problem: Problem,
                             other: tuple[Problem, dict], case, out: torch.Tensor) -> None:
    """The call on other values (``case``: the built function with ``other``'s inputs) against
    their own oracle. Every other check calls a built function on one set of values (the causality
    check changes only future keys), so a variant that kept the K/V of its first call and reused it
    passed them all (a first-time user's trial). A failure is blamed on the built function's state
    when a freshly built instance gets those values right. When a fresh instance gets them wrong too,
    it fails only where a fresh instance gets the problem's own values right: state kept outside the
    built function (a module-level buffer or cache keyed by shape, or a distributed variant's ranks,
    which outlive its instances) then passes every other check, all of which call on one set of
    values; where the own values are wrong too, the forward check fails and says why."""
    other_problem, inputs_np = other
    ref_out, _ = reference(variant.family, other_problem)
    base_out, _ = base(variant.family, other_problem)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(np.shape(ref_out)):
        return  # the forward check names a broken output contract
    rows = live_rows(other_problem) if other_problem.level == "kernel" else None
    v = case.inputs.get("v")
    found = _output_comparison(variant, other_problem, out, v, ref_out, base_out, rows)
    if found.passed:
        return
    fresh = _fresh_output(variant, problem, inputs_np)
    if _output_comparison(variant, other_problem, fresh, v, ref_out, base_out, rows).passed:
        result.passed = False
        result.details.append(
            f"{variant.name}: a call on other values of the same shapes (input seed {other_problem.seed}) is wrong "
            "where a freshly built instance gets them right: the built function reuses data from an earlier call "
            "(K/V or inputs kept from its first call?); each call must read its own inputs")
        result.details.append(found.describe())
        return
    own_ref, _ = reference(variant.family, problem)
    own_base, _ = base(variant.family, problem)
    with torch.no_grad():
        own_case = prepare(variant, problem, False)  # a fresh instance (no build cache)
        own_out = own_case.forward()
    if not isinstance(own_out, torch.Tensor) or tuple(own_out.shape) != tuple(np.shape(own_ref)) or not \
            _output_comparison(variant, problem, own_out, own_case.inputs.get("v"), own_ref, own_base,
                               live_rows(problem) if problem.level == "kernel" else None).passed:
        return  # wrong on its own values as well: the forward check says why
    result.passed = False
    result.details.append(
        f"{variant.name}: a call on other values of the same shapes (input seed {other_problem.seed}) is wrong, "
        f"and so is a freshly built instance's call on them, while a freshly built instance gets the problem's "
        f"own values (input seed {problem.seed}) right: data kept from an earlier call outside the built "
        "function (a module-level buffer or cache keyed by shape; a distributed variant's ranks outlive its "
        "instances), or a kernel wrong on some values only")
    result.details.append(found.describe())


def _shared_output(result: CheckResult, variant: Variant, outputs: dict[str, torch.Tensor]) -> bool:
    """Fail ``result``, saying why, when two of ``outputs`` (each call's output, by what the call was)
    share storage: the variant returns one buffer from more than one call, so a later call overwrote
    what an earlier one returned and the check cannot compare the calls. True when it did."""
    seen: dict[tuple[torch.device, int], str] = {}  # (device, storage address) -> the call that returned it
    for what, out in outputs.items():
        if out.untyped_storage().nbytes() == 0:  # an empty tensor's storage address says nothing
            continue
        key = (out.device, out.untyped_storage().data_ptr())
        if key in seen:
            result.passed = False
            result.details.append(
                f"{variant.name} returns one output buffer from more than one call: the tensors its {seen[key]} "
                f"and its {what} returned share storage, so the {what} overwrote what the "
                f"{seen[key]} returned and the two cannot be compared; each call must return a tensor of its own "
                "(allocate the output in the call, or return a clone of a buffer kept between calls)")
            return True
        seen[key] = what
    return False


def _unwritten(variant: Variant, problem: Problem, a: torch.Tensor, b: torch.Tensor) -> Optional[str]:
    """Say so when two calls differ where either holds values no attention output can (far above the
    reference's largest, or NaN/Inf): memory the call never wrote. It had been reported as state kept
    between calls, sending the author to declare reset() for a kernel that skips rows."""
    if a.shape != b.shape:
        return None
    differ = ~((a == b) | (torch.isnan(a) & torch.isnan(b)))
    if not bool(differ.any()):
        return None
    values = torch.cat([a[differ].double().abs(), b[differ].double().abs()])
    ref_out, _ = reference(variant.family, problem)
    ref = as_float64(ref_out)
    ref_max = float(np.max(np.abs(ref))) if ref.size else 0.0
    finite = values[torch.isfinite(values)]
    largest = float(finite.max()) if finite.numel() else math.inf
    if finite.numel() == values.numel() and largest <= UNWRITTEN * max(ref_max, 1.0):
        return None
    return (f"{variant.name}: {int(differ.sum())} output elements differ between two identical calls and hold "
            f"values up to {largest:.3g} (or NaN/Inf) where the float64 reference's largest is {ref_max:.3g}: "
            "output the call never wrote (memory from torch.empty, a row or block the kernel skips), not state "
            "kept between calls")


def _fresh_output(variant: Variant, problem: Problem, inputs_np: Optional[dict] = None) -> torch.Tensor:
    """The first call of a freshly built instance (no build cache): free of whatever earlier calls left."""
    with torch.no_grad():
        return prepare(variant, problem, False, inputs_np=inputs_np).forward()


def _calls_repeat_per_instance(variant: Variant, problem: Problem) -> bool:
    """Do two freshly built instances give the same first call and the same second call, bit for bit,
    while each instance's second call differs from its first?

    Tells state apart from nondeterminism once two calls of one instance differ: state makes every
    fresh instance go through the same outputs in the same order; noise does not. Two fresh instances
    rather than a fresh one and the check's own first call, which is not a first call when earlier
    checks used the cached instance; second calls too, not first calls alone: a stateless kernel noisy
    on a random share of its calls had agreed on two first calls about half the time and been told to
    declare reset() (an outside tester's trial). State kept outside what ``build`` returns (shared by
    every instance) reads as nondeterminism here.
    """
    def two_calls() -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            case = prepare(variant, problem, False)
            first = case.forward().clone()  # a variant reusing its output buffer would overwrite it
            return first, case.forward()

    (a1, a2), (b1, b2) = two_calls(), two_calls()
    return same_bits(a1, b1) and same_bits(a2, b2) and not same_bits(a1, a2)


def _depends_on_earlier_calls(variant: Variant, n: int, largest: float) -> str:
    return (
        f"{variant.name}: output depends on earlier calls: a second identical call differs from the first "
        f"in {n} elements (max {largest:.3g}); a variant that keeps state between calls (its own cache) "
        "must declare reset() (attnsuite.registry.Variant.reset), which the suite calls before every call"
    )


def check_equal_work(variant: Variant, problem: Problem, cache: Optional[dict] = None) -> CheckResult:
    """Equal work for a layer variant: exactly the family's canonical parameters, so timings compare
    like with like. Same parameter count (an extra projection or bias shows here), no bias tokens or
    zero-attention rows in ``nn.MultiheadAttention``, and ``canonical_grads`` gives every canonical
    name with its canonical shape."""

    def body(result: CheckResult) -> None:
        canonical = {name: np.shape(a) for name, a in registry.family_of(variant).params(problem).items()}
        total = sum(int(np.prod(shape)) for shape in canonical.values())
        module = prepare(variant, problem, requires_grad=False, cache=cache).module
        count = sum(p.numel() for p in module.parameters())
        if count != total:
            result.passed = False
            result.details.append(f"{count} parameters, the canonical set has {total} (unequal work)")
        for sub in module.modules():
            if isinstance(sub, torch.nn.MultiheadAttention) and (
                sub.bias_k is not None or sub.bias_v is not None or sub.add_zero_attn
            ):
                result.passed = False
                result.details.append("nn.MultiheadAttention with bias tokens or add_zero_attn (extra work)")
        saved = [p.grad for p in module.parameters()]
        try:
            for p in module.parameters():
                p.grad = torch.ones_like(p)
            grads = variant.canonical_grads(module)
        finally:  # the module may be the build cache's: leave its gradients as they were
            for p, g in zip(module.parameters(), saved):
                p.grad = g
        if set(grads) != set(canonical):
            result.passed = False
            missing, extra = sorted(set(canonical) - set(grads)), sorted(set(grads) - set(canonical))
            result.details.append(f"canonical_grads keys differ from the canonical set: missing {missing}, extra {extra}")
        for name, g in grads.items():
            if name in canonical and (g is None or tuple(g.shape) != tuple(canonical[name])):
                result.passed = False
                result.details.append(f"canonical grad {name} has shape {None if g is None else tuple(g.shape)}, "
                                      f"expected {tuple(canonical[name])}")

    return _guarded("equal work", variant, problem, body)


def check_loaded_weights(variant: Variant, problem: Problem) -> CheckResult:
    """A layer variant's module holds exactly the family's canonical weights: read back through the
    variant's own layout map (``canonical_grads``, fed the parameters themselves as gradients), each
    must equal its canonical array bit for bit. The module is built afresh (no build cache), so what
    is read is what ``build`` loaded. A name the map does not return is said to be the map's omission:
    it had read "loaded bq differs from the canonical weights" for a map that left the biases out."""

    def body(result: CheckResult) -> None:
        canonical = registry.family_of(variant).params(problem)
        module = prepare(variant, problem, requires_grad=False).module
        for p in module.parameters():
            p.grad = p.detach().clone()
        loaded = variant.canonical_grads(module)
        for name, want in canonical.items():
            got = loaded.get(name)
            if name not in loaded:
                why = f"cannot be read back: {CANONICAL_KEY_ABSENT.format(name=name)}"
            elif got is None:
                why = "cannot be read back: canonical_grads gives None for it though every parameter's .grad is set"
            elif not np.array_equal(got.detach().double().cpu().numpy(), np.asarray(want)):
                why = "differs from the canonical weights"
            else:
                continue
            result.passed = False
            result.details.append(f"{variant.name}: loaded {name} {why}")

    return _guarded("loaded weights", variant, problem, body)


def _strided(t: torch.Tensor) -> torch.Tensor:
    """The same (b, h, l, d) values laid out as (b, l, h, d) in memory, as a model's projections
    give them: a view that is not contiguous."""
    return t.detach().transpose(1, 2).contiguous().transpose(1, 2)


def check_strided(variant: Variant, problem: Problem, cache: Optional[dict] = None) -> CheckResult:
    """Forward, and backward where the variant has one, with q, k, v and the output gradient not
    contiguous (:func:`_strided`), against the oracle by the same rules as the forward and backward
    checks. Every other check passes contiguous tensors, and a kernel whose backward read its
    inputs by assumed strides passed them all while giving gradients off by 1 to 3 in a model
    (found by a fresh-user test)."""

    def body(result: CheckResult) -> None:
        ref_out, ref_grads = reference(variant.family, problem)
        base_out, base_grads = base(variant.family, problem)
        backward = not variant.unsupported(problem, backward=True)
        case = prepare(variant, problem, requires_grad=backward, cache=cache)
        leaves = {n: t.detach().transpose(1, 2).contiguous().requires_grad_(backward) for n, t in case.inputs.items()}
        with torch.set_grad_enabled(backward):
            if case.reset is not None:
                case.reset()
            out = case.kernel(*(leaf.transpose(1, 2) for leaf in leaves.values()))
            if not _contract(result, variant, problem, out, ref_out):
                return
            rows = live_rows(problem)
            _add(result, [compare_as(variant.accuracy, "output (strided inputs)", out, ref_out, base_out,
                                     problem.dtype, "output", rows)])
            if not backward:
                return
            if not out.requires_grad:
                result.passed = False
                result.details.append("output (strided inputs) does not require grad: the graph is detached")
                return
            out.backward(_strided(case.grad_out))
        grads = {n: (leaf.grad.transpose(1, 2) if leaf.grad is not None else None) for n, leaf in leaves.items()}
        comps, broken = compare_gradients(variant.accuracy, grads, ref_grads, base_grads, problem.dtype)
        if broken:
            result.passed = False
            result.details.extend(f"{b} (strided inputs)" for b in broken)
        _add(result, [dataclasses.replace(c, what=f"{c.what} (strided inputs)") for c in comps])

    return _guarded("strided", variant, problem, body)


def strided_reason(variant: Variant, problem: Problem) -> Optional[str]:
    """Why the strided check does not apply (None when it does): kernel variants of (b, h, l, d) inputs."""
    if not isinstance(variant, registry.KernelVariant) or problem.level != "kernel" \
            or registry.family_of(variant).name != "attention":
        return "strided inputs are checked for kernel variants of the attention family's (b, h, l, d) inputs"
    return None


CHECKS = {
    "forward": check_forward,
    "backward": check_backward,
    "causality": check_causality,
    "repeat": check_repeat,
    "backward-repeat": check_backward_repeat,
    "strided": check_strided,
}
assert tuple(CHECKS) == registry.CHECK_NAMES, "registry.CHECK_NAMES (known_defects keys) must name these checks"


def guarded_skip_reason(decide: Callable[[], Optional[str]], variant: Variant, problem: Problem,
                        hook: str = "unsupported()/extra_reasons()") -> tuple[Optional[str], Optional[str]]:
    """Run ``decide`` (a skip reason or None, from a variant's own ``hook``: ``unsupported``/``extra_reasons``,
    or ``known_defect``):
    ``(reason, None)``, or ``(None, failure)`` when it raised, the failure naming the variant, the
    problem and the exception. The correctness tests compute skip reasons while collecting: an
    exception there had stopped the collection of every variant's tests; this way it fails the
    tests of that variant only."""
    try:
        with os_exit_raises():  # os._exit here had ended a run without xdist at once, status 0, silently
            return decide(), None
    except Exception as exc:  # noqa: BLE001 - the variant's code, reported against it
        return None, f"{variant.name} on {problem.id}: its {hook} raised {exception_text(exc)}"
    except OsExitCalled as exc:
        return None, f"{variant.name} on {problem.id}: its {hook} called os._exit({exc.status!r})"
    except SystemExit as exc:
        return None, f"{variant.name} on {problem.id}: its {hook} called sys.exit({exc.code!r})"


def skip_reason(check: str, variant: Variant, problem: Problem) -> Optional[str]:
    """Why ``check`` does not apply to this variant and problem (None when it does)."""
    reasons = variant.unsupported(problem, backward=check in ("backward", "backward-repeat"))
    if reasons:
        return "; ".join(reasons)
    if variant.accuracy != "exact" and problem.tag == LARGE_LOGITS and check in ("backward", "backward-repeat",
                                                                                "strided"):
        # the checks judged by the class's budget; its forward is held to the values' range instead
        # (check_forward), and causality and repeat do not depend on a budget
        return (f"the {variant.accuracy} class's budget was measured at ordinary logit sizes; this problem's "
                "logits pass 150")
    if check == "strided":
        return strided_reason(variant, problem)
    if check == "causality" and future_pivot(problem) is None:
        return f"mask {problem.mask.id} has no future keys to perturb"
    return None
