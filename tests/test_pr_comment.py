"""scripts/pr_comment.py: one PR comment, found by its marker AND its author, edited in place.

A fake GitHub (a request function) serves comments and answers ``GET /user`` as a personal
token (a user) or as the Actions installation token (403).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
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


def test_without_any_report_file_the_step_fails_and_posts_nothing(tmp_path):
    gh = FakeGitHub([])
    assert pc.main([str(tmp_path / "none.md"), "--pr", "4", "--repo", "o/r"], request=gh, env=ACTIONS_ENV) == 1
    assert gh.calls == []


def test_an_api_error_is_reported_in_one_line_with_exit_status_1(tmp_path, capsys):
    f = tmp_path / "gate.md"
    f.write_text("diff")
    assert pc.main([str(f), "--pr", "4", "--repo", "o/r"], request=FakeGitHub([], None), env={}) == 1
    assert "GitHub API error: HTTP 403" in capsys.readouterr().err


def test_the_pr_number_comes_from_the_actions_event(tmp_path):
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"pull_request": {"number": 42}}))
    assert pc.pr_number(str(event)) == 42 and pc.pr_number(None) is None
