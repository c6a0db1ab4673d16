"""Post (or update) the DVC report note on the current GitLab merge request.

The CI job `report` runs `dvc metrics diff --md`, `dvc params diff --md` and `dvc plots diff` against the target
branch, then calls this script with their output. The note carries a hidden marker, so each pipeline updates the
same note instead of adding one more.

Environment (GitLab sets all but the token):
  GITLAB_API_TOKEN      project access token with `api` scope (a masked CI variable; CI_JOB_TOKEN cannot write notes)
  CI_API_V4_URL         e.g. https://gitlab.example.com/api/v4
  CI_PROJECT_ID         numeric project id
  CI_MERGE_REQUEST_IID  the merge request's iid

Only the standard library: urllib for HTTP. The token is sent in the PRIVATE-TOKEN header and never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

MARKER = "<!-- belka-dvc-report -->"
REQUIRED = ("GITLAB_API_TOKEN", "CI_API_V4_URL", "CI_PROJECT_ID", "CI_MERGE_REQUEST_IID")


class ReportError(Exception):
    """A failure worth one clear line, without a traceback."""


def section(title: str, text: str, empty: str) -> str:
    text = text.strip()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    if len(rows) == 2 and len(text.splitlines()) == 2:  # dvc prints the table head even when nothing changed
        text = ""
    return f"### {title}\n\n{text if text else empty}\n"


def build_body(metrics_md: str, params_md: str, plots_url: str | None, base: str | None) -> str:
    against = f" against `{base}`" if base else ""
    parts = [
        MARKER,
        f"## DVC report{against}\n",
        section("Metrics", metrics_md, "No metric changed."),
        section("Params", params_md, "No param changed."),
    ]
    if plots_url:
        parts.append(f"### Plots\n\n[Plots diff (HTML)]({plots_url})\n")
    sha = os.environ.get("CI_COMMIT_SHORT_SHA")
    pipeline = os.environ.get("CI_PIPELINE_URL")
    if sha or pipeline:
        parts.append(f"<sub>Commit {sha or '?'}, pipeline {pipeline or '?'}</sub>\n")
    return "\n".join(parts)


def require_env(env: dict[str, str]) -> dict[str, str]:
    missing = [name for name in REQUIRED if not env.get(name)]
    if missing:
        raise ReportError(
            f"missing environment variable(s): {', '.join(missing)} "
            "(GITLAB_API_TOKEN is a masked CI/CD variable holding a project access token with api scope; "
            "the others are set by GitLab in merge request pipelines)"
        )
    return {name: env[name] for name in REQUIRED}


class GitLab:
    def __init__(self, api_url: str, project_id: str, token: str, timeout: float = 30.0) -> None:
        self.api_url = api_url.rstrip("/")
        self.project = urllib.parse.quote(str(project_id), safe="")
        self._token = token
        self.timeout = timeout

    def request(self, method: str, path: str, payload: dict | None = None) -> object:
        url = f"{self.api_url}/projects/{self.project}{path}"
        data = None if payload is None else json.dumps(payload).encode()
        headers = {"PRIVATE-TOKEN": self._token, "Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(url, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read().decode(errors="replace")[:300]
            raise ReportError(f"{method} {url} failed: HTTP {error.code} {error.reason}: {detail}") from None
        except urllib.error.URLError as error:
            raise ReportError(f"{method} {url} failed: {error.reason}") from None
        return json.loads(body) if body else None

    def notes(self, mr_iid: str) -> list[dict]:
        notes: list[dict] = []
        page = 1
        while True:
            batch = self.request("GET", f"/merge_requests/{mr_iid}/notes?per_page=100&page={page}&sort=asc")
            if not isinstance(batch, list):
                raise ReportError(f"unexpected answer listing notes: {type(batch).__name__}")
            notes.extend(batch)
            if len(batch) < 100:
                return notes
            page += 1


def post_report(body: str, env: dict[str, str]) -> tuple[str, int]:
    """Create or update the marked note; returns ("created" | "updated", note id)."""
    settings = require_env(env)
    gitlab = GitLab(settings["CI_API_V4_URL"], settings["CI_PROJECT_ID"], settings["GITLAB_API_TOKEN"])
    mr = settings["CI_MERGE_REQUEST_IID"]
    earlier = [note for note in gitlab.notes(mr) if MARKER in (note.get("body") or "")]
    if earlier:
        note_id = earlier[-1]["id"]
        gitlab.request("PUT", f"/merge_requests/{mr}/notes/{note_id}", {"body": body})
        return "updated", note_id
    created = gitlab.request("POST", f"/merge_requests/{mr}/notes", {"body": body})
    if not isinstance(created, dict) or "id" not in created:
        raise ReportError("unexpected answer creating the note")
    return "created", created["id"]


def read(path: str | None) -> str:
    return Path(path).read_text() if path else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", help="file with `dvc metrics diff --md` output")
    parser.add_argument("--params", help="file with `dvc params diff --md` output")
    parser.add_argument("--plots-url", help="link to the `dvc plots diff` HTML (a job artifact)")
    parser.add_argument("--base", help="the branch compared against, for the title")
    parser.add_argument("--dry-run", action="store_true", help="print the note instead of posting it")
    args = parser.parse_args(argv)

    try:
        body = build_body(read(args.metrics), read(args.params), args.plots_url, args.base)
        if args.dry_run:
            print(body)
            return 0
        action, note_id = post_report(body, dict(os.environ))
    except (ReportError, OSError) as error:
        print(f"mr_report: error: {error}", file=sys.stderr)
        return 1
    print(f"mr_report: {action} note {note_id} on merge request !{os.environ['CI_MERGE_REQUEST_IID']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
