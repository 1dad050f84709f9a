"""Every Python script under scripts/ starts: ``--help`` prints its usage and exits 0.

The GPU scripts run only on a lent GPU machine, where a script that fails at import costs a call:
scripts/triton_bench.py once imported the built-in families by their installed name before loading
them, and the whole Triton benchmark of a GPU session was lost. Each script starts in a fresh
process as on that machine: nothing loaded before it, and the suite not installed (this machine's
editable install would otherwise let ``import attnsuite_impls`` find the folder by itself).
About 1 s each.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.py"))


def test_the_scripts_folder_has_python_scripts():
    assert len(SCRIPTS) >= 5, SCRIPTS


# Run in the child before the script: the installed name of the built-in families is not found by
# the import system (a bare GPU machine has no install); registry.load_builtin() still loads them.
NOT_INSTALLED = """
import runpy, sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name == "attnsuite_impls":
            raise ModuleNotFoundError("No module named 'attnsuite_impls' (not installed here)")
        return None
sys.meta_path.insert(0, NotInstalled())
sys.argv = [sys.argv[1], "--help"]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_script_starts_in_a_fresh_process_without_an_install_and_prints_its_usage(script):
    # from another folder: a script must find the repository itself, not rely on the caller's cwd
    done = subprocess.run([sys.executable, "-c", NOT_INSTALLED, str(script)], cwd=ROOT / "docs",
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{script.name} --help exited {done.returncode}:\n{done.stderr[-2000:]}"
    assert "usage" in done.stdout.lower(), f"{script.name} --help printed no usage:\n{done.stdout[:500]}"


SHELL_SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"]


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=[p.name for p in SHELL_SCRIPTS])
def test_shell_script_parses(script):
    # a GPU script with a syntax error costs a device call; bash -n reads it without running anything
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, f"{script.name} does not parse: {done.stderr}"


def test_gpu_session_names_its_calls_when_given_an_unknown_one(tmp_path):
    # PACK_S an hour: where the packer had started its sleep before the script ended, that sleep held
    # the caller's pipe open until it ended (30 s by default: this test had taken 30 s under load);
    # with an hour, such a held pipe times out here
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "no-such-call"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "PACK_S": "3600"})
    assert done.returncode == 2, done.stderr
    assert "unknown call 'no-such-call'" in done.stderr and "isolation" in done.stderr, done.stderr


def test_a_gpu_session_call_killed_at_its_limit_still_leaves_what_its_parts_wrote(tmp_path):
    # The device tool kills a call at its limit and returns only what is under $OUT: s13 lost a whole
    # isolation part when the archive was packed at the end only. Here the abeval call's Python is a
    # stand-in that writes its log and then hangs; the call is killed like the tool kills it.
    import signal
    import tarfile
    import time

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text("#!/bin/sh\necho 'ab_eval: aa1: {\"same\": 18}'\nexec sleep 60\n")
    (fake / "python3").chmod(0o755)
    out = tmp_path / "out"
    # TMPDIR: the call's work folder (mktemp -d) dies with tmp_path, as a SIGKILL skips the script's own cleanup
    env = {"PATH": f"{fake}:/usr/bin:/bin", "OUT": str(out), "PACK_S": "1", "AB_DIR": str(tmp_path / "ab"),
           "TMPDIR": str(tmp_path)}
    proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "abeval"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    archive = out / "abeval.tgz"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if archive.is_file():
                with tarfile.open(archive) as tar:
                    names = tar.getnames()
                    log = tar.extractfile("./abeval/run.log") if "./abeval/run.log" in names else None
                    if log is not None and b"aa1" in log.read():
                        break
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    with tarfile.open(archive) as tar:
        log = tar.extractfile("./abeval/run.log").read().decode()
    assert "ab_eval: aa1" in log, f"the archive of a killed call lacks its part's log: {log!r}"


def test_a_process_a_test_starts_imports_attnsuite_from_this_checkout_even_where_it_is_not_installed(tmp_path):
    # -S: no site-packages, so no installed or editable attnsuite; only PYTHONPATH can find it
    done = subprocess.run([sys.executable, "-S", "-c", "import attnsuite; print(attnsuite.__file__)"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().is_relative_to(ROOT), done.stdout


def test_the_cibench_call_without_its_arguments_says_which_variable_is_missing(tmp_path):
    # a device call that ran ci_bench.sh with no arguments would spend a machine start on the default run
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "cibench"], capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "OUT": str(tmp_path), "PACK_S": "3600"})
    assert done.returncode != 0 and "cibench: set CIBENCH_ARGS" in done.stderr, done.stderr


def _devprobe_call(tmp_path, out, cache_root, **env_extra):
    """The devprobe call with a python3 that does nothing: the call's set-up and end alone."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "python3").write_text("#!/bin/sh\nexit 0\n")
    (fake / "python3").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "OUT": str(out), "PACK_S": "3600", "CACHE_ROOT": str(cache_root),
           "TMPDIR": str(tmp_path), **env_extra}
    return subprocess.run(["bash", str(ROOT / "scripts" / "gpu_session.sh"), "devprobe"], capture_output=True,
                          text=True, timeout=120, env=env)


@pytest.mark.parametrize("compress", ["xz", "gzip"])
def test_a_gpu_session_call_packs_its_compile_caches_and_a_later_call_on_another_machine_restores_them(tmp_path, compress):
    # A warm-cache run needs the caches of an earlier call; the device tool seldom gives the same
    # machine twice, so one call packs them into parts (of at most 15 MiB: the tool returns files of
    # at most 16 MiB) and the next carries them. The parts here are 1 MiB, so that a few MiB split.
    assert "CACHE_PART_SIZE:-15m" in (ROOT / "scripts" / "gpu_session.sh").read_text()
    first = tmp_path / "first-cache"
    (first / "triton" / "abc").mkdir(parents=True)
    (first / "triton" / "abc" / "kernel.cubin").write_bytes(os.urandom(5 * 2**19))  # 2.5 MiB, incompressible
    out = tmp_path / "out1"
    done = _devprobe_call(tmp_path, out, first, PACK_CACHE="1", CACHE_PART_SIZE="1m", CACHE_COMPRESS=compress)
    assert done.returncode == 0, done.stderr
    parts = sorted(out.glob("cache.tar.xz.part-*" if compress == "xz" else "cache.tgz.part-*"))
    assert len(parts) == 3 and all(p.stat().st_size <= 2**20 for p in parts), [p.stat().st_size for p in parts]

    fresh = tmp_path / "fresh-cache"  # another machine: nothing cached yet
    done = _devprobe_call(tmp_path, tmp_path / "out2", fresh, CACHE_FROM=str(out))
    assert done.returncode == 0, done.stderr
    assert "cache: restored from" in done.stdout, done.stdout
    assert (fresh / "triton" / "abc" / "kernel.cubin").read_bytes() == (first / "triton" / "abc" / "kernel.cubin").read_bytes()

    # the same machine again (its caches filled): kept, not overwritten by the older parts
    (fresh / "triton" / "abc" / "kernel.cubin").write_bytes(b"newer")
    done = _devprobe_call(tmp_path, tmp_path / "out3", fresh, CACHE_FROM=str(out))
    assert "already filled on this machine" in done.stdout, done.stdout
    assert (fresh / "triton" / "abc" / "kernel.cubin").read_bytes() == b"newer"


def test_a_gpu_session_call_told_to_restore_caches_from_a_folder_without_parts_says_they_start_empty(tmp_path):
    (tmp_path / "empty").mkdir()
    done = _devprobe_call(tmp_path, tmp_path / "out", tmp_path / "cache", CACHE_FROM=str(tmp_path / "empty"))
    assert done.returncode == 0, done.stderr
    assert "holds no cache.tar.xz.part-* or cache.tgz.part-*: the caches start empty" in done.stdout, done.stdout
