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
Several files are joined into one comment, in the order given (files that do not exist are
named and left out). Environment: GITHUB_TOKEN; GITHUB_REPOSITORY, GITHUB_EVENT_PATH
(pull_request events), GITHUB_API_URL and GITHUB_ACTIONS as GitHub Actions sets them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

MARKER = "<!-- attnsuite-gate -->"
MAX_BODY = 65000  # GitHub refuses comments over 65536 characters
ACTIONS_BOT = "github-actions[bot]"  # the account GITHUB_TOKEN's comments are written by

Request = Callable[[str, str, Optional[dict]], Any]


class ApiError(Exception):
    """A GitHub API request that failed, with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(f"HTTP {status}: {message}")


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
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read() or b"null")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.reason or "request failed") from None

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


def fit(body: str, marker: str = MARKER) -> str:
    """The body with the marker first, cut to GitHub's size limit with a note."""
    if not body.startswith(marker):
        body = f"{marker}\n{body}"
    if len(body) > MAX_BODY:
        body = body[: MAX_BODY - 120] + "\n\n... (cut to fit a comment; the full diff is in the job summary and artifacts)\n"
    return body


def join_markdown(texts: list[str], marker: str = MARKER) -> str:
    """Several markdown reports as one comment body: the marker once, first; parts separated by a rule."""
    parts = []
    for text in texts:
        lines = [line for line in text.strip().splitlines() if line.strip() != marker]
        if lines:
            parts.append("\n".join(lines))
    return marker + "\n" + "\n\n---\n\n".join(parts) + "\n"


def upsert_comment(request: Request, api: str, repo: str, pr: int, body: str, *, identity: Identity,
                   marker: str = MARKER) -> tuple[str, int]:
    """Update the PR's comment that carries ``marker`` and was written by ``identity``, or create
    one; returns ("updated"|"created", comment id)."""
    body = fit(body, marker)
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


def main(argv: Optional[list[str]] = None, request: Optional[Request] = None,
         env: Optional[Mapping[str, str]] = None) -> int:
    """Post or update the comment; returns the exit status (1: no markdown file, or the API failed)."""
    env = os.environ if env is None else env
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("markdown", nargs="+")
    p.add_argument("--pr", type=int, default=None)
    p.add_argument("--repo", default=env.get("GITHUB_REPOSITORY"))
    p.add_argument("--author", default=env.get("PR_COMMENT_AUTHOR"),
                   help="login the token writes as, e.g. my-app[bot] (default: GET /user, or github-actions[bot])")
    args = p.parse_args(argv)
    present = [Path(m) for m in args.markdown if Path(m).is_file()]
    for m in args.markdown:
        if not Path(m).is_file():
            print(f"pr_comment: {m} does not exist (did its step run?): left out", file=sys.stderr)
    if not present:
        return 1
    pr = args.pr or pr_number(env.get("GITHUB_EVENT_PATH"))
    token = env.get("GITHUB_TOKEN")
    if not (pr and args.repo and (token or request)):
        print("pr_comment: not a pull request with a token and repository: nothing posted", file=sys.stderr)
        return 0
    api = env.get("GITHUB_API_URL", "https://api.github.com")
    request = request or github_request(token or "")
    body = join_markdown([m.read_text(encoding="utf-8") for m in present])
    try:
        identity = token_identity(request, api, env, args.author)
        how, cid = upsert_comment(request, api, args.repo, pr, body, identity=identity)
    except ApiError as exc:
        print(f"pr_comment: GitHub API error: {exc}", file=sys.stderr)
        return 1
    print(f"pr_comment: {how} comment {cid} on {args.repo}#{pr} as {identity.login}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
