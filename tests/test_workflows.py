"""The CI workflows: valid for the parts of the GitHub Actions schema they use, calling repo scripts.

actionlint is used when it is on PATH (its Python wrapper downloads a binary from GitHub at
install time, which this machine cannot do); otherwise a JSON schema written for the keys these
workflows use, plus checks that every script a step calls exists and parses.
"""

from __future__ import annotations

import re
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


def test_gpu_workflow_uploads_results_and_plots_even_when_the_gate_fails():
    upload = next(s for s in steps(load("gpu.yml")) if s.get("uses", "").startswith("actions/upload-artifact"))
    assert upload["if"] == "always()"
    assert "results/bench.json" in upload["with"]["path"] and "results/plots/" in upload["with"]["path"]
    later = [s for s in steps(load("gpu.yml")) if "ci_report" in s.get("run", "") or "pr_comment" in s.get("run", "")]
    assert all("failure()" in s["if"] for s in later), "reports must run after a failed gate"


# --------------------------------------------------------------------------- the GPU workflow's rules
# A tiny evaluator for the `if:` expressions these workflows use (contexts, 'strings', == != ! && ||,
# parentheses, success()/failure()/always()), so the tests read "on a fork's PR, this does not run"
# instead of pinning the text of a condition.

_TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(==|!=|&&|\|\||!|\(|\))|([A-Za-z_][\w.-]*)(\(\))?)")


def evaluate(expr: str, ctx: dict, *, status: str = "success") -> bool:
    """Truth of a GitHub Actions ``if:`` expression (the subset above) in context ``ctx``
    (dotted names to values; a missing name is ""). ``status`` is "success" or "failure": how
    the steps before went."""
    expr = expr.strip()
    if expr.startswith("${{") and expr.endswith("}}"):
        expr = expr[3:-2]
    out, pos, has_status = [], 0, False
    while pos < len(expr.rstrip()):
        m = _TOKEN.match(expr, pos)
        assert m and m.end() > pos, f"cannot read the expression at {expr[pos:]!r}"
        pos = m.end()
        lit, op, name, call = m.groups()
        if lit is not None:
            out.append(repr(lit[1:-1].replace("''", "'")))
        elif op is not None:
            out.append({"&&": " and ", "||": " or ", "!": " not "}.get(op, f" {op} "))
        elif call:
            assert name in ("success", "failure", "always", "cancelled"), name
            has_status = True
            out.append(repr({"success": status == "success", "failure": status == "failure",
                             "always": True, "cancelled": False}[name]))
        else:
            out.append(repr(ctx.get(name, "")))
    value = bool(eval("".join(out), {"__builtins__": {}}, {}))  # only literals and operators are left
    # GitHub adds success() to a condition that names no status function
    return value if has_status else value and status == "success"


REPO = "owner/attn"
CONTEXTS = {
    "push to main": {"github.event_name": "push", "github.repository": REPO, "github.ref": "refs/heads/main"},
    "same-repo PR": {"github.event_name": "pull_request", "github.repository": REPO,
                     "github.event.pull_request.head.repo.full_name": REPO},
    "fork PR": {"github.event_name": "pull_request", "github.repository": REPO,
                "github.event.pull_request.head.repo.full_name": "stranger/attn"},
}


def gpu_job() -> dict:
    (job,) = load("gpu.yml")["jobs"].values()
    return job


def steps_run(ctx_name: str, status: str = "success") -> list[dict]:
    """The GPU job's steps that run in a context (after earlier steps went as ``status``)."""
    job, ctx = gpu_job(), CONTEXTS[ctx_name]
    if "if" in job and not evaluate(job["if"], ctx):
        return []
    return [s for s in job["steps"] if evaluate(s.get("if", "success()"), ctx, status=status)]


def run_lines(ctx_name: str, status: str = "success") -> list[str]:
    return [" ".join(s["run"].split()) for s in steps_run(ctx_name, status) if "run" in s]


@pytest.mark.parametrize("expr, ctx, status, expected", [
    ("github.event_name == 'pull_request'", {"github.event_name": "pull_request"}, "success", True),
    ("github.event_name == 'pull_request'", {"github.event_name": "pull_request"}, "failure", False),
    ("(success() || failure()) && github.event_name != 'push'", {"github.event_name": "push"}, "failure", False),
    ("(success() || failure()) && !(github.event_name == 'push')", {"github.event_name": "x"}, "failure", True),
    ("always()", {}, "failure", True),
])
def test_the_expression_evaluator_reads_conditions_as_github_does(expr, ctx, status, expected):
    assert evaluate(expr, ctx, status=status) is expected


@pytest.mark.parametrize("name", ["cpu.yml", "gpu.yml"])
def test_no_checkout_leaves_the_token_in_the_git_config_for_later_steps(name):
    for s in steps(load(name)):
        if s.get("uses", "").startswith("actions/checkout"):
            assert s.get("with", {}).get("persist-credentials") is False, f"{name}: {s.get('name')}"


def test_the_gpu_token_reads_code_and_writes_only_pull_request_comments():
    assert load("gpu.yml")["permissions"] == {"contents": "read", "pull-requests": "write"}


def test_no_workflow_runs_on_pull_request_target():
    # pull_request_target runs with the base's secrets and a write token on a fork's request
    for name in ("cpu.yml", "gpu.yml"):
        assert "pull_request_target" not in load(name)["on"], name


@pytest.mark.parametrize("ctx, runs", [("push to main", True), ("same-repo PR", True), ("fork PR", False)])
def test_a_fork_pull_request_never_runs_on_the_self_hosted_gpu_runner(ctx, runs):
    assert {"self-hosted", "gpu"} <= set(gpu_job()["runs-on"])
    assert bool(steps_run(ctx)) is runs


@pytest.mark.parametrize("status", ["success", "failure"])
def test_a_push_to_main_runs_correctness_then_the_full_tier_enforced_against_the_stored_baseline(status):
    lines = run_lines("push to main", status)
    bench = [l for l in lines if "ci_bench.sh" in l]
    assert bench == ["bash scripts/ci_bench.sh full enforce"]
    assert not any("attnsuite.ab" in l or "pr_comment" in l for l in lines)
    if status == "success":
        assert lines.index("bash scripts/gpu_correctness.sh") < lines.index(bench[0])


@pytest.mark.parametrize("status", ["success", "failure"])
def test_a_pull_request_runs_the_tier_once_report_only_then_ab_of_the_flagged_cases_against_its_base(status):
    lines = run_lines("same-repo PR", status)
    bench = [l for l in lines if "ci_bench.sh" in l or "pytest bench" in l]
    assert len(bench) == 1, "the whole tier must run exactly once on a PR"
    assert bench[0].startswith("bash scripts/ci_bench.sh full report ")
    gate_json = re.search(r"--attn-gate-json (\S+)", bench[0]).group(1)
    (ab_line,) = [l for l in lines if "attnsuite.ab" in l or "attnsuite ab" in l]
    assert lines.index(bench[0]) < lines.index(ab_line)
    assert f"--cases-from {gate_json}" in ab_line and '--base "$BASE_SHA"' in ab_line
    assert "--gate report" not in ab_line, "A/B must fail the job on what it confirms"
    assert gpu_job()["env"]["BASE_SHA"] == "${{ github.event.pull_request.base.sha }}"


def test_a_pull_request_is_judged_by_the_base_branchs_baselines_and_thresholds_not_its_own():
    pr_steps = steps_run("same-repo PR")
    base_checkout = [s for s in pr_steps if s.get("uses", "").startswith("actions/checkout")
                     and s.get("with", {}).get("ref") == "${{ github.event.pull_request.base.sha }}"]
    assert len(base_checkout) == 1, "the base's baselines must be checked out apart"
    where = base_checkout[0]["with"]["path"].rstrip("/")
    assert where not in ("", ".") and base_checkout[0]["with"].get("persist-credentials") is False
    lines = run_lines("same-repo PR")
    bench = next(l for l in lines if "ci_bench.sh" in l)
    ab_line = next(l for l in lines if "attnsuite.ab" in l)
    assert f"--attn-baselines-dir {where}/baselines" in bench
    assert f"--attn-thresholds {where}/baselines/thresholds.json" in bench
    assert f"--thresholds {where}/baselines/thresholds.json" in ab_line


def test_the_main_checkout_has_the_history_the_ab_worktree_needs_and_no_stored_credentials():
    first = gpu_job()["steps"][0]
    assert first["uses"].startswith("actions/checkout") and "if" not in first
    assert first["with"]["fetch-depth"] == 0 and first["with"]["persist-credentials"] is False


@pytest.mark.parametrize("status", ["success", "failure"])
def test_the_pr_comment_shows_the_ab_verdict_first_even_after_a_failure(status):
    lines = run_lines("same-repo PR", status)
    (comment,) = [l for l in lines if "pr_comment.py" in l]
    ab_line = next(l for l in lines if "attnsuite.ab" in l)
    ab_md = re.search(r"--markdown (\S+)", ab_line).group(1)
    assert comment.split()[2:4] == [ab_md, "results/gate.md"]
    assert lines.index(ab_line) < lines.index(comment)
    assert "pr_comment.py" not in " ".join(run_lines("push to main", status))


def test_gpu_workflow_uploads_the_ab_results_too():
    upload = next(s for s in steps(load("gpu.yml")) if s.get("uses", "").startswith("actions/upload-artifact"))
    for path in ("results/gate.json", "results/ab.md", "results/ab.json", "results/ab/"):
        assert path in upload["with"]["path"].split(), path
