#!/usr/bin/env python3
"""Post the gate's markdown as ONE pull-request comment, updated in place on every run.

Finds the comment that carries the marker (``<!-- attnsuite-gate -->``, the first line of the
markdown diff) AND was written by the identity of the token in use, and edits it; creates one
when there is none. A comment by anyone else is never edited, even if it carries the marker:
otherwise anybody who can comment on the PR could plant the marker and have the CI rewrite
their comment (issue 10). Uses only the standard library and the GitHub REST API.

Who the token is: ``GET /user`` for a personal or user token. The ``GITHUB_TOKEN`` of GitHub
Actions is an app installation token, which ``GET /user`` refuses (403); its comments are written
by the ``github-actions[bot]`` account (type ``Bot``), which is what is matched then. A token of
another GitHub App names its bot with ``--author <slug>[bot]``.

Usage: python3 scripts/pr_comment.py MARKDOWN_FILE [MARKDOWN_FILE ...] [--pr N] [--repo owner/name] [--author LOGIN]
                                     [--ab-gate enforce|report]
Several files are joined into one comment, in the order given (files that do not exist are
named on stderr and, first in the comment, as missing: a reader must not take the rest for the
whole verdict). A body over GitHub's limit is cut at a line, every ``<details>`` left open
closed, and a visible note (outside any ``<details>``) says where the whole report is. Environment:
GITHUB_TOKEN; GITHUB_REPOSITORY, GITHUB_EVENT_PATH (pull_request events), GITHUB_API_URL,
GITHUB_ACTIONS, GITHUB_SERVER_URL, GITHUB_RUN_ID and GITHUB_STEP_SUMMARY as GitHub Actions sets them.

Exit status: 0 posted, or nothing to post to, or the API refused (HTTP 403: the token may not
comment, as for a Dependabot pull request or a read-only token; 404: the pull request cannot be
seen), which prints a ``::warning::`` line naming the status and what to check: the comment is a
convenience, the gate's verdict decides the job. 1: no markdown file (the comment is still posted or
updated, saying that no report was written, so an earlier push's verdict does not stand), or another
API failure (the workflow step has ``continue-on-error``, so that too shows without failing the job).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

MARKER = "<!-- attnsuite-gate -->"
MAX_BODY = 65000  # GitHub refuses comments over 65536 characters
ACTIONS_BOT = "github-actions[bot]"  # the account GITHUB_TOKEN's comments are written by
# The pull-request label under which the GPU workflow's A/B only reports (docs/ab.md, "A confirmed
# regression"); the workflow passes --ab-gate report then, and the comment and summary say why.
ACCEPT_LABEL = "gate: accept-slower"

Request = Callable[[str, str, Optional[dict]], Any]


class ApiError(Exception):
    """A GitHub API request that failed, with its HTTP status."""

    def __init__(self, status: int, message: str, where: str = "") -> None:
        self.status = status
        self.where = where  # "METHOD /path" of the request, when known
        text = f"HTTP {status}: {message}" if status else message
        super().__init__(f"{text} ({where})" if where else text)


@dataclass(frozen=True)
class Identity:
    """The account a token writes comments as."""

    login: str
    type: str  # "User" or "Bot"


def github_request(token: str) -> Request:
    """A JSON request function for the GitHub API with this token (errors as :class:`ApiError`)."""

    def request(method: str, url: str, data: Optional[dict] = None) -> Any:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(url, data=body, method=method, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28", "Content-Type": "application/json"})
        where = f"{method} {urllib.parse.urlsplit(url).path}"
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.reason or "request failed", where) from None
        except (urllib.error.URLError, OSError) as exc:  # unreachable, refused, timed out
            raise ApiError(0, f"cannot reach the API: {getattr(exc, 'reason', exc)}", where) from None

    return request


def token_identity(request: Request, api: str, env: Mapping[str, str], author: Optional[str] = None) -> Identity:
    """Who comments made with this token are written by (see the module docstring).

    ``author`` (``--author``) names it outright. Otherwise ``GET /user``; when that is refused
    (401/403) inside GitHub Actions, the token is the Actions installation token, whose comments
    are by ``github-actions[bot]``. Outside Actions a refusal is an error: there is no safe guess.
    """
    if author:
        return Identity(author, "Bot" if author.endswith("[bot]") else "User")
    try:
        user = request("GET", f"{api}/user", None) or {}
    except ApiError as exc:
        if exc.status in (401, 403) and env.get("GITHUB_ACTIONS") == "true":
            return Identity(ACTIONS_BOT, "Bot")
        raise
    if not user.get("login"):
        raise ApiError(200, "GET /user returned no login")
    return Identity(str(user["login"]), str(user.get("type") or "User"))


def is_ours(comment: Mapping[str, Any], identity: Identity, marker: str = MARKER) -> bool:
    """Whether ``comment`` is this tool's: it carries the marker and its author is ``identity``
    (logins compare case-insensitively, as GitHub treats them; a bot identity also needs a Bot
    author)."""
    user = comment.get("user") or {}
    if marker not in (comment.get("body") or ""):
        return False
    if str(user.get("login", "")).casefold() != identity.login.casefold():
        return False
    return identity.type != "Bot" or user.get("type") == "Bot"


_DETAILS_TAG = re.compile(r"<(/?)details\b[^>]*>", re.IGNORECASE)
_FENCE = re.compile(r"^\s{0,3}(```|~~~)", re.MULTILINE)


def open_details(text: str) -> int:
    """How many ``<details>`` are open at the end of ``text``."""
    depth = 0
    for m in _DETAILS_TAG.finditer(text):
        depth = max(0, depth - 1) if m.group(1) else depth + 1
    return depth


def _close_open_blocks(kept: str) -> str:
    """What ends ``kept`` cleanly: a code fence left open, then every open ``<details>``, each
    ``</details>`` after a blank line (so that it ends a table rather than becoming its row)."""
    tail = ""
    if len(_FENCE.findall(kept)) % 2:
        tail += "\n```"
    depth = open_details(kept)
    if depth:
        tail += "\n\n*(cut here: see the note below)*" + "\n\n</details>" * depth
    return tail


def fit(body: str, marker: str = MARKER, where: str = "in this run's job summary and artifacts") -> str:
    """The body with the marker first, cut to GitHub's size limit when over it.

    The cut keeps whole lines only (no half table row), closes a code fence and every
    ``<details>`` it leaves open, and ends with a note outside them all, visible without expanding
    anything, that says how much is shown and where the whole report is (``where``).
    """
    if not body.startswith(marker):
        body = f"{marker}\n{body}"
    if len(body) <= MAX_BODY:
        return body
    note = (f"\n\n---\n\n**... (cut to fit a comment: GitHub takes at most 65536 characters, the whole report "
            f"has {len(body)})** The whole report is {where}.\n")
    budget = MAX_BODY - len(note)
    while True:
        kept = body[:budget]
        if body[budget:budget + 1] != "\n" and kept.rfind("\n") > len(marker):
            kept = kept[:kept.rfind("\n")]  # whole lines only
        out = kept.rstrip() + _close_open_blocks(kept) + note
        if len(out) <= MAX_BODY:
            return out
        budget -= len(out) - MAX_BODY


def join_markdown(texts: list[str], marker: str = MARKER) -> str:
    """Several markdown reports as one comment body: the marker once, first; parts separated by a rule."""
    parts = []
    for text in texts:
        lines = [line for line in text.strip().splitlines() if line.strip() != marker]
        if lines:
            parts.append("\n".join(lines))
    return marker + "\n" + "\n\n---\n\n".join(parts) + "\n"


def upsert_comment(request: Request, api: str, repo: str, pr: int, body: str, *, identity: Identity,
                   marker: str = MARKER, where: Optional[str] = None) -> tuple[str, int]:
    """Update the PR's comment that carries ``marker`` and was written by ``identity``, or create
    one; returns ("updated"|"created", comment id). ``where``: where the whole report is, for
    :func:`fit`'s note."""
    body = fit(body, marker) if where is None else fit(body, marker, where)
    page = 1
    while True:
        comments = request("GET", f"{api}/repos/{repo}/issues/{pr}/comments?per_page=100&page={page}", None) or []
        for c in comments:
            if is_ours(c, identity, marker):
                request("PATCH", f"{api}/repos/{repo}/issues/comments/{c['id']}", {"body": body})
                return "updated", int(c["id"])
        if len(comments) < 100:
            break
        page += 1
    created = request("POST", f"{api}/repos/{repo}/issues/{pr}/comments", {"body": body})
    return "created", int(created["id"])


def pr_number(event_path: Optional[str]) -> Optional[int]:
    """The pull-request number from the Actions event payload, or None."""
    if not event_path or not Path(event_path).is_file():
        return None
    event = json.loads(Path(event_path).read_text())
    number = (event.get("pull_request") or {}).get("number")
    return int(number) if number else None


def refusal_warning(exc: ApiError) -> str:
    """The ``::warning::`` line for an API refusal (403, 404): the status, and what to check."""
    if exc.where.endswith("/user"):
        check = ("the token cannot say who it is (GET /user refused): name the login it writes as with "
                 "--author (or PR_COMMENT_AUTHOR)")
    elif exc.status == 403:
        check = ("the token may not comment on this pull request: check the workflow's `permissions: "
                 "pull-requests: write`; a Dependabot pull request or a read-only token cannot comment")
    else:
        check = ("the pull request or repository cannot be seen with this token: check the PR number and "
                 "--repo (GITHUB_REPOSITORY) and that the token can read the repository")
    return (f"::warning title=PR comment not posted::pr_comment: HTTP {exc.status} from the GitHub API"
            f"{' on ' + exc.where if exc.where else ''}: {check}. No comment was posted; the gate's verdict "
            "stands (this job's status, its summary and its artifacts).")


def accepted_note() -> str:
    """The line that says the label made A/B report-only (top of the comment, and the job summary)."""
    return (f"> **`{ACCEPT_LABEL}`**: a maintainer labelled this pull request to accept its slowdowns, so A/B "
            "ran report-only: the regressions below are shown and do not fail the job. After the merge, the "
            "push job's comparison with the stored baseline flags them until the baseline is re-recorded "
            "(docs/ab.md, \"A confirmed regression\").")


def missing_note(missing: list[str], url: Optional[str]) -> Optional[str]:
    """The line, first in the comment, naming the reports whose step wrote none (None: all present).

    Left out silently, a failed A/B step (a head whose code does not import, a round that timed out)
    had left a comment made of the stored-baseline diff alone, which in a pull request runs
    report-only and reads "not failing" (a fresh-user trial)."""
    if not missing:
        return None
    names = ", ".join(f"`{Path(m).name}`" for m in missing)
    where = f"[this run]({url})" if url else "this run"
    return (f"> ⛔ **Missing from this comment: {names}**: the step that writes {'it' if len(missing) == 1 else 'them'} "
            f"wrote no report (it failed, was cancelled or was skipped). What follows is not the whole verdict: the "
            f"job's status and its log in {where} are.")


def run_url(env: Mapping[str, str], repo: str) -> Optional[str]:
    """This Actions run's address, or None outside Actions."""
    if env.get("GITHUB_RUN_ID"):
        server = env.get("GITHUB_SERVER_URL", "https://github.com").rstrip("/")
        return f"{server}/{repo}/actions/runs/{env['GITHUB_RUN_ID']}"
    return None


def main(argv: Optional[list[str]] = None, request: Optional[Request] = None,
         env: Optional[Mapping[str, str]] = None) -> int:
    """Post or update the comment; returns the exit status (module docstring)."""
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("markdown", nargs="+")
    p.add_argument("--pr", type=int, default=None)
    p.add_argument("--repo", default=env.get("GITHUB_REPOSITORY"))
    p.add_argument("--author", default=env.get("PR_COMMENT_AUTHOR"),
                   help="login the token writes as, e.g. my-app[bot] (default: GET /user, or github-actions[bot])")
    p.add_argument("--ab-gate", choices=["enforce", "report"], default="enforce",
                   help=f"how the A/B step gated: report (the PR carries the label {ACCEPT_LABEL!r}) puts a note "
                        "saying so first in the comment and in $GITHUB_STEP_SUMMARY")
    p.add_argument("--print", dest="print_only", action="store_true",
                   help="print the comment's body as it would be posted (joined and cut to fit) and post nothing: "
                        "a local preview, no token needed")
    args = p.parse_args(argv)
    note = accepted_note() if args.ab_gate == "report" else None
    if note and env.get("GITHUB_STEP_SUMMARY"):
        with open(env["GITHUB_STEP_SUMMARY"], "a", encoding="utf-8") as summary:
            summary.write(f"\n{note}\n")
    present = [Path(m) for m in args.markdown if Path(m).is_file()]
    for m in args.markdown:
        if not Path(m).is_file():
            print(f"pr_comment: {m} does not exist (did its step run?): left out", file=sys.stderr)
    # with no report at all the comment still says so (and the step fails): left as it was, an earlier
    # push's comment (a PASS) had stood on a pull request whose job was now red (an outside tester's trial)
    status = 0 if present else 1
    url = run_url(env, args.repo) if args.repo else None
    absent = missing_note([m for m in args.markdown if not Path(m).is_file()], url)
    body = join_markdown([n for n in (absent, note) if n] + [m.read_text(encoding="utf-8") for m in present])
    where = (f"in the job summary and the artifacts ({', '.join(str(m) for m in present)}) of "
             + (f"[this run]({url})" if url else "this run"))
    if args.print_only:
        print(fit(body, MARKER, where))
        return status
    pr = args.pr or pr_number(env.get("GITHUB_EVENT_PATH"))
    token = env.get("GITHUB_TOKEN")
    missing = [what for what, have in (
        ("a pull request number (--pr, or the pull_request event file GITHUB_EVENT_PATH)", pr),
        ("a repository (--repo or GITHUB_REPOSITORY)", args.repo),
        ("a token (GITHUB_TOKEN)", token or request)) if not have]
    if missing:
        # which piece was missing had not been said; --print previews the body without any of them
        print(f"pr_comment: nothing posted: missing {'; '.join(missing)} (--print shows the comment's body "
              "without posting)", file=sys.stderr)
        return status
    api = env.get("GITHUB_API_URL", "https://api.github.com")
    request = request or github_request(token or "")
    try:
        identity = token_identity(request, api, env, args.author)
        how, cid = upsert_comment(request, api, args.repo, pr, body, identity=identity, where=where)
    except ApiError as exc:
        if exc.status in (403, 404):
            print(refusal_warning(exc))
            return 0
        print(f"pr_comment: GitHub API error: {exc}", file=sys.stderr)
        return 1
    print(f"pr_comment: {how} comment {cid} on {args.repo}#{pr} as {identity.login}")
    return status


if __name__ == "__main__":
    sys.exit(main())
