"""An output option never names a file the command reads, nor the file another output writes.

A first-time user's trial: ``--attn-markdown`` given the shipped baseline's path wrote the markdown
diff over it and exited 0; ``attnsuite compare OLD NEW --markdown OLD`` and ``report R --html R``
did the same to their inputs. One rule (attnsuite.output_paths.output_options_problem) serves the
pytest options, ``compare``, ``report`` and ``ab``.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os

import pytest

from attnsuite import cli
from attnsuite.baseline import FILE_KINDS
from attnsuite.output_paths import output_options_problem
from gatehelp import rec, write_result


@pytest.fixture
def files(tmp_path):
    read = tmp_path / "baseline.json"
    read.write_text("{}")
    return tmp_path, read


@pytest.mark.parametrize("how", ["the same path", "the same path spelt another way", "a symlink to it",
                                 "a hard link to it"])
def test_an_output_naming_an_input_is_refused_with_both_named(files, how):
    tmp_path, read = files
    (tmp_path / "sub").mkdir()
    target = {"the same path": read, "the same path spelt another way": tmp_path / "sub" / ".." / "baseline.json",
              "a symlink to it": tmp_path / "link.json", "a hard link to it": tmp_path / "hard.json"}[how]
    if how == "a symlink to it":
        target.symlink_to(read)
    elif how == "a hard link to it":
        os.link(read, target)
    why = output_options_problem({"--markdown": str(target)}, inputs={"the baseline": str(read)})
    assert why is not None and why.startswith(f"--markdown {target}: is the baseline") and "would replace it" in why


def test_an_output_beside_an_input_or_naming_no_input_is_accepted(files):
    tmp_path, read = files
    assert output_options_problem({"--markdown": str(tmp_path / "gate.md"), "--json": None},
                                  inputs={"the baseline": str(read), "--thresholds": None}) is None


def test_two_outputs_naming_one_file_are_refused(files):
    tmp_path, _ = files
    why = output_options_problem({"--markdown": str(tmp_path / "x"), "--json": str(tmp_path / "x")})
    assert why == f"--markdown {tmp_path / 'x'}: --json names the same file; one output would replace the other " \
                  "(name two files)"


def test_inputs_may_repeat_a_label_as_pairs(files):
    tmp_path, read = files
    other = tmp_path / "other.json"
    other.write_text("{}")
    why = output_options_problem({"--out": str(other)}, inputs=[("a baselines file", str(read)),
                                                               ("a baselines file", str(other))])
    assert why is not None and "is a baselines file" in why


def _cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv], out=out)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.parametrize("argv, victim", [
    (["compare", "{old}", "{new}", "--markdown", "{old}"], "old"),
    (["compare", "{old}", "{new}", "--markdown", "{new}"], "new"),
    (["compare", "{old}", "{new}", "--markdown", "{th}"], "th"),
    (["report", "{new}", "--html", "{new}"], "new"),
    (["report", "{new}", "--markdown", "{new}"], "new"),
    (["report", "{new}", "--baseline", "{old}", "--markdown", "{old}"], "old"),
    (["report", "{new}", "--html", "{gj}", "--gate-json", "{gj}"], "gj"),
], ids=["compare --markdown OLD", "compare --markdown NEW", "compare --markdown over the thresholds beside OLD",
        "report --html RESULT", "report --markdown RESULT", "report --markdown over its --baseline",
        "report --html over its --gate-json"])
def test_a_cli_output_naming_one_of_its_inputs_is_refused_and_the_input_is_kept(tmp_path, argv, victim):
    paths = {"old": write_result(tmp_path / "old.json", [rec("a"), rec("b")]),
             "new": write_result(tmp_path / "new.json", [rec("a"), rec("b")]),
             "th": tmp_path / "thresholds.json", "gj": tmp_path / "gate.json"}
    paths["th"].write_text('{"version": 1}')
    paths["gj"].write_text('{"compared": false, "cases": []}')
    before = paths[victim].read_bytes()
    code, out, err = _cli(*[a.format(**paths) for a in argv])
    assert code == 2 and "which this command reads" in err and "Traceback" not in err, err
    assert out == "" and paths[victim].read_bytes() == before


RECORDED = {
    "an attnsuite baseline": os.path.join(os.path.dirname(__file__), "..", "baselines", "cpu-amd-epyc-2c-torch2.13.json"),
    "a thresholds file": os.path.join(os.path.dirname(__file__), "..", "baselines", "thresholds.json"),
}


@pytest.mark.parametrize("stored", ["plain", "gzip-compressed"])
@pytest.mark.parametrize("kind", ["an attnsuite baseline", "a thresholds file", "a problems file",
                                  "a benchmark result file", "a gate JSON"])
@pytest.mark.parametrize("option", ["--markdown", "--json", "--attn-gate-json", "--benchmark-json"])
def test_an_output_never_replaces_a_recorded_file_that_this_command_does_not_read(tmp_path, kind, option, stored):
    # --attn-markdown given a baseline of another folder had replaced its 300 cases with the diff (exit 0);
    # compressed (every reader takes gzip whatever the name), `ab --json` had deleted it
    victim = tmp_path / ("victim.json" if stored == "plain" else "victim.json.gz")
    if kind == "a problems file":
        content = b'{"version": 1, "problems": []}'
    elif kind == "a benchmark result file":
        content = b'{"machine_info": {}, "benchmarks": []}'
    elif kind == "a gate JSON":  # a run's verdicts: a markdown written over them had lost them
        content = b'{"compared": true, "failed": false, "cases": []}'
    else:
        content = open(RECORDED[kind], "rb").read()
    victim.write_bytes(content if stored == "plain" else gzip.compress(content))
    before = victim.read_bytes()
    why = output_options_problem({option: str(victim)})
    writers = {"a benchmark result file": ["--benchmark-json"], "a gate JSON": ["--attn-gate-json", "--json"]}
    if option in writers.get(kind, []):
        assert why is None  # a run writes its results (or verdicts) over the last run's
    else:
        said = {"a thresholds file": FILE_KINDS["thresholds"], "a problems file": FILE_KINDS["problems"],
                "a gate JSON": FILE_KINDS["gate"]}.get(kind, kind)
        which = f"only {' or '.join(sorted(writers[kind]))} replaces" if kind in writers else "an output never replaces"
        assert why == f"{option} {victim}: holds {said}, which {which} (name another file)"
    assert victim.read_bytes() == before


# named ids: a parameter's own bytes had made its id, and gzip's header holds the time it was made, so two
# xdist workers collecting a second apart saw different tests and the whole run stopped (a clean-clone CI run)
@pytest.mark.parametrize("content", [
    "<!-- attnsuite-gate -->\n### x", "", "[1]", "{not json", gzip.compress(b"a compressed log", mtime=0),
    b"\x1f\x8b not gzip after all"],
    ids=["a markdown diff", "empty", "a JSON list", "broken JSON", "a compressed log", "gzip's magic, then text"])
def test_an_output_may_replace_what_outputs_write_or_what_is_no_recorded_file(tmp_path, content):
    earlier = tmp_path / "gate.out"
    earlier.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert output_options_problem({"--markdown": str(earlier), "--attn-gate-json": None}) is None


def test_ab_given_a_baseline_as_its_json_output_refuses_it_and_deletes_nothing(tmp_path, capsys):
    from attnsuite import ab

    victim = tmp_path / "victim.json"
    victim.write_bytes(open(RECORDED["an attnsuite baseline"], "rb").read())
    earlier_md = tmp_path / "ab.md"
    earlier_md.write_text("<!-- an earlier ab run's diff -->")
    status = ab.main(["--base", "no-such-ref-anywhere", "--json", str(victim), "--markdown", str(earlier_md),
                      "--", "--attn-workload", "gpt2-mha"], out=io.StringIO())
    assert status == 2 and "holds an attnsuite baseline, which an output never replaces" in capsys.readouterr().err
    assert victim.exists() and earlier_md.exists()
    # a bad ref: refused before an earlier run's outputs go (they had been deleted first)
    status = ab.main(["--base", "no-such-ref-anywhere", "--markdown", str(earlier_md), "--", "--attn-workload",
                      "gpt2-mha"], out=io.StringIO())
    err = capsys.readouterr().err
    assert status == 2 and "no-such-ref-anywhere" in err and earlier_md.exists(), err
