#!/usr/bin/env python3
"""Post the gate's markdown as ONE pull-request comment, updated in place on every run.

Finds the comment that carries the marker (``<!-- attnsuite-gate -->``, the first line of the
markdown diff) and edits it; creates it when absent. Uses only the standard library and the
GitHub REST API, so the same step runs on any runner.

Usage: python3 scripts/pr_comment.py MARKDOWN_FILE [--pr N] [--repo owner/name]
Environment: GITHUB_TOKEN; GITHUB_REPOSITORY, GITHUB_EVENT_PATH (pull_request events) and
GITHUB_API_URL as GitHub Actions sets them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional

MARKER = "<!-- attnsuite-gate -->"
MAX_BODY = 65000  # GitHub refuses comments over 65536 characters

Request = Callable[[str, str, Optional[dict]], Any]


def github_request(token: str) -> Request:
    """A JSON request function for the GitHub API with this token."""

    def request(method: str, url: str, data: Optional[dict] = None) -> Any:
        body = None if data is None else json.dumps(data).encode()
        req = urllib.request.Request(url, data=body, method=method, headers={
            "Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    return request


def fit(body: str, marker: str = MARKER) -> str:
    """The body with the marker first, cut to GitHub's size limit with a note."""
    if not body.startswith(marker):
        body = f"{marker}\n{body}"
    if len(body) > MAX_BODY:
        body = body[: MAX_BODY - 120] + "\n\n... (cut to fit a comment; the full diff is in the job summary and artifacts)\n"
    return body


def upsert_comment(request: Request, api: str, repo: str, pr: int, body: str, marker: str = MARKER) -> tuple[str, int]:
    """Update the PR's comment that carries ``marker`` or create one; returns ("updated"|"created", id)."""
    body = fit(body, marker)
    page = 1
    while True:
        comments = request("GET", f"{api}/repos/{repo}/issues/{pr}/comments?per_page=100&page={page}", None) or []
        for c in comments:
            if marker in (c.get("body") or ""):
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


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("markdown")
    p.add_argument("--pr", type=int, default=None)
    p.add_argument("--repo", default=os.environ.get("GITHUB_REPOSITORY"))
    args = p.parse_args(argv)
    path = Path(args.markdown)
    if not path.is_file():
        print(f"pr_comment: {path} does not exist (did the gate step run?)", file=sys.stderr)
        return 1
    pr = args.pr or pr_number(os.environ.get("GITHUB_EVENT_PATH"))
    token = os.environ.get("GITHUB_TOKEN")
    if not (pr and args.repo and token):
        print("pr_comment: not a pull request with a token and repository: nothing posted", file=sys.stderr)
        return 0
    api = os.environ.get("GITHUB_API_URL", "https://api.github.com")
    how, cid = upsert_comment(github_request(token), api, args.repo, pr, path.read_text(encoding="utf-8"))
    print(f"pr_comment: {how} comment {cid} on {args.repo}#{pr}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
