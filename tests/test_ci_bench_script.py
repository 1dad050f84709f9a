"""scripts/ci_bench.sh (what bench.sh runs): Ctrl-C keeps pytest's interrupted summary in the terminal
and the log, with pytest's status; a resumed run appends to the log it carries on.

A fresh-user test pressed Ctrl-C during the README's main command: tee died with the signal, the
summary and the --attn-resume hint were lost, the script exited 1 (the gate-failure status) and the
resumed run then overwrote the log. A stand-in Python plays pytest here (no benchmark runs).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTEST = """#!/usr/bin/env bash
# stand-in "python -m pytest ...": on SIGINT or SIGTERM it writes its summary a little later, as pytest does
[ "$1" = -c ] && exit 0  # ci_bench's check that the interpreter has the suite's packages
trap 'sleep 0.5; echo "INTERRUPTED: 3 of 9 cases; --attn-resume carries on"; exit 2' INT TERM
echo "run $*" | grep -o -- "--attn-resume" || true
echo started
while true; do sleep 0.1; done
"""


def _run(tmp_path: Path, *args: str, sig: int = signal.SIGINT) -> tuple[int, str]:
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_PYTEST)
    fake.chmod(0o755)
    out = tmp_path / "out"
    env = {"PATH": "/usr/bin:/bin", "PYTHON": str(fake), "OUT": str(out)}
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log = out / "bench.log"
    before = log.read_text().count("started") if log.exists() else 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and (log.read_text().count("started") if log.exists() else 0) <= before:
        time.sleep(0.1)  # until this run's stand-in has set its trap
    os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C, `timeout` or a cancelled job: the whole group
    stdout, _ = proc.communicate(timeout=30)
    return proc.returncode, stdout


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_keeps_the_interrupted_summary_in_the_terminal_and_the_log_with_pytests_status(tmp_path, sig):
    # SIGTERM had ended the script at once with the timeout's status, pytest left writing to no reader
    status, stdout = _run(tmp_path, sig=sig)
    assert status == 2, stdout
    assert f"ci_bench: {signal.Signals(sig).name} received: pytest wrote what it had (exit status 2)" in stdout
    assert "INTERRUPTED: 3 of 9 cases; --attn-resume carries on" in stdout
    assert "INTERRUPTED: 3 of 9 cases" in (tmp_path / "out" / "bench.log").read_text()
    assert f"ci_bench (quick, gate report) exit status: 2; pytest's output above is also in {tmp_path / 'out'}/bench.log" \
        in stdout, stdout[-2000:]


def test_a_resumed_run_appends_to_the_log_of_the_run_it_carries_on(tmp_path):
    _run(tmp_path)
    _run(tmp_path, "--attn-resume")
    log = (tmp_path / "out" / "bench.log").read_text()
    assert log.count("INTERRUPTED: 3 of 9 cases") == 2 and "--- resumed " in log, log


def test_a_second_run_into_the_same_folder_is_refused_before_it_touches_the_log(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.log").write_text("the first run's log\n")
    holder = subprocess.Popen(["flock", str(out / ".ci_bench.lock"), "sleep", "60"])
    try:
        time.sleep(0.5)
        done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                              text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(out),
                                                         "PYTHON": "/bin/false"})
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 4, done.stderr
    assert f"ci_bench: another run is writing {out}" in done.stderr
    assert (out / "bench.log").read_text() == "the first run's log\n"


def test_an_output_folder_that_cannot_be_made_is_named_in_one_line(tmp_path):
    # it had read "another run is writing ..." after a mkdir error and a flock error
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = blocker / "out"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": "/bin/false"})
    assert done.returncode == 4, done.stderr  # nothing ran: 2 is an interrupted run's
    assert done.stderr == f"ci_bench: the output folder OUT={out} cannot be created or written: give OUT=<a writable folder>\n"


@pytest.mark.parametrize("tier, gate, said", [
    ("quick", "foo", "ci_bench: gate 'foo' (GATE, or ci_bench.sh's second argument) is not one of off, report, enforce"),
    ("fast", "report", "ci_bench: tier 'fast' (ci_bench.sh's first argument) is not one of quick, full"),
])
def test_an_unknown_tier_or_gate_is_named_as_given_before_anything_runs(tmp_path, tier, gate, said):
    # GATE=foo bash scripts/bench.sh had read pytest's "argument --attn-gate: invalid choice", an option
    # nobody typed (an outside tester's trial)
    out = tmp_path / "out"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), tier, gate], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": "/bin/false"})
    assert done.returncode == 4 and done.stderr == said + "\n", done.stderr
    assert not out.exists()


def test_an_output_folder_that_is_a_file_is_named_as_one(tmp_path):
    # it had read "cannot be created or written" (an outside tester's trial)
    out = tmp_path / "results"
    out.write_text("mine\n")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": "/bin/false"})
    assert done.returncode == 4, done.stderr
    assert done.stderr == (f"ci_bench: OUT={out} is a file, not a folder: give OUT=<a folder> (the run writes "
                           "bench.json, gate.md, gate.json and bench.log into it)\n")
    assert out.read_text() == "mine\n"


def test_an_output_folder_that_is_a_dangling_link_is_named_as_one(tmp_path):
    # it had read "cannot be created or written", nothing saying where the link pointed
    out = tmp_path / "out"
    out.symlink_to(tmp_path / "gone" / "results")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": "/bin/false"})
    assert done.returncode == 4, done.stderr
    assert done.stderr == (f"ci_bench: the output folder OUT={out} is a symbolic link to {tmp_path / 'gone' / 'results'}, "
                           "which does not exist: create that folder, or give OUT=<a writable folder>\n")
    assert not (tmp_path / "gone").exists()  # nothing made at the link's target


def test_an_interpreter_without_the_suites_packages_is_named_before_pytest_starts(tmp_path):
    # a checkout where setup.sh never ran had failed in pytest's start with a bare ImportError, exit 1 (a gate's)
    python = tmp_path / "python"
    python.write_text(f"#!/bin/sh\nexec {sys.executable} -S -I \"$@\"\n")  # no site-packages: no torch
    python.chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"),
                                                     "PYTHON": str(python)})
    assert done.returncode == 4, done.stdout + done.stderr
    assert f"ci_bench: {python} cannot run the benchmarks: missing torch, pytest, pytest_benchmark (run bash " \
           "scripts/setup.sh first" in done.stderr and not (tmp_path / "out" / "bench.log").exists()


def test_an_interpreter_that_does_not_exist_is_named_as_such(tmp_path):
    # it had read "missing scripts/ci_bench.sh: line 67: /nonexistent/python: No such file or directory"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"),
                                                     "PYTHON": "/nonexistent/python"})
    assert done.returncode == 4
    assert done.stderr.startswith("ci_bench: /nonexistent/python cannot run the benchmarks: not found, or not "
                                  "executable (run bash scripts/setup.sh first"), done.stderr


def test_a_program_that_is_no_python_is_named_as_such(tmp_path):
    # it had read "missing ?": the probe printed nothing to list
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"),
                                                     "PYTHON": "/bin/false"})
    assert done.returncode == 4
    assert "ci_bench: /bin/false cannot run the benchmarks: it ran no Python probe (exit status 1, no output: not " \
           "a Python interpreter?)" in done.stderr, done.stderr


def test_wrong_arguments_are_a_usage_error_not_an_interrupted_run():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 4 and done.stderr.startswith("usage: bash scripts/ci_bench.sh"), done.stderr


@pytest.mark.parametrize("script", ["ci_bench.sh", "bench.sh"])
def test_a_relative_output_folder_is_where_the_command_was_typed_not_under_the_repository(tmp_path, script):
    # OUT=myout from another folder had written under the repository while the summary named ./myout
    fake = tmp_path / "fakepython"
    fake.write_text("#!/usr/bin/env bash\necho \"ran $*\"\n")
    fake.chmod(0o755)
    name = f"attnsuite-test-out-{os.getpid()}"
    args = ["quick", "report"] if script == "ci_bench.sh" else []
    # bench.sh takes a machine where nvidia-smi lists a GPU as a CUDA one and keeps PYTHON: the stand-in
    # python then answers for pytest, with no set-up and no tier run
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'GPU 0: stand-in'\n")
    (tmp_path / "bin" / "nvidia-smi").chmod(0o755)
    env = {"PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "PYTHON": str(fake), "OUT": name}
    try:
        done = subprocess.run(["bash", str(ROOT / "scripts" / script), *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=120)
        assert not (ROOT / name).exists(), f"{script} wrote under the repository"
    finally:
        shutil.rmtree(ROOT / name, ignore_errors=True)
    assert (tmp_path / name / "bench.log").is_file(), done.stdout + done.stderr


@pytest.mark.parametrize("resumed", [False, True], ids=["a new run", "a resumed run"])
def test_a_run_that_writes_nothing_leaves_no_earlier_runs_results_for_the_report_to_show(tmp_path, resumed):
    # an unknown --attn-only had stopped the run with status 4, the last run's bench.json and gate files
    # still there, and ci_report.sh had reported them as this run's PASS
    out = tmp_path / "out"
    out.mkdir()
    earlier = {name: f"the last run's {name}\n" for name in ("bench.json", "gate.md", "gate.json", "report.html",
                                                              "results.md", "bench.json.journal.jsonl")}
    for name, text in earlier.items():
        (out / name).write_text(text)
    (out / "plots").mkdir()  # ci_report.sh's plots of the last run: one of a workload not run now had stayed
    (out / "plots" / "video-wm_fwd.png").write_bytes(b"png")
    earlier["plots"] = ""
    # the list an earlier run left of its outputs: without it they would be the user's, and kept
    _seal(out, "bench.json", "gate.md", "gate.json", "report.html", "results.md", "plots")
    refused = tmp_path / "refusing-python"  # as pytest refusing a usage error before any case runs
    refused.write_text("#!/usr/bin/env bash\n[ \"$1\" = -c ] && exit 0\n"  # it has the packages
                       "echo 'ERROR: attnsuite: --attn-only: unknown variant'\nexit 4\n")
    refused.chmod(0o755)
    args = ["--attn-resume"] if resumed else []
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report", *args],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(refused)})
    assert done.returncode == 4, done.stdout + done.stderr
    left = {p.name for p in out.iterdir()} & set(earlier)
    # a resumed run keeps the run it carries on (its journal, JSON and gate files); the reports made from
    # them go either way: after a resumed run passed, report.html had still said INTERRUPTED
    kept = {"bench.json.journal.jsonl"} | ({"bench.json", "gate.md", "gate.json"} if resumed else set())
    assert left == kept
    if not resumed:
        report = subprocess.run(["bash", str(ROOT / "scripts" / "ci_report.sh"), str(out)], capture_output=True,
                                text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/false"})
        assert report.returncode == 1 and f"ci_report: no {out}/bench.json" in report.stderr


@pytest.mark.parametrize("gate, kept", [("off", False), ("report", True)])
def test_a_run_resumed_with_the_gate_off_leaves_no_gate_files_of_the_run_it_carries_on(tmp_path, gate, kept):
    # the killed run's gate.md and gate.json (its verdicts, cut short) had stayed beside the resumed
    # run's results, and ci_report.sh showed them as this run's
    out = tmp_path / "out"
    out.mkdir()
    for name in ("bench.json", "gate.md", "gate.json"):
        (out / name).write_text(f"the killed run's {name}\n")
    _seal(out, "bench.json", "gate.md", "gate.json")
    python = tmp_path / "python"
    python.write_text("#!/usr/bin/env bash\n[ \"$1\" = -c ] && exit 0\necho ran\nexit 0\n")
    python.chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", gate, "--attn-resume"],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(python)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "bench.json").exists()  # the run it carries on
    assert (out / "gate.md").exists() == kept and (out / "gate.json").exists() == kept


def test_ci_bench_reads_the_projects_pytest_config_whatever_folders_its_options_name(tmp_path):
    # --attn-baselines-dir /elsewhere had made pytest look for its config from "/" and run without
    # pyproject.toml's addopts and warning filters, without a word
    fake = tmp_path / "fakepython"
    fake.write_text("#!/usr/bin/env bash\necho \"ran $*\"\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report", "--attn-baselines-dir",
                           str(tmp_path)], capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path / "out"), "PYTHON": str(fake)})
    ran = next(line for line in done.stdout.splitlines() if line.startswith("ran -m pytest"))
    assert ran.startswith(f"ran -m pytest -c {ROOT / 'pyproject.toml'} "), ran



def _seal(folder: Path, *names: str) -> None:
    """What a run does when it ends: list what it left under ``names`` by checksum."""
    subprocess.run(["bash", "-c", f'. "{ROOT}/scripts/out_folder.sh" && seal_outputs "$@"', "seal", str(folder),
                    "/nonexistent", *names], check=True, timeout=60)


def _ours(folder: Path, name: str) -> bool:
    return subprocess.run(["bash", "-c", f'. "{ROOT}/scripts/out_folder.sh" && output_is_ours "$@"', "ours",
                           str(folder), "/nonexistent", name], timeout=60).returncode == 0


def test_an_output_is_the_last_runs_only_while_it_holds_what_that_run_left(tmp_path):
    (tmp_path / "bench.json").write_text("the run's\n")
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(b"png")
    _seal(tmp_path, "bench.json", "plots", "gone.md")
    assert _ours(tmp_path, "bench.json") and _ours(tmp_path, "plots") and not _ours(tmp_path, "gone.md")
    (tmp_path / "bench.json").write_text("the user's, written over it\n")
    (tmp_path / "plots" / "notes.txt").write_text("the user's, put beside the run's plots\n")
    assert not _ours(tmp_path, "bench.json") and not _ours(tmp_path, "plots")

# what a user may keep in the folder they give as OUT (OUT=. in their own project): each has an output's name
# (ci_report.sh's report.html, results.md and plots/ are left alone instead: the test after next)
USERS_OWN = {"bench.json": "my saved run\n", "bench.log": "my notes\n", "gate.md": "mine\n", "gate.json": "{}\n"}


@pytest.mark.parametrize("name", sorted(USERS_OWN))
def test_a_users_own_file_with_an_outputs_name_stops_the_run_before_anything_is_removed(tmp_path, name):
    # OUT=. in a user's folder had deleted their bench.json, report.html and plots/ (even when the run then
    # stopped on a usage error): only files an earlier run listed as its outputs are replaced
    out = tmp_path / "mine"
    out.mkdir()
    (out / name).write_text(USERS_OWN[name])
    fake = tmp_path / "fakepython"
    fake.write_text(f"#!/usr/bin/env bash\ntouch {tmp_path / 'ran'}\n")
    fake.chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(fake)})
    assert done.returncode == 4, done.stdout + done.stderr
    assert (f"ci_bench: the output folder {out} already holds {name}, which no attnsuite run left there as it is (the "
            "folder has no .attnsuite-outputs, the list a run keeps of its outputs: files of an older attnsuite, or "
            "copied here?)") in done.stderr, done.stderr
    # the folder is left as it was: no list, no lock file
    assert not (tmp_path / "ran").exists() and sorted(p.name for p in out.iterdir()) == [name]
    assert (out / name).read_text() == USERS_OWN[name]


def test_a_runs_own_outputs_are_replaced_by_the_next_run_into_the_same_folder(tmp_path):
    out = tmp_path / "out"
    fake = tmp_path / "fakepython"  # a pytest that writes its JSON: the run's output
    fake.write_text("#!/usr/bin/env bash\n[ \"$1\" = -c ] && exit 0\n"
                    f"echo \"run $(date +%N)\" > {out}/bench.json\n")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(fake)}
    runs = [subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                           text=True, timeout=60, env=env) for _ in range(2)]
    assert [r.returncode for r in runs] == [0, 0], runs[1].stderr
    assert runs[0].stdout.startswith(f"ci_bench: created the output folder {out}\n")
    assert "created" not in runs[1].stdout
    listed = dict(line.split() for line in (out / ".attnsuite-outputs").read_text().splitlines())
    assert listed["bench.json"] == hashlib.sha256((out / "bench.json").read_bytes()).hexdigest()


@pytest.mark.parametrize("name", ["report.html", "results.md", "plots"])
def test_a_report_the_user_put_in_the_folder_after_a_run_is_left_alone_by_the_next(tmp_path, name):
    # a list of names alone had made the next run delete a report.html or a plots/ with the user's notes in it
    out = tmp_path / "out"
    fake = tmp_path / "fakepython"
    fake.write_text("#!/usr/bin/env bash\n[ \"$1\" = -c ] && exit 0\necho ran\n")
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(fake)}
    first = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                           text=True, timeout=60, env=env)
    assert first.returncode == 0, first.stderr
    if name == "plots":
        (out / name).mkdir()
        (out / name / "notes.txt").write_text("mine\n")
    else:
        (out / name).write_text("mine\n")
    second = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                            text=True, timeout=60, env=env)
    assert second.returncode == 0, second.stderr
    assert (out / name / "notes.txt" if name == "plots" else out / name).read_text() == "mine\n"


def test_a_bench_json_the_user_wrote_over_the_last_runs_stops_the_next_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.json").write_text("the run's")
    _seal(out, "bench.json")
    (out / "bench.json").write_text("my edited copy")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": "/bin/false"})
    assert done.returncode == 4 and "already holds bench.json" in done.stderr, done.stderr
    assert (out / "bench.json").read_text() == "my edited copy"


def test_ci_report_leaves_a_users_own_report_alone(tmp_path):
    (tmp_path / "bench.json").write_text("{}")
    (tmp_path / "report.html").write_text("<p>mine</p>")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_report.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/false"})
    assert done.returncode == 1 and "ci_report: the output folder" in done.stderr and "holds report.html" in \
        done.stderr, done.stderr
    assert (tmp_path / "report.html").read_text() == "<p>mine</p>"


def _writer(tmp_path: Path, out: Path) -> Path:
    """A stand-in pytest that writes its JSON into ``out``: the run's own output."""
    fake = tmp_path / "writing-python"
    fake.write_text(f"#!/usr/bin/env bash\n[ \"$1\" = -c ] && exit 0\necho \"run $(date +%N)\" > \"{out}/bench.json\"\n"
                    "echo \"log of run $(date +%N)\"\n")
    fake.chmod(0o755)
    return fake


def _ci_bench(out: Path | str, python: Path | str, *args: str, cwd: Optional[Path] = None,
              stdin: Any = subprocess.DEVNULL) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "scripts" / "ci_bench.sh"), "quick", "report", *args], capture_output=True,
                          text=True, timeout=60, cwd=cwd, stdin=stdin,
                          env={"PATH": "/usr/bin:/bin", "OUT": str(out), "PYTHON": str(python)})


def _listed(out: Path) -> dict[str, str]:
    return dict(line.split() for line in (out / ".attnsuite-outputs").read_text().splitlines())


@pytest.mark.parametrize("stop", ["a check after the claim", "SIGHUP while pytest runs"])
def test_a_run_that_stops_early_leaves_nothing_marked_being_written_so_a_users_file_is_never_taken(tmp_path, stop):
    # a run stopped by the interpreter check, or whose terminal closed, had left its outputs marked "being
    # written": the next run took the bench.json and gate.md the user put there for its own and deleted them
    out = tmp_path / "out"
    assert _ci_bench(out, _writer(tmp_path, out)).returncode == 0
    if stop == "a check after the claim":
        assert _ci_bench(out, "/bin/false").returncode == 4
    else:
        status, _ = _run(tmp_path, sig=signal.SIGHUP)
        assert status != 0
    assert "-" not in _listed(out).values(), _listed(out)
    (out / "bench.json").write_text("MY PRECIOUS RESULTS\n")
    (out / "gate.md").write_text("my notes\n")
    done = _ci_bench(out, _writer(tmp_path, out))
    assert done.returncode == 4 and "already holds bench.json gate.md" in done.stderr, done.stderr
    assert (out / "bench.json").read_text() == "MY PRECIOUS RESULTS\n" and (out / "gate.md").read_text() == "my notes\n"


@pytest.mark.parametrize("journal", [True, False], ids=["a case had finished", "killed before any case finished"])
def test_an_output_a_killed_run_left_being_written_is_refused_unless_that_run_is_resumed(tmp_path, journal):
    # SIGKILL cannot be trapped: the file may be that run's partial output or one put there since
    out = tmp_path / "out"
    out.mkdir()
    (out / "bench.log").write_text("half a log\n")
    (out / ".attnsuite-outputs").write_text("bench.json -\ngate.md -\ngate.json -\nbench.log -\n")
    if journal:
        (out / "bench.json.journal.jsonl").write_text("{}\n")
    done = _ci_bench(out, _writer(tmp_path, out))
    assert done.returncode == 4, done.stdout + done.stderr
    said = ("run the same command with --attn-resume to carry that run on" if journal else
            # --attn-resume had been advised there, and then refused: "no such file (nothing to resume)"
            "no case of that run had finished (it left no journal, bench.json.journal.jsonl), so there is nothing "
            "to resume: move them away (or delete them) and run again")
    assert (f"ci_bench: the output folder {out} holds bench.log, which a ci_bench.sh that did not finish was writing "
            f"(killed?), or which was put there since; nothing was run or changed: {said}") in done.stderr, done.stderr
    assert (out / "bench.log").read_text() == "half a log\n"
    if not journal:
        return
    resumed = _ci_bench(out, _writer(tmp_path, out), "--attn-resume")
    assert resumed.returncode == 0, resumed.stderr
    assert (out / "bench.log").read_text().startswith("half a log\n--- resumed ")


def test_a_relative_output_folder_named_like_an_assignment_is_read_as_a_folder(tmp_path):
    # awk took "tag=v1/.attnsuite-outputs" for a variable assignment: the second run was refused, and with
    # a terminal's stdin open the run hung after pytest
    out = tmp_path / "tag=v1"
    for _ in range(2):
        done = _ci_bench("tag=v1", _writer(tmp_path, out), cwd=tmp_path, stdin=subprocess.PIPE)
        assert done.returncode == 0, done.stderr
    assert set(_listed(out)) == {"bench.json", "bench.log"}  # what the stand-in wrote, each by its checksum


def test_an_output_folder_whose_name_starts_with_a_dash_is_made(tmp_path):
    done = _ci_bench("-dash", _writer(tmp_path, tmp_path / "-dash"), cwd=tmp_path)
    assert done.returncode == 0 and (tmp_path / "-dash" / "bench.json").is_file(), done.stderr


@pytest.mark.parametrize("resumed", [False, True], ids=["a new run", "a resumed run"])
def test_the_next_run_does_not_write_through_a_link_to_the_last_runs_log(tmp_path, resumed):
    # tee had truncated bench.log in place, and a resumed run appended to it in place: a hard-linked
    # snapshot of the folder (rsync --link-dest) had its log replaced or grown
    out = tmp_path / "out"
    assert _ci_bench(out, _writer(tmp_path, out)).returncode == 0
    (tmp_path / "snapshot").mkdir()
    os.link(out / "bench.log", tmp_path / "snapshot" / "bench.log")
    before = (tmp_path / "snapshot" / "bench.log").read_bytes()
    assert _ci_bench(out, _writer(tmp_path, out), *(["--attn-resume"] if resumed else [])).returncode == 0
    assert (tmp_path / "snapshot" / "bench.log").read_bytes() == before
    if resumed:  # appended to a copy of the log it carries on
        assert (out / "bench.log").read_bytes().startswith(before) and b"--- resumed " in (out / "bench.log").read_bytes()


@pytest.mark.parametrize("added", ["an empty folder", "a link"])
def test_a_folder_output_is_not_the_runs_once_the_user_added_anything_to_it(tmp_path, added):
    # the checksum had counted plots/' files alone: a folder or a link the user put there was deleted with it
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "a.png").write_bytes(b"png")
    _seal(tmp_path, "plots")
    if added == "an empty folder":
        (tmp_path / "plots" / "mine").mkdir()
    else:
        (tmp_path / "plots" / "mine").symlink_to(tmp_path / "elsewhere")
    assert not _ours(tmp_path, "plots")


def test_a_report_a_killed_ci_report_left_being_written_is_refused_with_a_way_out_that_works(tmp_path):
    # the message had offered --attn-resume, which ci_report.sh does not take
    (tmp_path / "bench.json").write_text("{}")
    (tmp_path / "report.html").write_text("half a report")
    (tmp_path / ".attnsuite-outputs").write_text("report.html -\nresults.md -\nplots -\n")
    done = subprocess.run(["bash", str(ROOT / "scripts" / "ci_report.sh"), str(tmp_path)], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": "/bin/false"})
    assert done.returncode == 1
    assert ("which a ci_report.sh that did not finish was writing (killed?), or which was put there since; nothing "
            "was run or changed: move them away (ci_report.sh makes them again from bench.json)") in done.stderr
    assert "--attn-resume" not in done.stderr and (tmp_path / "report.html").read_text() == "half a report"


def test_a_list_that_is_a_folder_is_refused_at_the_claim_and_nothing_lands_in_it(tmp_path):
    # mv had moved the new list into the folder and called it written: every later run was refused
    out = tmp_path / "out"
    (out / ".attnsuite-outputs").mkdir(parents=True)
    (out / ".attnsuite-outputs" / "notes.txt").write_text("mine\n")
    done = _ci_bench(out, _writer(tmp_path, out))
    assert done.returncode == 4 and f"cannot write {out}/.attnsuite-outputs" in done.stderr, done.stderr
    assert sorted(p.name for p in (out / ".attnsuite-outputs").iterdir()) == ["notes.txt"]


def test_an_exported_cdpath_does_not_send_the_scripts_to_another_folder(tmp_path):
    # with CDPATH naming a folder that has a scripts/ of its own, `cd scripts/..` went there and printed
    # it: ROOT became two lines ("out_folder.sh: No such file", "claim_outputs: command not found")
    decoy = tmp_path / "decoy"
    (decoy / "scripts").mkdir(parents=True)
    out = tmp_path / "out"
    fake = _writer(tmp_path, out)
    env = {"PATH": "/usr/bin:/bin", "CDPATH": str(decoy), "OUT": str(out), "PYTHON": str(fake)}
    bench = subprocess.run(["bash", "scripts/ci_bench.sh", "quick", "report"], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=60)
    assert bench.returncode == 0 and (out / "bench.json").is_file(), bench.stderr
    report = subprocess.run(["bash", "scripts/ci_report.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=60)
    assert report.returncode == 0 and "No such file" not in report.stderr, report.stderr
    assert sorted(p.name for p in decoy.iterdir()) == ["scripts"]  # nothing made there
    for script in sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"]:
        text = script.read_text()
        assert 'cd "$(dirname' not in text, f"{script.name} changes folder without clearing CDPATH"


def test_two_folders_that_cannot_be_entered_are_not_the_checkouts_results(tmp_path):
    # both lookups failed and compared equal: such an OUT was taken for results/ and skipped its list
    done = subprocess.run(["bash", "-c", f'. "{ROOT}/scripts/out_folder.sh" && _is_default "$@"', "probe",
                           str(tmp_path / "gone"), str(tmp_path / "also-gone")], timeout=60)
    assert done.returncode == 1
    (tmp_path / "here").mkdir()
    same = subprocess.run(["bash", "-c", f'. "{ROOT}/scripts/out_folder.sh" && _is_default "$@"', "probe",
                           str(tmp_path / "here"), str(tmp_path / "." / "here")], timeout=60)
    assert same.returncode == 0
