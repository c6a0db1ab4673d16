"""ci/mr_report.py against a local stand-in for GitLab's notes API (http.server on 127.0.0.1)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "ci" / "mr_report.py"
TOKEN = "glpat-FAKE-token-do-not-print-1234"
MARKER = "<!-- belka-dvc-report -->"


class FakeGitLab:
    """Merge request 7 of project 42, its notes in memory, every request recorded."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.notes: list[dict] = [{"id": 1, "body": "LGTM, but run the pipeline", "system": False}]
        self.next_id = 100

    def handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, payload: object) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                    }
                )
                if self.headers.get("PRIVATE-TOKEN") != TOKEN:
                    return self._reply(401, {"message": "401 Unauthorized"})
                base = "/api/v4/projects/42/merge_requests/7/notes"
                path = self.path.split("?")[0]
                if self.command == "GET" and path == base:
                    return self._reply(200, fake.notes)
                if self.command == "POST" and path == base:
                    note = {"id": fake.next_id, "body": body["body"], "system": False}
                    fake.next_id += 1
                    fake.notes.append(note)
                    return self._reply(201, note)
                if self.command == "PUT" and path.startswith(base + "/"):
                    note_id = int(path.rsplit("/", 1)[1])
                    for note in fake.notes:
                        if note["id"] == note_id:
                            note["body"] = body["body"]
                            return self._reply(200, note)
                return self._reply(404, {"message": "404 Not found"})

            do_GET = do_POST = do_PUT = _handle

        return Handler


@pytest.fixture
def gitlab() -> Iterator[tuple[FakeGitLab, str]]:
    fake = FakeGitLab()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}/api/v4"
    finally:
        server.shutdown()
        thread.join()


def report(
    tmp_path: Path, env: dict[str, str], metrics: str = "", params: str = ""
) -> subprocess.CompletedProcess:
    (tmp_path / "metrics.md").write_text(metrics)
    (tmp_path / "params.md").write_text(params)
    args = [sys.executable, str(SCRIPT), "--metrics", str(tmp_path / "metrics.md"), "--params",
            str(tmp_path / "params.md"), "--plots-url", "https://gitlab.invalid/plots/index.html", "--base", "main"]  # fmt: skip
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=60)


def ci_env(api_url: str) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin",
        "GITLAB_API_TOKEN": TOKEN,
        "CI_API_V4_URL": api_url,
        "CI_PROJECT_ID": "42",
        "CI_MERGE_REQUEST_IID": "7",
    }


METRICS_MD = "| Path | Metric | HEAD | workspace | Change |\n|---|---|---|---|---|\n| metrics/evaluate.json | score | 0.1 | 0.2 | 0.1 |"


def test_first_run_creates_the_note_then_updates_it(gitlab, tmp_path):
    fake, api_url = gitlab

    first = report(tmp_path, ci_env(api_url), metrics=METRICS_MD, params="")
    assert first.returncode == 0, first.stderr
    assert [r["method"] for r in fake.requests] == ["GET", "POST"]
    created = fake.notes[-1]
    assert created["id"] == 100
    assert MARKER in created["body"]
    assert "| metrics/evaluate.json | score | 0.1 | 0.2 | 0.1 |" in created["body"]
    assert "No param changed." in created["body"]
    assert "https://gitlab.invalid/plots/index.html" in created["body"]
    assert "created note 100" in first.stdout

    fake.requests.clear()
    head_only = "| Path | Metric | main | workspace | Change |\n|---|---|---|---|---|\n"
    params_md = (
        "| Path | Param | main | workspace |\n|---|---|---|---|\n| params.yaml | xgb.max_depth | 6 | 8 |"
    )
    second = report(tmp_path, ci_env(api_url), metrics=head_only, params=params_md)
    assert second.returncode == 0, second.stderr
    assert [r["method"] for r in fake.requests] == ["GET", "PUT"]
    assert fake.requests[1]["path"] == "/api/v4/projects/42/merge_requests/7/notes/100"
    assert len(fake.notes) == 2  # the reviewer's note and ours: no second report note
    assert "No metric changed." in fake.notes[-1]["body"]
    assert "| params.yaml | xgb.max_depth | 6 | 8 |" in fake.notes[-1]["body"]
    assert fake.notes[0]["body"] == "LGTM, but run the pipeline"
    assert "updated note 100" in second.stdout

    for run in (first, second):
        assert TOKEN not in run.stdout + run.stderr


def test_token_is_sent_in_private_token_header_only(gitlab, tmp_path):
    fake, api_url = gitlab
    result = report(tmp_path, ci_env(api_url))
    assert result.returncode == 0, result.stderr
    for request in fake.requests:
        assert request["headers"]["private-token"] == TOKEN
        assert TOKEN not in request["path"]
        assert TOKEN not in json.dumps(request["body"])


def test_rejected_token_fails_without_printing_it(gitlab, tmp_path):
    _, api_url = gitlab
    env = ci_env(api_url) | {"GITLAB_API_TOKEN": "glpat-wrong-token-also-secret"}
    result = report(tmp_path, env)
    assert result.returncode == 1
    assert "HTTP 401" in result.stderr
    assert "glpat-wrong-token-also-secret" not in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "missing", ["GITLAB_API_TOKEN", "CI_API_V4_URL", "CI_PROJECT_ID", "CI_MERGE_REQUEST_IID"]
)
def test_missing_variable_is_a_clear_error(gitlab, tmp_path, missing):
    fake, api_url = gitlab
    env = ci_env(api_url)
    del env[missing]
    result = report(tmp_path, env)
    assert result.returncode == 1
    assert missing in result.stderr
    assert "Traceback" not in result.stderr
    assert fake.requests == []
    assert TOKEN not in result.stdout + result.stderr


def test_unreachable_api_is_a_clear_error(tmp_path):
    result = report(tmp_path, ci_env("http://127.0.0.1:1/api/v4"))
    assert result.returncode == 1
    assert "127.0.0.1:1" in result.stderr
    assert "Traceback" not in result.stderr
    assert TOKEN not in result.stdout + result.stderr
