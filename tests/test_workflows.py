"""The CI workflows: valid for the parts of the GitHub Actions schema they use, calling repo scripts.

actionlint is used when it is on PATH (its Python wrapper downloads a binary from GitHub at
install time, which this machine cannot do); otherwise a JSON schema written for the keys these
workflows use, plus checks that every script a step calls exists and parses.
"""

from __future__ import annotations

import fnmatch
import os
import re
import subprocess
from pathlib import Path
from typing import Optional

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
                        "properties": {"group": {"type": "string"},
                                       "cancel-in-progress": {"type": ["boolean", "string"]}}},
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


FUNCTIONS = {"contains", "startsWith", "endsWith", "format", "join", "toJSON", "fromJSON", "hashFiles",
             "success", "failure", "always", "cancelled"}


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
        bare = re.sub(r"'(?:[^']|'')*'", "''", expr)  # string literals out
        names = re.findall(r"([A-Za-z_][\w-]*)(?:\.[\w*-]+)*\s*(\()?", bare)
        assert names, f"{name}: {expr}"
        for head, call in names:
            if call:
                assert head in FUNCTIONS, f"{name}: {head}() in {expr}"
            else:
                assert head in {"github", "secrets", "env", "steps", "runner", "matrix", "inputs"}, f"{name}: {expr}"


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
    assert "results/bench.json" in upload_paths() and "results/plots/" in upload_paths()
    later = [s for s in steps(load("gpu.yml")) if "ci_report" in s.get("run", "") or "pr_comment" in s.get("run", "")]
    assert all("failure()" in s["if"] for s in later), "reports must run after a failed gate"


# --------------------------------------------------------------------------- the GPU workflow's rules
# A tiny evaluator for the `if:` expressions these workflows use (contexts, 'strings', == != ! && ||,
# parentheses, success()/failure()/always()), so the tests read "on a fork's PR, this does not run"
# instead of pinning the text of a condition.

_TOKEN = re.compile(r"\s*(?:('(?:[^']|'')*')|(==|!=|&&|\|\||!|\(|\)|,)|([A-Za-z_][\w.*-]*)(\(\))?)")


def _contains(haystack, needle) -> bool:
    """GitHub's contains(): an element of an array, or a substring, compared case-insensitively."""
    if isinstance(haystack, (list, tuple)):
        return any(str(x).casefold() == str(needle).casefold() for x in haystack)
    return str(needle).casefold() in str(haystack).casefold()


def value_of(expr: str, ctx: dict, *, status: str = "success"):
    """The value of a GitHub Actions expression (the subset above, plus contains()) in context
    ``ctx`` (dotted names to values; a missing name is ""); && and || give an operand, as GitHub's do.
    Returns (value, whether a status function was named)."""
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
        elif name == "contains" and expr[pos:].lstrip().startswith("("):
            out.append("_contains")
        else:
            out.append(repr(ctx.get(name, "")))
    # only literals, operators and _contains are left
    return eval("".join(out), {"__builtins__": {}, "_contains": _contains}, {}), has_status


def evaluate(expr: str, ctx: dict, *, status: str = "success") -> bool:
    """Truth of a GitHub Actions ``if:`` expression in context ``ctx``. ``status`` is "success" or
    "failure": how the steps before went."""
    value, has_status = value_of(expr, ctx, status=status)
    # GitHub adds success() to a condition that names no status function
    return bool(value) if has_status else bool(value) and status == "success"


REPO = "owner/attn"
LABELS = "github.event.pull_request.labels.*.name"
ACCEPT = "gate: accept-slower"
_PR = {"github.event_name": "pull_request", "github.repository": REPO, "github.event.action": "synchronize",
       "github.event.pull_request.head.repo.full_name": REPO, LABELS: []}
CONTEXTS = {
    "push to main": {"github.event_name": "push", "github.repository": REPO, "github.ref": "refs/heads/main"},
    "same-repo PR": _PR,
    "fork PR": {**_PR, "github.event.pull_request.head.repo.full_name": "stranger/attn"},
    # a maintainer adds the label: the `labeled` event, the label among the PR's labels
    "labelled PR": {**_PR, "github.event.action": "labeled", "github.event.label.name": ACCEPT,
                    LABELS: ["perf", ACCEPT]},
    # another label added: the job must still run (a skipped run would report success over a failed gate)
    "other label added": {**_PR, "github.event.action": "labeled", "github.event.label.name": "docs",
                          LABELS: ["docs"]},
    "label removed": {**_PR, "github.event.action": "unlabeled", "github.event.label.name": ACCEPT, LABELS: []},
}
GPU_JOB = "gpu-correctness-and-gate"
FORK_JOB = "fork-pr-gpu-gate"


def gpu_job() -> dict:
    return load("gpu.yml")["jobs"][GPU_JOB]


def upload_paths() -> list[str]:
    """The GPU job's artifact paths, ``${{ env.OUT }}`` read as the job's OUT (the folder every step writes)."""
    upload = next(s for s in gpu_job()["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    out = gpu_job()["env"]["OUT"]
    return [re.sub(r"\$\{\{\s*env\.OUT\s*\}\}", out, p.strip()) for p in upload["with"]["path"].splitlines()
            if p.strip()]


def job_env(ctx_name: str) -> dict:
    """The GPU job's env in a context, its expressions evaluated."""
    ctx = CONTEXTS[ctx_name]
    return {k: value_of(v, ctx)[0] if re.fullmatch(r"\$\{\{[^}]*\}\}", str(v).strip())
            else re.sub(r"\$\{\{(.*?)\}\}", lambda m: str(value_of(m.group(1), ctx)[0]), str(v))
            for k, v in gpu_job()["env"].items()}


def steps_run(ctx_name: str, status: str = "success", job: Optional[dict] = None) -> list[dict]:
    """The GPU job's (or ``job``'s) steps that run in a context (after earlier steps went as ``status``)."""
    job, ctx = job or gpu_job(), CONTEXTS[ctx_name]
    if "if" in job and not evaluate(job["if"], ctx):
        return []
    return [s for s in job["steps"] if evaluate(s.get("if", "success()"), ctx, status=status)]


def ab_gate_of(ab_line: str, ctx_name: str) -> str:
    """The --gate an `attnsuite ab` line runs with in a context (its variable resolved; default enforce)."""
    m = re.search(r'--gate[ =]"?\$?\{?(\w+)\}?"?', ab_line)
    return job_env(ctx_name).get(m.group(1), m.group(1)) if m else "enforce"


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
    # --attn-require-baseline: a runner that drifted from every stored baseline fails instead of comparing nothing
    assert bench == ["bash scripts/ci_bench.sh full enforce --attn-require-baseline"]
    assert not any("attnsuite.ab" in l or "pr_comment" in l for l in lines)
    if status == "success":
        assert lines.index("bash scripts/gpu_correctness.sh") < lines.index(bench[0])


@pytest.mark.parametrize("status", ["success", "failure"])
def test_a_pull_request_runs_the_tier_once_report_only_then_ab_of_the_flagged_cases_against_its_base(status):
    lines = run_lines("same-repo PR", status)
    bench = [l for l in lines if "ci_bench.sh" in l or "pytest bench" in l]
    assert len(bench) == 1, "the whole tier must run exactly once on a PR"
    assert bench[0].startswith("bash scripts/ci_bench.sh full report ")
    assert "--attn-require-baseline" in bench[0].split()
    # ci_bench.sh writes the gate's verdicts to $OUT/gate.json (scripts/ci_bench.sh), which A/B reads
    assert '--attn-gate-json "$out/gate.json"' in (ROOT / "scripts" / "ci_bench.sh").read_text()
    gate_json = '"$OUT/gate.json"'
    (ab_line,) = [l for l in lines if "attnsuite.ab" in l or "attnsuite ab" in l]
    assert lines.index(bench[0]) < lines.index(ab_line)
    assert f"--cases-from {gate_json}" in ab_line and '--base "$BASE_SHA"' in ab_line
    assert ab_gate_of(ab_line, "same-repo PR") == "enforce", "A/B must fail the job on what it confirms"
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
    assert comment.split()[2:4] == [ab_md, '"$OUT/gate.md"']
    assert lines.index(ab_line) < lines.index(comment)
    assert "pr_comment.py" not in " ".join(run_lines("push to main", status))


# --------------------------------------------------------------------------- the PR comment never decides the job


def test_a_failed_pr_comment_does_not_fail_the_job_but_the_gate_steps_do():
    pr_steps = steps_run("same-repo PR")
    (comment,) = [s for s in pr_steps if "pr_comment.py" in s.get("run", "")]
    assert comment.get("continue-on-error") is True, "a comment that could not be posted must not turn the job red"
    for s in pr_steps:
        if any(k in s.get("run", "") for k in ("gpu_correctness", "ci_bench", "attnsuite.ab")):
            assert not s.get("continue-on-error"), f"{s['name']}: the gate's verdict decides the job"


# --------------------------------------------------------------------------- the label that accepts a slowdown


def _ab_gate(ctx_name: str) -> str:
    (ab_line,) = [l for l in run_lines(ctx_name) if "attnsuite.ab" in l]
    return ab_gate_of(ab_line, ctx_name)


@pytest.mark.parametrize("ctx, gate", [("same-repo PR", "enforce"), ("labelled PR", "report"),
                                       ("other label added", "enforce"), ("label removed", "enforce")])
def test_the_accept_slower_label_makes_ab_report_only_and_only_that_label(ctx, gate):
    assert _ab_gate(ctx) == gate
    (comment,) = [l for l in run_lines(ctx) if "pr_comment.py" in l]
    # the comment (and the summary) say that the label accepted the regressions
    assert re.search(r'--ab-gate "?\$?(\w+)"?', comment).group(1) in ("AB_GATE", gate)


def test_the_workflow_runs_again_when_the_label_is_added_or_removed_and_for_any_label():
    types = load("gpu.yml")["on"]["pull_request"]["types"]
    assert {"opened", "synchronize", "reopened", "labeled", "unlabeled"} <= set(types)
    for ctx in ("labelled PR", "other label added", "label removed"):
        lines = run_lines(ctx)
        assert any("ci_bench.sh full report" in l for l in lines) and any("attnsuite.ab" in l for l in lines), ctx


def test_the_workflow_names_the_label_that_pr_comment_announces():
    import importlib.util
    spec = importlib.util.spec_from_file_location("pr_comment_for_label", ROOT / "scripts" / "pr_comment.py")
    mod = importlib.util.module_from_spec(spec)
    import sys
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    assert mod.ACCEPT_LABEL == ACCEPT
    assert f"'{ACCEPT}'" in gpu_job()["env"]["AB_GATE"]


# --------------------------------------------------------------------------- a fork's PR is not silently green


def fork_job() -> dict:
    return load("gpu.yml")["jobs"][FORK_JOB]


@pytest.mark.parametrize("ctx, gpu_runs, fork_fails", [
    ("push to main", True, False), ("same-repo PR", True, False), ("labelled PR", True, False),
    ("fork PR", False, True),
])
def test_a_fork_pr_gets_a_failing_check_instead_of_a_skipped_one(ctx, gpu_runs, fork_fails):
    assert bool(steps_run(ctx)) is gpu_runs
    assert bool(steps_run(ctx, job=fork_job())) is fork_fails
    assert bool(steps_run(ctx)) or bool(steps_run(ctx, job=fork_job())), "every event gets a check that can fail"


def test_the_fork_job_fails_on_a_hosted_runner_with_the_procedure_in_its_message(tmp_path):
    job = fork_job()
    assert job["runs-on"] == "ubuntu-latest", "a fork's code never reaches the self-hosted runner"
    assert job.get("permissions") == {} and not any("uses" in s for s in job["steps"]), "it runs nothing of the PR's"
    (step,) = job["steps"]
    done = subprocess.run(["bash", "-c", step["run"]], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert done.returncode != 0
    assert done.stdout.startswith("::error")
    assert "GPU gate not run for a fork PR: a maintainer must push it to a branch" in done.stdout


# --------------------------------------------------------------------------- what the artifact keeps

STAND_IN = """#!/usr/bin/env bash
# python3 for the workflow's steps: creates every file or folder under results/ that its arguments name
# (a name without a suffix is a folder: --plots, --out); the bench plugin's journal beside --benchmark-json
# (kept after a run that a time limit stops: plugin_bench._journal_path); exits 0
[ "$1" = "-c" ] && exit 0
prev=
for arg in "$@"; do
  for path in "${arg#*=}" "$arg"; do
    case "$path" in
      results/*)
        case "${path##*/}" in
          *.*) mkdir -p "$(dirname "$path")" && { [ -e "$path" ] || echo '{}' > "$path"; } ;;
          *) mkdir -p "$path" && touch "$path/x.png" ;;
        esac
        [ "$prev" = --benchmark-json ] && touch "$path.journal.jsonl" ;;
    esac
  done
  prev=$arg
done
exit 0
"""


def _produced(tmp_path: Path) -> set[str]:
    """The files under results/ after every run step of a push and of a PR runs with the stand-in python."""
    (tmp_path / "bin").mkdir()
    stand_in = tmp_path / "bin" / "python3"
    stand_in.write_text(STAND_IN)
    stand_in.chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    (work / "scripts").symlink_to(ROOT / "scripts")  # the scripts cd to the folder above them: work/
    env = {"PATH": f"{stand_in.parent}:/usr/bin:/bin", "HOME": str(tmp_path), "BASE_SHA": "0" * 40}
    for ctx in ("push to main", "same-repo PR"):
        for step in steps_run(ctx):
            if "run" in step:
                step_env = {**env, **{k: str(v) for k, v in job_env(ctx).items()}}
                subprocess.run(["bash", "-c", step["run"]], cwd=work, env=step_env, capture_output=True, timeout=120)
    return {str(p.relative_to(work)) for p in (work / "results").rglob("*") if p.is_file()}


def _kept(path: str, patterns: list[str]) -> bool:
    """Whether upload-artifact keeps ``path``: a folder pattern keeps what is under it; a glob's *
    does not cross a /."""
    for pat in patterns:
        if pat.endswith("/") and path.startswith(pat):
            return True
        if len(pat.split("/")) == len(path.split("/")) and all(
                fnmatch.fnmatchcase(a, b) for a, b in zip(path.split("/"), pat.split("/"))):
            return True
    return False


def test_the_artifact_keeps_every_file_the_steps_write_under_results(tmp_path):
    patterns = upload_paths()
    produced = _produced(tmp_path)
    # the correctness failures (what still names them after a time limit), the correctness logs and XML,
    # the bench journal, the gate's and A/B's outputs, the report: the stand-in ran the real scripts
    for expected in ("results/gpu_correctness.failures", "results/gpu_correctness.xml", "results/gpu_correctness_alone.log",
                     "results/bench.json", "results/bench.log", "results/bench.json.journal.jsonl", "results/gate.md",
                     "results/ab.json", "results/report.html", "results/results.md"):
        assert expected in produced, sorted(produced)
    missed = sorted(p for p in produced if not _kept(p, patterns) and not p.endswith(".lock"))
    assert missed == [], f"written under results/ but not uploaded: {missed}"
    stale = [pat for pat in patterns if not any(_kept(p, [pat]) for p in produced)]
    assert stale == [], f"uploaded but written by no step: {stale}"


def test_the_bench_journal_is_named_as_the_stand_in_names_it():
    plugin_bench = pytest.importorskip("attnsuite.plugin_bench")

    class Config:
        rootpath = ROOT

        @staticmethod
        def getoption(name, default=None):
            return {"--attn-journal": None, "benchmark_json": "results/bench.json"}.get(name, default)

    assert str(plugin_bench._journal_path(Config())) == "results/bench.json.journal.jsonl"


def test_gpu_workflow_uploads_the_ab_results_too():
    for path in ("results/gate.json", "results/ab.md", "results/ab.json", "results/ab/"):
        assert path in upload_paths(), path


def test_every_gpu_step_writes_under_the_jobs_out_folder_and_the_upload_takes_it_from_there():
    # steps had named results/ themselves beside `OUT: results` (and the PR gate passed a second
    # --attn-gate-json into results/): a runner given another OUT split its files over two folders
    assert "results" not in run_text({"jobs": {"gpu": gpu_job()}}), "a step names results/ instead of $OUT"
    upload = next(s for s in gpu_job()["steps"] if s.get("uses", "").startswith("actions/upload-artifact"))
    assert all(p.strip().startswith("${{ env.OUT }}/") for p in upload["with"]["path"].splitlines() if p.strip()), \
        upload["with"]["path"]
    assert "--attn-gate-json" not in run_text({"jobs": {"gpu": gpu_job()}})  # ci_bench.sh writes $OUT/gate.json


@pytest.mark.parametrize("name", ["cpu.yml", "gpu.yml"])
@pytest.mark.parametrize("event, cancels", [("pull_request", True), ("push", False), ("workflow_dispatch", False)])
def test_a_newer_run_cancels_an_older_one_only_on_a_pull_request(name, event, cancels):
    # cancel-in-progress: true had cancelled the gate run of an earlier push to main, so the commit
    # that regressed could go unjudged
    value = load(name)["concurrency"]["cancel-in-progress"]
    expr = value.strip().removeprefix("${{").removesuffix("}}").strip() if isinstance(value, str) else None
    assert expr is not None, f"{name}: cancel-in-progress is {value!r}, expected an expression"
    assert evaluate(expr, {"github.event_name": event}) is cancels


def test_every_python_the_gpu_workflow_runs_is_the_runners_python():
    # the A/B and PR-comment steps had run a bare python3: on a runner whose torch lives in a venv
    # (PYTHON=/opt/venv/bin/python) A/B failed with "No module named 'numpy'" (a first-time user's trial)
    wf = load("gpu.yml")
    runs = [s["run"] for s in steps(wf) if "run" in s]
    bare = [r for r in runs if re.search(r"(^|[\s;&|(])python3?\s", r)]
    assert bare == [], bare
    assert any('"$PYTHON" -m attnsuite.ab' in r for r in runs) and any('"$PYTHON" scripts/pr_comment.py' in r for r in runs)
    assert all(job.get("env", {}).get("PYTHON") for name, job in wf["jobs"].items() if name != "fork-pr-gpu-gate")


def test_the_gpu_job_keeps_every_compile_cache_in_one_folder_the_runner_keeps(tmp_path):
    # the driver's JIT cache too: cuDNN's attention kernels are compiled by the driver on first use,
    # 0.6-2.2 s per SDPA step in a fresh process and 0.1-0.16 s with its cache filled (an H200,
    # docs/evidence/h200-2026-12-04-s35); it had been left to the driver's small default in $HOME
    wf = load("gpu.yml")
    env = next(job["env"] for name, job in wf["jobs"].items() if "TRITON_CACHE_DIR" in job.get("env", {}))
    caches = {key: env[key] for key in ("TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR", "CUDA_CACHE_PATH")}
    assert len({value.rsplit("/", 1)[0] for value in caches.values()}) == 1, caches
    assert int(env["CUDA_CACHE_MAXSIZE"]) == 4 * 2**30  # the driver's largest
    # and the device sessions model that runner: the same three caches under the one folder they pack
    script = (ROOT / "scripts" / "gpu_session.sh").read_text()
    for line in ("TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$cache/triton}", "CUDA_CACHE_PATH=${CUDA_CACHE_PATH:-$cache/cuda}",
                 "TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$cache/inductor}"):
        assert line in script, line
