"""``attnsuite record --prune`` removes a baseline case only when the run answers for it.

The rule (baseline.Selection): a case is removed only if (a) it lies inside the stored selection
(``attnsuite.scope``) of a run recorded from, (b) it passes the ``--case``/``--workload`` filter,
(c) the run does not contain it and (d) a run measured its variant, or a ``--case`` glob names it.
Pruning by the run's workloads alone had removed every other case of that workload: a run limited by ``--attn-only`` or ``--attn-dtype`` pruned 44 cases, and
``--case`` pruned the cases the run held but the filter left out.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Optional

from attnsuite import baseline as bl
from attnsuite import cli
from attnsuite.verdict import Scope
from gatehelp import rec, result_json

FP32 = "b4-q128-h4-d64-causal-fp32-cuda0"
BF16 = "b4-q128-h4-d64-causal-bf16-cuda0"
FP32_LONG = "b4-q256-h4-d64-causal-fp32-cuda0"  # a problem a workload no longer has: its cases are gone


def run_cli(*argv: Any) -> tuple[int, str]:
    out = io.StringIO()
    return cli.main([str(a) for a in argv], out=out), out.getvalue()


def write_scoped(path: Path, records: list, scope: Optional[Scope]) -> Path:
    """A result file as the pytest gate writes it: the records and the run's selection (None: none stored)."""
    obj = result_json(records)
    if scope is not None:
        obj["attnsuite"]["scope"] = scope.to_json()
    path.write_text(json.dumps(obj))
    return path


def baseline_of(tmp_path: Path, records: list) -> Path:
    """A baseline holding ``records`` (recorded from a run that selected its workloads)."""
    path = tmp_path / "base.json"
    every = Scope(workloads=frozenset(r.workload for r in records))
    code, out = run_cli("record", write_scoped(tmp_path / "full.json", records, every), "--baseline", path)
    assert code == 0, out
    return path


def cases(path: Path) -> set[str]:
    return set(json.loads(path.read_text())["cases"])


def prune(tmp_path: Path, records: list, scope: Optional[Scope], *options: str) -> tuple[str, Path]:
    """Record a run of ``records`` selected by ``scope`` with --prune; (its output, the baseline)."""
    base = tmp_path / "base.json"
    code, out = run_cli("record", write_scoped(tmp_path / "run.json", records, scope), "--baseline", base,
                        "--prune", *options)
    assert code == 0, out
    return out, base


def test_a_run_limited_by_attn_only_prunes_no_case_of_another_variant(tmp_path):
    base = baseline_of(tmp_path, [rec("a", problem=FP32), rec("b", problem=FP32)])
    out, _ = prune(tmp_path, [rec("a", problem=FP32)], Scope(workloads=frozenset({"fa-sweep"}),
                                                             variants=frozenset({"a"})))
    assert rec("b", problem=FP32).key in cases(base)
    assert " 0 removed" in out


def test_a_run_limited_by_attn_dtype_prunes_no_case_of_another_dtype(tmp_path):
    base = baseline_of(tmp_path, [rec("a", problem=FP32), rec("b", problem=FP32)])
    out, _ = prune(tmp_path, [rec("a", problem=BF16), rec("b", problem=BF16)],
                   Scope(workloads=frozenset({"fa-sweep"}), dtypes=frozenset({"bfloat16"})))
    assert {rec("a", problem=FP32).key, rec("b", problem=FP32).key} <= cases(base)
    assert "2 added, 0 updated, 0 unchanged, 0 removed" in out


def test_a_run_limited_by_attn_mode_prunes_no_case_of_another_mode(tmp_path):
    base = baseline_of(tmp_path, [rec("a", mode="fwd"), rec("a", mode="bwd")])
    out, _ = prune(tmp_path, [rec("a", mode="fwd")], Scope(workloads=frozenset({"fa-sweep"}), modes=frozenset({"fwd"})))
    assert rec("a", mode="bwd").key in cases(base)
    assert " 0 removed" in out


def test_a_case_filter_prunes_no_case_the_run_holds_or_the_filter_leaves_out(tmp_path):
    base = baseline_of(tmp_path, [rec("a"), rec("b"), rec("c")])
    # the run holds a and b (not c); --case keeps only a: b is in the run, c fails the filter
    out, _ = prune(tmp_path, [rec("a"), rec("b")], Scope(workloads=frozenset({"fa-sweep"})), "--case", "*/a/*")
    assert cases(base) == {rec("a").key, rec("b").key, rec("c").key}
    assert "0 added, 0 updated, 1 unchanged, 0 removed" in out


def test_a_workload_filter_prunes_no_case_of_another_workload_the_run_selected(tmp_path):
    base = baseline_of(tmp_path, [rec("a", workload="w1"), rec("gone", workload="w2")])
    out, _ = prune(tmp_path, [rec("a", workload="w1")], Scope(workloads=frozenset({"w1", "w2"})), "--workload", "w1")
    assert rec("gone", workload="w2").key in cases(base)
    assert " 0 removed" in out


def test_a_case_inside_the_selection_and_the_filter_that_the_run_lacks_is_removed(tmp_path):
    base = baseline_of(tmp_path, [rec("a", problem=FP32), rec("gone", problem=FP32), rec("b", problem=BF16)])
    scope = Scope(workloads=frozenset({"fa-sweep"}), dtypes=frozenset({"float32"}))
    out, _ = prune(tmp_path, [rec("a", problem=FP32)], scope, "--case", "fa-sweep/*")
    assert cases(base) == {rec("a", problem=FP32).key, rec("b", problem=BF16).key}
    assert "0 added, 0 updated, 1 unchanged, 1 removed" in out
    assert "no selection stored" not in out  # the run stored its selection: no fallback note


def test_a_run_without_a_stored_selection_prunes_within_its_workloads_and_says_so(tmp_path):
    base = baseline_of(tmp_path, [rec("a"), rec("a", problem=FP32_LONG), rec("other", workload="w2")])
    out, _ = prune(tmp_path, [rec("a")], None)
    assert cases(base) == {rec("a").key, rec("other", workload="w2").key}
    assert "1 removed" in out
    assert f"--prune: no selection stored in {tmp_path / 'run.json'} (attnsuite.scope" in out
    assert "the workloads and tiers it ran stood in for it" in out


def test_several_runs_prune_only_inside_the_union_of_their_selections(tmp_path):
    base = baseline_of(tmp_path, [rec("a", problem=FP32), rec("a", problem=FP32_LONG), rec("b", mode="bwd")])
    fwd32 = Scope(workloads=frozenset({"fa-sweep"}), modes=frozenset({"fwd"}), dtypes=frozenset({"float32"}))
    fwd16 = Scope(workloads=frozenset({"fa-sweep"}), modes=frozenset({"fwd"}), dtypes=frozenset({"bfloat16"}))
    r1 = write_scoped(tmp_path / "r1.json", [rec("a", problem=FP32)], fwd32)
    r2 = write_scoped(tmp_path / "r2.json", [rec("a", problem=BF16)], fwd16)
    code, out = run_cli("record", r1, r2, "--baseline", base, "--prune")
    assert code == 0, out
    # the FP32_LONG case (fp32 fwd) was selected by r1 and ran nowhere; the bwd case was selected by neither
    assert cases(base) == {rec("a", problem=FP32).key, rec("a", problem=BF16).key, rec("b", mode="bwd").key}


def test_plain_prune_keeps_the_cases_of_a_variant_no_run_measured_and_says_how_to_drop_them(tmp_path):
    # a run that forgot an outside variant's --attn-variants has none of its cases: `record --prune`
    # had removed its recorded figures with the cases that really were gone
    base = baseline_of(tmp_path, [rec("a"), rec("a", problem=FP32_LONG), rec("outside"), rec("outside", mode="bwd")])
    out, _ = prune(tmp_path, [rec("a")], Scope(workloads=frozenset({"fa-sweep"})))
    assert cases(base) == {rec("a").key, rec("outside").key, rec("outside", mode="bwd").key}
    assert f"1 removed ({rec('a', problem=FP32_LONG).key})" in out
    assert ("--prune kept the cases of 1 variant no run measured: outside (2 cases) (an outside variant whose file "
            "the run did not load, --attn-variants, keeps its figures); to drop a variant taken out of the code, "
            "name its cases: --case '*/outside/*' --prune") in out


def test_the_case_glob_the_kept_note_suggests_drops_that_variant(tmp_path):
    base = baseline_of(tmp_path, [rec("a"), rec("outside")])
    out, _ = prune(tmp_path, [rec("a")], Scope(workloads=frozenset({"fa-sweep"})), "--case", "*/outside/*")
    assert cases(base) == {rec("a").key} and "kept the cases" not in out


def test_merge_into_removes_only_what_the_selection_holds(tmp_path):
    base = bl.merge_into(None, {r.key: r for r in (rec("a"), rec("b", mode="bwd"))}, {"id": "x"})[0]
    inside = bl.Selection(scopes=(Scope(modes=frozenset({"fwd"})),))
    merged, summary = bl.merge_into(base, {}, {"id": "x"}, prune_inside=inside)
    assert set(merged.cases) == {rec("b", mode="bwd").key} and summary.removed == [rec("a").key]


def test_a_variant_taken_out_of_the_code_is_pruned_by_its_case_filter_alone_and_named(tmp_path):
    # `attnsuite record run.json --case 'fa-sweep/b/*' --prune` had been refused "nothing to record":
    # the run no longer has b, which is the point, and there was no other way to drop its entries
    base = baseline_of(tmp_path, [rec("a"), rec("b")])
    out, _ = prune(tmp_path, [rec("a")], Scope(workloads=frozenset({"fa-sweep"})), "--case", "*/b/*")
    assert cases(base) == {rec("a").key}
    assert f"0 added, 0 updated, 0 unchanged, 1 removed ({rec('b').key})" in out


def test_a_case_filter_that_neither_records_nor_prunes_is_refused_and_writes_nothing(tmp_path):
    base = baseline_of(tmp_path, [rec("a"), rec("b")])
    before = base.read_bytes()
    code, _ = run_cli("record", write_scoped(tmp_path / "run.json", [rec("a")], Scope(workloads=frozenset({"fa-sweep"}))),
                      "--baseline", base, "--prune", "--case", "*/typo/*")
    assert code == 2 and base.read_bytes() == before
    code, _ = run_cli("record", tmp_path / "run.json", "--baseline", base, "--case", "*/b/*")  # without --prune
    assert code == 2 and base.read_bytes() == before


def test_a_prune_of_cases_outside_the_runs_selection_is_refused_saying_why(tmp_path, capsys):
    # the documented recipe for a removed variant, tried with a run limited by --attn-only to another
    # variant, had been refused with "no baseline case inside it is absent from the run" and no reason
    base = baseline_of(tmp_path, [rec("a"), rec("b")])
    before = base.read_bytes()
    only_a = Scope(workloads=frozenset({"fa-sweep"}), variants=frozenset({"a"}))
    code, _ = run_cli("record", write_scoped(tmp_path / "run.json", [rec("a")], only_a), "--baseline", base,
                      "--prune", "--case", "*/b/*")
    err = capsys.readouterr().err
    assert code == 2 and base.read_bytes() == before
    assert (f"the baseline's 1 case that the filters pass (e.g. {rec('b').key}) lies outside what the run selected"
            in err), err
    code, _ = run_cli("record", tmp_path / "run.json", "--baseline", base, "--prune", "--case", "*/typo/*")
    assert code == 2 and "outside what the run selected" not in capsys.readouterr().err  # a typo: no such reason
