"""A family of one's own from outside the repository (examples/external_rope_family.py): its variant is
held to its oracle by every check, a defect of the variant is caught, and a problems file may set the
argument the family declares (and no other)."""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "external_rope_family.py"
GENERIC_TESTS = REPO / "test_correctness" / "test_variants.py"

# the example's variant with its keys rotated one position late: what a KV cache read at the wrong offset does
SHIFTED = '''
import torch.nn.functional as F
from attnsuite.registry import KernelVariant, register
from attnsuite_external_external_rope_family import rotate


@register
class RopeShifted(KernelVariant):
    name = "rope-sdpa-shifted"
    family = "rope-attention"
    masks = frozenset({"none", "causal"})
    features = frozenset({"gqa", "custom_scale"})

    def build(self, problem):
        causal = problem.mask.kind == "causal"
        late = problem.with_(lq=problem.lq + 1, lk=problem.lk + 1)

        def run(q, k, v):
            k_late = rotate(F.pad(k, (0, 0, 1, 0)), late)[:, :, 1:]
            return F.scaled_dot_product_attention(rotate(q, problem), k_late, v, is_causal=causal,
                                                  scale=problem.scale, enable_gqa=problem.hq != problem.hkv)
        return run
'''


def _run(pytester, *args: str):
    pytester.syspathinsert(REPO)
    return pytester.runpytest_subprocess(str(GENERIC_TESTS), "--rootdir", str(REPO), "-p", "no:cacheprovider", "-v",
                                        *args)


def test_an_outside_family_holds_its_variant_to_its_oracle_in_every_check(pytester):
    result = _run(pytester, "--attn-variants", str(EXAMPLE), "--attn-only", "rope-sdpa")
    text = result.stdout.str()
    passed = re.findall(r"::(test_\w+)\[rope-sdpa@([^\]]+)\] PASSED", text)
    assert result.parseoutcomes().get("failed", 0) == 0, text[-3000:]
    checks = {name for name, _ in passed}
    assert {"test_forward_matches_oracle", "test_backward_matches_oracle", "test_causal_rows_ignore_future_keys",
            "test_two_runs_agree"} <= checks, checks
    assert any(problem.endswith("-rope_theta500.0") for _, problem in passed), passed


def test_a_variant_that_rotates_its_keys_one_position_late_fails_the_forward_and_backward_checks(pytester, tmp_path):
    shifted = tmp_path / "shifted.py"
    shifted.write_text(textwrap.dedent(SHIFTED))
    result = _run(pytester, "--attn-variants", str(EXAMPLE), "--attn-variants", str(shifted), "--attn-only", "rope-sdpa-shifted",
                  "-k", "fp32")
    text = result.stdout.str()
    failed = set(re.findall(r"::(test_\w+)\[rope-sdpa-shifted@[^\]]+\] FAILED", text))
    assert {"test_forward_matches_oracle", "test_backward_matches_oracle"} <= failed, text[-3000:]
    assert re.search(r"output: max error \S+ at \(.*\) vs bound \S+ \([\d.]+x the bound", text), text[-3000:]


def test_a_family_whose_oracle_disagrees_with_its_base_fails_every_variant_naming_the_family(pytester, tmp_path):
    # an oracle with the keys left unrotated (its base right) had made the bound as large as the outputs:
    # a variant with no rotation and 1.5x the scale passed all 54 of its tests (an outside tester's trial)
    source = EXAMPLE.read_text()
    buggy = source.replace('q, k = _rotate_np(inputs["q"], angles), _rotate_np(inputs["k"], angles)',
                           'q, k = _rotate_np(inputs["q"], angles), inputs["k"]')
    assert buggy != source
    buggy = buggy.replace('"rope-attention"', '"rope-buggy-oracle"').replace('name = "rope-sdpa"',
                                                                            'name = "rope-buggy-sdpa"')
    family = tmp_path / "rope_buggy_oracle.py"
    family.write_text(buggy)
    result = _run(pytester, "--attn-variants", str(family), "--attn-only", "rope-buggy-sdpa", "-k", "forward and fp32")
    text = result.stdout.str()
    outcomes = result.parseoutcomes()
    assert outcomes.get("failed", 0) >= 1 and not outcomes.get("passed"), text[-3000:]
    assert re.search(r"output: the family's base \(its plain computation in float32\) is \S+ from its float64 oracle "
                     r"\(\|ref\| max \S+\), beyond any rounding in float32 \(at most 0.001 of \|ref\| max\): the "
                     r"family's oracle and base compute different functions", text), text[-3000:]


@pytest.fixture
def rope_family():
    from attnsuite import registry

    registry.load_builtin()
    registry.load_external(str(EXAMPLE))
    return registry


@pytest.mark.parametrize("args, refused", [({"rope_theta": 50000.0}, None),
                                           ({"rope_theta": 50000.0, "rope_scale": 8}, "args 'rope_scale': not read by "
                                            "family 'rope-attention' or any of its variants (they read: rope_theta)"),
                                           ({"rope_theta": "high"}, "family 'rope-attention': rope-attention: "
                                            "rope_theta must be a positive number, got 'high'")])
def test_a_problems_file_may_set_the_argument_the_outside_family_declares_and_no_other(
        rope_family, tmp_path, monkeypatch, args, refused):
    from attnsuite import problem_file, workloads

    monkeypatch.setattr(rope_family, "_EXTRA_PROBLEMS", {})
    monkeypatch.setattr(workloads, "WORKLOADS", dict(workloads.WORKLOADS))
    monkeypatch.setattr(problem_file, "_LOADED", set())
    path = tmp_path / "rope.json"
    path.write_text(json.dumps({"version": 1, "problems": [
        {"family": "rope-attention", "lq": 24, "hq": 2, "dqk": 16, "mask": "causal", "args": args}]}))
    if refused is None:
        assert problem_file.load(path) == (1, 0)
    else:
        with pytest.raises(problem_file.ProblemFileError, match=re.escape(refused)):
            problem_file.load(path)


def test_a_family_that_gives_its_own_flop_count_is_credited_with_it(rope_family, monkeypatch):
    # an outside function with another cost than softmax attention's had read softmax attention's TFLOP/s
    import dataclasses

    from attnsuite import flops
    from attnsuite.problem import Problem

    problem = Problem(batch=1, lq=24, lk=24, hq=2, hkv=2, dqk=16, dv=16)
    softmax = flops.case_flops(problem, "rope-attention", "fwd")
    assert softmax == flops.case_flops(problem, "attention", "fwd")  # no count given: the model's
    own = dataclasses.replace(rope_family.family("rope-attention"), flops=lambda p, mode: 7.0 * p.lq)
    monkeypatch.setitem(rope_family._FAMILIES, "rope-attention", own)
    assert flops.case_flops(problem, "rope-attention", "fwd") == 7.0 * 24
    assert flops.case_flops(problem, "attention", "fwd") == softmax


def test_a_benchmark_too_large_for_the_whole_oracle_is_judged_at_the_familys_own_rows(pytester, tmp_path):
    # above 2^18 scores an outside family's output had been checked for finiteness only: the variant
    # that rotates its keys late had timed `ok` (and would have been recorded in a baseline)
    shifted = tmp_path / "shifted.py"
    shifted.write_text(textwrap.dedent(SHIFTED))
    problems = REPO / "examples" / "external_rope_problems.json"  # its quick-tier entry: L 640, fp32
    out = tmp_path / "bench.json"
    pytester.syspathinsert(REPO)
    result = pytester.runpytest_subprocess(
        str(REPO / "bench"), "--rootdir", str(REPO), "-p", "no:cacheprovider", "--benchmark-only",
        "--attn-variants", str(EXAMPLE), "--attn-variants", str(shifted), "--attn-problems", str(problems),
        "--attn-workload", "rope-long", "--attn-device", "cpu", "--attn-tier", "quick", "--attn-gate", "off",
        f"--benchmark-json={out}")
    assert out.exists(), result.stdout.str()[-3000:] + result.stderr.str()[-3000:]
    from attnsuite.baseline import benchmark_entries

    by = {(b["extra_info"]["variant"], b["extra_info"]["mode"]): b["extra_info"]
          for b in benchmark_entries(json.loads(out.read_text()))}
    assert set(by) == {(v, m) for v in ("rope-sdpa", "rope-sdpa-shifted") for m in ("fwd", "fwd+bwd")}, \
        result.stdout.str()[-3000:]
    for mode in ("fwd", "fwd+bwd"):
        good, bad = by[("rope-sdpa", mode)], by[("rope-sdpa-shifted", mode)]
        assert good["outcome"] == "ok", good["detail"]
        assert good["extra"]["numerics_check"].startswith("spot: 24 rows of every slice against the rope-attention "
                                                          "family's float64 rows"), good["extra"]["numerics_check"]
        assert ("gradients finite only" in good["extra"]["numerics_check"]) == (mode == "fwd+bwd")
        assert bad["outcome"] == "numerics", bad
        assert re.match(r"output \(spot rows 0, \d+, \.\.\., 639\): max error \S+ at \(0, \d, \d+, \d+\) vs bound",
                        bad["detail"]), bad["detail"]
