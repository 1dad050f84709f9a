"""scripts/pr_comment.py: one PR comment, found by its marker AND its author, edited in place.

A fake GitHub (a request function) serves comments and answers ``GET /user`` as a personal
token (a user) or as the Actions installation token (403). The command's exit status and its
``::warning::`` line for a refused comment are checked against a fake GitHub on a local HTTP server,
through the script's own HTTP client, as the workflow runs it.
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("pr_comment", ROOT / "scripts" / "pr_comment.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


pc = _load()
BOT = {"login": "github-actions[bot]", "type": "Bot"}
ME = {"login": "ci-user", "type": "User"}
MALLORY = {"login": "mallory", "type": "User"}
ACTIONS_ENV = {"GITHUB_ACTIONS": "true"}


class FakeGitHub:
    """Records requests; serves a PR's comments in pages of 100; ``user`` answers GET /user (None: 403)."""

    def __init__(self, comments, user=None):
        self.comments = comments
        self.user = user
        self.calls = []

    def __call__(self, method, url, data):
        self.calls.append((method, url, data))
        if url.endswith("/user"):
            if self.user is None:
                raise pc.ApiError(403, "Resource not accessible by integration")
            return self.user
        if method == "GET":
            page = int(re.search(r"[?&]page=(\d+)", url).group(1))
            return self.comments[(page - 1) * 100: page * 100]
        if method == "POST":
            return {"id": 999}
        return {}

    def writes(self):
        return [c for c in self.calls if c[0] in ("PATCH", "POST")]


def comment(cid, body, user):
    return {"id": cid, "body": body, "user": dict(user)}


# --------------------------------------------------------------------------- who the token is


@pytest.mark.parametrize("user, env, author, expected", [
    (ME, {}, None, pc.Identity("ci-user", "User")),                       # a personal token: GET /user
    (None, ACTIONS_ENV, None, pc.Identity("github-actions[bot]", "Bot")),  # GITHUB_TOKEN: /user refused
    (None, {}, "my-app[bot]", pc.Identity("my-app[bot]", "Bot")),          # another app, named
])
def test_the_token_identity_comes_from_get_user_or_is_the_actions_bot(user, env, author, expected):
    assert pc.token_identity(FakeGitHub([], user), "https://api", env, author) == expected


def test_a_refused_get_user_outside_actions_is_an_error_not_a_guess():
    with pytest.raises(pc.ApiError):
        pc.token_identity(FakeGitHub([], None), "https://api", {}, None)


# --------------------------------------------------------------------------- which comment is ours


@pytest.mark.parametrize("author, ident, ours", [
    (BOT, pc.Identity("github-actions[bot]", "Bot"), True),
    (MALLORY, pc.Identity("github-actions[bot]", "Bot"), False),  # someone planted the marker
    ({"login": "github-actions[bot]", "type": "User"}, pc.Identity("github-actions[bot]", "Bot"), False),
    (ME, pc.Identity("CI-User", "User"), True),  # logins are case-insensitive on GitHub
    (BOT, pc.Identity("ci-user", "User"), False),
])
def test_a_comment_is_ours_only_with_the_marker_and_our_author(author, ident, ours):
    assert pc.is_ours(comment(1, f"{pc.MARKER}\nold", author), ident) is ours
    assert pc.is_ours(comment(1, "no marker here", author), ident) is False


def test_a_planted_marker_comment_by_someone_else_is_left_alone_and_ours_is_created():
    gh = FakeGitHub([comment(5, f"{pc.MARKER}\nplanted", MALLORY)])
    how, cid = pc.upsert_comment(gh, "https://api", "o/r", 7, "diff", identity=pc.Identity(**BOT))
    assert (how, cid) == ("created", 999)
    assert [c[0] for c in gh.writes()] == ["POST"]


def test_our_comment_is_updated_even_on_a_later_page_and_after_a_planted_one():
    comments = ([comment(i, "lgtm", MALLORY) for i in range(150)] + [comment(500, f"{pc.MARKER}\nfake", MALLORY)]
                + [comment(777, f"{pc.MARKER}\nold", BOT)])
    gh = FakeGitHub(comments)
    how, cid = pc.upsert_comment(gh, "https://api", "o/r", 5, f"{pc.MARKER}\nnew diff", identity=pc.Identity(**BOT))
    assert (how, cid) == ("updated", 777)
    assert gh.writes() == [("PATCH", "https://api/repos/o/r/issues/comments/777", {"body": f"{pc.MARKER}\nnew diff"})]


def test_one_comment_is_created_when_none_carries_the_marker():
    gh = FakeGitHub([comment(1, "nice", ME)])
    how, cid = pc.upsert_comment(gh, "https://api", "o/r", 5, "diff without marker", identity=pc.Identity(**BOT))
    assert (how, cid) == ("created", 999)
    method, _, data = gh.calls[-1]
    assert method == "POST" and data["body"].startswith(pc.MARKER) and data["body"].endswith("diff without marker")


def test_an_oversized_diff_is_cut_to_githubs_limit():
    body = pc.fit(pc.MARKER + "\n" + "x" * 100_000)
    assert len(body) <= 65536 and "cut to fit" in body


def _table(rows: int, tag: str) -> str:
    head = "| case | base ms | head ms | change | verdict |\n|---|---:|---:|---:|---|\n"
    return head + "".join(f"| {tag}/case-{i:05d}/fwd/bf16 | 1.{i:03d} | 1.{i:03d} | +0.0% | same |\n"
                          for i in range(rows))


def gate_markdown(unchanged_rows: int, nested_at_end: bool) -> str:
    """A gate.md like a full tier's: a summary, a table of changed cases, collapsed details (one nested),
    and a long collapsed table of unchanged cases; ``nested_at_end`` puts a nested <details> in the
    long part, so that the cut falls two levels deep."""
    parts = [pc.MARKER, "### Gate: 3 slower, 2 faster, 372 unchanged", "", _table(5, "changed"),
             "<details><summary>Why (per case)</summary>", "", "<details><summary>sdpa-flash</summary>", "",
             _table(3, "why"), "</details>", "", "</details>", "",
             f"<details><summary>Unchanged ({unchanged_rows})</summary>", ""]
    if nested_at_end:
        parts += [_table(50, "outer"), "<details><summary>more</summary>", ""]
    parts += [_table(unchanged_rows, "unchanged"), ""]
    if nested_at_end:
        parts += ["</details>", ""]
    parts += ["</details>", "", "Thresholds: base branch.", "```", "attnsuite compare ...", "```", ""]
    return "\n".join(parts)


def _details_depth_at(text: str, pos: int) -> int:
    """How many <details> are open at ``pos`` (counted here, not by the code under test)."""
    depth = 0
    for m in re.finditer(r"<(/?)details\b[^>]*>", text[:pos]):
        depth += -1 if m.group(1) else 1
    return depth


@pytest.mark.parametrize("nested_at_end", [False, True], ids=["cut-in-details", "cut-in-nested-details"])
def test_a_cut_comment_closes_its_details_keeps_whole_rows_and_shows_the_note_outside(nested_at_end):
    md = gate_markdown(2000, nested_at_end)
    assert len(md) > 120_000
    body = pc.fit(md)
    assert len(body) <= pc.MAX_BODY <= 65536
    # every <details> the cut left open is closed, in order, never below zero
    depth = 0
    for m in re.finditer(r"<(/?)details\b[^>]*>", body):
        depth += -1 if m.group(1) else 1
        assert depth >= 0
    assert depth == 0 and body.count("<details") == body.count("</details>")
    # the note is outside every <details>, after a blank line (not a table row), and says where the whole is
    at = body.index("cut to fit a comment")
    assert _details_depth_at(body, at) == 0
    assert body.rindex("</details>") < at
    assert "\n\n---\n\n**... (cut to fit a comment" in body
    assert "job summary" in body[at:] and "artifacts" in body[at:]
    # no half table row: every kept row is one of the input's rows, whole; a table ends before </details>
    lines = body.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("|"):
            assert line in md.splitlines() and line.endswith("|"), line
        if line.strip() == "</details>" and i:
            assert not lines[i - 1].startswith("|"), "a </details> right under a table row reads as a row"
    assert body.startswith(pc.MARKER) and body.count(pc.MARKER) == 1


def test_the_posted_cut_note_names_the_files_and_links_the_run(tmp_path):
    report = tmp_path / "gate.md"
    report.write_text(gate_markdown(2000, False))
    gh = FakeGitHub([], None)
    env = {**ACTIONS_ENV, "GITHUB_SERVER_URL": "https://github.example", "GITHUB_RUN_ID": "77"}
    assert pc.main([str(report), "--pr", "4", "--repo", "o/r"], request=gh, env=env) == 0
    (_, _, data), = gh.writes()
    note = data["body"][data["body"].index("cut to fit a comment"):]
    assert f"the artifacts ({report})" in note and "(https://github.example/o/r/actions/runs/77)" in note
    assert len(data["body"]) <= pc.MAX_BODY


def test_a_cut_inside_a_code_fence_closes_the_fence_before_the_note():
    md = pc.MARKER + "\n<details><summary>log</summary>\n\n```\n" + "a line of log output\n" * 5000 + "```\n</details>\n"
    body = pc.fit(md)
    at = body.index("cut to fit a comment")
    assert len(re.findall(r"^```", body[:at], re.MULTILINE)) % 2 == 0
    assert _details_depth_at(body, len(body)) == 0 and len(body) <= pc.MAX_BODY


def test_a_body_under_the_limit_is_left_as_it_is():
    md = gate_markdown(10, True)
    assert pc.fit(md) == md


# --------------------------------------------------------------------------- the command


def test_several_reports_become_one_comment_with_the_marker_once_in_the_order_given(tmp_path):
    a, b = tmp_path / "ab.md", tmp_path / "gate.md"
    a.write_text(f"{pc.MARKER}\n### A/B: pass\n")
    b.write_text(f"{pc.MARKER}\n### stored baseline: 2 slower\n")
    gh = FakeGitHub([comment(3, f"{pc.MARKER}\nold", BOT)], user=None)
    status = pc.main([str(a), str(b), str(tmp_path / "absent.md"), "--pr", "4", "--repo", "o/r"], request=gh,
                     env=ACTIONS_ENV)
    assert status == 0
    (method, url, data), = gh.writes()
    assert method == "PATCH" and url.endswith("/comments/3")
    assert data["body"].count(pc.MARKER) == 1 and data["body"].startswith(pc.MARKER)
    assert data["body"].index("A/B: pass") < data["body"].index("stored baseline")


def test_a_missing_report_is_named_first_in_the_comment_and_none_missing_adds_no_line(tmp_path, capsys):
    # a failed A/B step writes no ab.md: the comment had been the report-only stored-baseline diff
    # alone, reading "not failing" on a PR whose job was red
    gate = tmp_path / "gate.md"
    gate.write_text(f"{pc.MARKER}\n### attnsuite regression gate: REPORTED (gate in report mode: not failing)\n")
    assert pc.main([str(tmp_path / "ab.md"), str(gate), "--print"], env={}) == 0
    body = capsys.readouterr().out
    first = body.splitlines()[1]
    assert first.startswith("> ⛔ **Missing from this comment: `ab.md`**: the step that writes it wrote no report"), body
    assert body.index("Missing from this comment") < body.index("REPORTED")
    ab = tmp_path / "ab.md"
    ab.write_text(f"{pc.MARKER}\n### A/B: pass\n")
    assert pc.main([str(ab), str(gate), "--print"], env={}) == 0
    assert "Missing from this comment" not in capsys.readouterr().out


def test_without_any_report_file_the_step_fails_and_the_comment_says_no_report_was_written(tmp_path):
    # it had posted nothing, so the comment of an earlier push (a PASS) stood on a pull request whose job
    # was now red (an outside tester's trial)
    gh = FakeGitHub([comment(3, f"{pc.MARKER}\n### attnsuite regression gate: ✅ pass", BOT)], user=None)
    assert pc.main([str(tmp_path / "ab.md"), str(tmp_path / "gate.md"), "--pr", "4", "--repo", "o/r"], request=gh,
                   env=ACTIONS_ENV) == 1
    (method, url, data), = gh.writes()
    assert method == "PATCH" and url.endswith("/comments/3")
    assert data["body"].startswith(f"{pc.MARKER}\n> ⛔ **Missing from this comment: `ab.md`, `gate.md`**"), data["body"]
    assert "pass" not in data["body"]


@pytest.mark.parametrize("argv, env, missing", [
    (["--repo", "o/r", "--pr", "4"], {}, ["a token (GITHUB_TOKEN)"]),
    (["--pr", "4"], {"GITHUB_TOKEN": "t"}, ["a repository (--repo or GITHUB_REPOSITORY)"]),
    (["--repo", "o/r"], {"GITHUB_TOKEN": "t"},
     ["a pull request number (--pr, or the pull_request event file GITHUB_EVENT_PATH)"]),
], ids=["no-token", "no-repository", "no-pr"])
def test_outside_a_pull_request_nothing_is_posted_and_the_missing_piece_is_named(tmp_path, capsys, argv, env, missing):
    f = tmp_path / "ab.md"
    f.write_text("<!-- attnsuite-gate -->\nfine\n")
    assert pc.main([str(f), *argv], env=env) == 0
    err = capsys.readouterr().err
    assert err.startswith("pr_comment: nothing posted: missing " + "; ".join(missing)), err
    assert "--print shows the comment's body" in err


def test_print_shows_the_joined_body_as_it_would_be_posted_without_any_token(tmp_path, capsys):
    a, g = tmp_path / "ab.md", tmp_path / "gate.md"
    a.write_text("A/B says pass\n")
    g.write_text("gate says\n" + "| a row |\n" * (pc.MAX_BODY // 10 + 100))  # over the limit: cut as posting cuts it
    assert pc.main([str(a), str(g), "--print"], env={}) == 0
    body = capsys.readouterr().out
    assert body.index("A/B says pass") < body.index("gate says") and pc.MARKER in body
    assert len(body) <= pc.MAX_BODY + 1 and "cut to fit a comment" in body


class FailingGitHub(FakeGitHub):
    """Answers every comment request with one HTTP status."""

    def __init__(self, status):
        super().__init__([], BOT)
        self.status = status

    def __call__(self, method, url, data):
        if "/comments" in url:
            raise pc.ApiError(self.status, "failed", f"{method} /repos/o/r/issues/4/comments")
        return super().__call__(method, url, data)


def test_an_api_error_is_reported_in_one_line_with_exit_status_1(tmp_path, capsys):
    f = tmp_path / "gate.md"
    f.write_text("diff")
    assert pc.main([str(f), "--pr", "4", "--repo", "o/r"], request=FailingGitHub(500), env={}) == 1
    assert "GitHub API error: HTTP 500" in capsys.readouterr().err


# --------------------------------------------------------------------------- against a local HTTP server


class _Handler(http.server.BaseHTTPRequestHandler):
    """A fake GitHub API: ``GET /user`` is refused (the Actions token), the PR's comments list is
    empty, and a comment request answers with the server's ``comment_status``."""

    def _answer(self, status, payload):
        data = json.dumps(payload).encode()
        self.send_response(status, {403: "Forbidden", 404: "Not Found", 500: "Internal Server Error"}.get(status))
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.server.seen.append(("GET", self.path, self.headers.get("Authorization")))
        if self.path == "/user":
            self._answer(403, {"message": "Resource not accessible by integration"})
        elif self.server.comment_status == 404:
            self._answer(404, {"message": "Not Found"})
        else:
            self._answer(200, [])

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.server.seen.append(("POST", self.path, body))
        status = self.server.comment_status
        self._answer(status, {"id": 31} if status == 201 else {"message": "Resource not accessible by integration"})

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_api():
    def start(comment_status):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.comment_status, server.seen = comment_status, []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    servers = []
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def run_command(tmp_path, server, *extra):
    """scripts/pr_comment.py as the workflow runs it, inside Actions, against ``server``."""
    report = tmp_path / "gate.md"
    report.write_text(f"{pc.MARKER}\n### Gate: pass\n")
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 4}}))
    env = {"PATH": os.environ["PATH"], "GITHUB_TOKEN": "t0ken", "GITHUB_ACTIONS": "true", "GITHUB_REPOSITORY": "o/r",
           "GITHUB_EVENT_PATH": str(event), "GITHUB_API_URL": f"http://127.0.0.1:{server.server_address[1]}"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "pr_comment.py"), str(report), *extra],
                          capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize("status, check", [
    (403, "pull-requests: write"),  # a Dependabot PR, a read-only token: may not comment
    (404, "cannot be seen"),        # a PR the token cannot see
])
def test_a_refused_comment_is_a_warning_naming_the_status_and_the_step_passes(tmp_path, fake_api, status, check):
    server = fake_api(status)
    done = run_command(tmp_path, server)
    assert done.returncode == 0, done.stdout + done.stderr
    (warning,) = [line for line in done.stdout.splitlines() if line.startswith("::warning")]
    assert f"HTTP {status}" in warning and check in warning and "gate's verdict stands" in warning
    assert "/repos/o/r/issues/4/comments" in warning
    assert "Traceback" not in done.stderr
    assert ("GET", "/user", "Bearer t0ken") in server.seen  # it went through the real client


def test_another_api_failure_still_fails_the_command_in_one_line(tmp_path, fake_api):
    done = run_command(tmp_path, fake_api(500))
    assert done.returncode == 1
    assert "pr_comment: GitHub API error: HTTP 500" in done.stderr and "Traceback" not in done.stderr
    assert "::warning" not in done.stdout


def test_an_unreachable_api_fails_the_command_in_one_line(tmp_path, fake_api):
    server = fake_api(201)
    server.shutdown()
    server.server_close()  # nothing listens on the port now
    done = run_command(tmp_path, server)
    assert done.returncode == 1
    assert "pr_comment: GitHub API error: cannot reach the API" in done.stderr and "Traceback" not in done.stderr


def test_a_comment_that_the_api_accepts_is_created(tmp_path, fake_api):
    server = fake_api(201)
    done = run_command(tmp_path, server)
    assert done.returncode == 0, done.stderr
    assert "pr_comment: created comment 31 on o/r#4 as github-actions[bot]" in done.stdout
    (post,) = [s for s in server.seen if s[0] == "POST"]
    assert post[1] == "/repos/o/r/issues/4/comments" and post[2]["body"].startswith(pc.MARKER)


# --------------------------------------------------------------------------- the accept-slower label


def test_under_the_label_the_comment_and_the_summary_say_the_slowdowns_were_accepted(tmp_path, fake_api):
    server = fake_api(201)
    summary = tmp_path / "summary.md"
    summary.write_text("### A/B: 2 slower\n")
    env_summary = {"GITHUB_STEP_SUMMARY": str(summary)}
    report = tmp_path / "ab.md"
    report.write_text(f"{pc.MARKER}\n### A/B: 2 slower (report only)\n")
    gh = FakeGitHub([], None)
    assert pc.main([str(report), "--pr", "4", "--repo", "o/r", "--ab-gate", "report"], request=gh,
                   env={**ACTIONS_ENV, **env_summary}) == 0
    (_, _, data), = gh.writes()
    body = data["body"]
    assert body.startswith(pc.MARKER) and f"`{pc.ACCEPT_LABEL}`" in body
    assert body.index(pc.ACCEPT_LABEL) < body.index("A/B: 2 slower"), "the note comes first"
    assert pc.ACCEPT_LABEL in summary.read_text() and summary.read_text().startswith("### A/B: 2 slower")
    # without the label (the default, enforce) neither says it
    gh2 = FakeGitHub([], None)
    summary.write_text("")
    assert pc.main([str(report), "--pr", "4", "--repo", "o/r"], request=gh2, env={**ACTIONS_ENV, **env_summary}) == 0
    assert pc.ACCEPT_LABEL not in gh2.writes()[0][2]["body"] and summary.read_text() == ""


def test_the_pr_number_comes_from_the_actions_event(tmp_path):
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 42}}))
    assert pc.pr_number(str(event)) == 42 and pc.pr_number(None) is None
