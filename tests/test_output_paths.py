"""An output option never names a file the command reads, nor the file another output writes.

A first-time user's trial: ``--attn-markdown`` given the shipped baseline's path wrote the markdown
diff over it and exited 0; ``attnsuite compare OLD NEW --markdown OLD`` and ``report R --html R``
did the same to their inputs. One rule (attnsuite.output_paths.output_options_problem) serves the
pytest options, ``compare``, ``report`` and ``ab``.
"""

from __future__ import annotations

import contextlib
import io
import os

import pytest

from attnsuite import cli
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
