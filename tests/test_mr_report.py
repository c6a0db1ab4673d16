"""ci/mr_report.py against a local stand-in for GitLab's API (http.server on 127.0.0.1): the merge request, its
notes and project uploads, as python-gitlab calls them; the plots are real `dvc plots diff --json` output."""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import os
import re
import subprocess
import sys
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import polars as pl
import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "ci" / "mr_report.py"
TOKEN = "glpat-FAKE-token-do-not-print-1234"
MARKER = "<!-- belka-dvc-report -->"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def multipart_files(content_type: str, data: bytes) -> dict[str, tuple[str, bytes]]:
    """{field: (filename, bytes)} of a multipart/form-data body."""
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + data
    )
    return {
        part.get_param("name", header="content-disposition"): (
            part.get_filename(),
            part.get_payload(decode=True),
        )
        for part in message.iter_parts()
    }


class FakeGitLab:
    """Merge request 7 of project 42, its notes and the project's uploads in memory, every request recorded."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.notes: list[dict] = [{"id": 1, "body": "LGTM, but run the pipeline", "system": False}]
        self.uploads: list[tuple[str, bytes]] = []
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
                raw = self.rfile.read(length) if length else b""
                content_type = self.headers.get("Content-Type") or ""
                files = multipart_files(content_type, raw) if content_type.startswith("multipart/") else {}
                body = json.loads(raw) if raw and not files else None
                fake.requests.append(
                    {
                        "method": self.command,
                        "path": self.path,
                        "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body,
                        "files": files,
                    }
                )
                if self.headers.get("PRIVATE-TOKEN") != TOKEN:
                    return self._reply(401, {"message": "401 Unauthorized"})
                mr_path = "/api/v4/projects/42/merge_requests/7"
                base = mr_path + "/notes"
                path = self.path.split("?")[0]
                if self.command == "GET" and path == mr_path:
                    return self._reply(200, {"id": 4242, "iid": 7, "project_id": 42, "title": "Upgrade"})
                if self.command == "POST" and path == "/api/v4/projects/42/uploads":
                    name, data = files["file"]
                    fake.uploads.append((name, data))
                    url = f"/uploads/{len(fake.uploads):032x}/{name}"
                    return self._reply(201, {"alt": name, "url": url, "full_path": f"/-/project/42{url}",
                                             "markdown": f"![{name}]({url})"})  # fmt: skip
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


def report(
    tmp_path: Path, env: dict[str, str], metrics: str = "", params: str = "", plots_json: str | None = None,
    *extra: str,
) -> subprocess.CompletedProcess:  # fmt: skip
    (tmp_path / "metrics.md").write_text(metrics)
    (tmp_path / "params.md").write_text(params)
    args = [sys.executable, str(SCRIPT), "--metrics", str(tmp_path / "metrics.md"), "--params",
            str(tmp_path / "params.md"), "--plots-url", "https://gitlab.invalid/plots/index.html", "--base", "main"]  # fmt: skip
    if plots_json is not None:
        (tmp_path / "plots.json").write_text(plots_json)
        args += ["--plots-json", str(tmp_path / "plots.json")]
    return subprocess.run([*args, *extra], env=env, capture_output=True, text=True, timeout=120)


PLOTS_YAML = """\
plots:
  - Precision-recall on the valid part:
      template: linear
      x: recall
      y:
        metrics/plots/pr_BRD4.csv: precision
        metrics/plots/pr_sEH.csv: precision
  - ROC on the valid part:
      template: linear
      x: fpr
      y:
        metrics/plots/roc_BRD4.csv: tpr
"""


def curves(repo: Path, shift: float) -> None:
    plots = repo / "metrics" / "plots"
    plots.mkdir(parents=True, exist_ok=True)
    for protein in ("BRD4", "sEH"):
        rows = [f"{r / 10},{max(0.05, 1 - r / 10 - shift)}" for r in range(11)]
        (plots / f"pr_{protein}.csv").write_text("recall,precision\n" + "\n".join(rows) + "\n")
    rows = [f"{r / 10},{min(1.0, (r / 10) ** 0.5 + shift)}" for r in range(11)]
    (plots / "roc_BRD4.csv").write_text("fpr,tpr\n" + "\n".join(rows) + "\n")


@pytest.fixture(scope="module")
def plots_json(tmp_path_factory: pytest.TempPathFactory) -> str:
    """What the report job's `dvc plots diff <base> --json` prints: a dvc repo whose curves changed since main
    (the plots section of dvc.yaml has the shape of this project's: several CSVs per plot)."""
    repo = tmp_path_factory.mktemp("plots")
    env = dict(os.environ, DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid",
               GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@example.invalid")  # fmt: skip
    dvc = [sys.executable, "-m", "dvc"]
    (repo / "dvc.yaml").write_text(PLOTS_YAML)
    curves(repo, 0.0)
    for command in (["git", "init", "-q", "-b", "main"], [*dvc, "init", "-q"], ["git", "add", "-A"],
                    ["git", "commit", "-q", "-m", "curves"]):  # fmt: skip
        subprocess.run(command, cwd=repo, env=env, check=True, capture_output=True)
    curves(repo, 0.1)
    result = subprocess.run([*dvc, "plots", "diff", "main", "--json"], cwd=repo, env=env, check=True,
                            capture_output=True, text=True)  # fmt: skip
    assert set(json.loads(result.stdout)["data"]) == {
        "Precision-recall on the valid part",
        "ROC on the valid part",
    }
    return result.stdout


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
    assert [(r["method"], r["path"].split("?")[0].rsplit("/", 1)[-1]) for r in fake.requests] == [
        ("GET", "7"), ("GET", "notes"), ("POST", "notes")
    ]  # fmt: skip
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
    assert [r["method"] for r in fake.requests] == ["GET", "GET", "PUT"]
    assert fake.requests[-1]["path"] == "/api/v4/projects/42/merge_requests/7/notes/100"
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
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
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


def test_plots_are_rendered_uploaded_and_shown_in_the_note(gitlab, tmp_path, plots_json):
    fake, api_url = gitlab
    result = report(tmp_path, ci_env(api_url), METRICS_MD, "", plots_json, "--png-dir", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    assert [name for name, _ in fake.uploads] == [
        "precision-recall-on-the-valid-part.png",
        "roc-on-the-valid-part.png",
    ]
    for name, data in fake.uploads:
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, name  # a real image, not a placeholder
        assert (tmp_path / "png" / name).read_bytes() == data  # the same PNG kept for the job's artifacts
    uploads = [r for r in fake.requests if r["path"] == "/api/v4/projects/42/uploads"]
    assert all(r["headers"]["content-type"].startswith("multipart/form-data") for r in uploads)
    assert all(r["headers"]["private-token"] == TOKEN for r in uploads)
    body = fake.notes[-1]["body"]
    assert MARKER in body
    for n, (name, _) in enumerate(fake.uploads, start=1):
        assert f"![{name}](/uploads/{n:032x}/{name})" in body  # the markdown GitLab answered, as given
    assert body.index("**Precision-recall on the valid part**") < body.index("![precision-recall")
    assert "https://gitlab.invalid/plots/index.html" in body
    methods = [r["method"] + " " + r["path"].split("?")[0].rsplit("/", 1)[-1] for r in fake.requests]
    assert methods == ["GET 7", "POST uploads", "POST uploads", "GET notes", "POST notes"]

    fake.requests.clear()  # the next pipeline uploads the new images and updates the same note
    result = report(tmp_path, ci_env(api_url), METRICS_MD, "", plots_json)
    assert result.returncode == 0, result.stderr
    assert len(fake.uploads) == 4 and len(fake.notes) == 2
    assert "/uploads/00000000000000000000000000000003/precision" in fake.notes[-1]["body"]


def test_dry_run_renders_the_plots_without_any_request(tmp_path, plots_json):
    result = report(tmp_path, {"PATH": "/usr/bin:/bin"}, METRICS_MD, "", plots_json, "--dry-run",
                    "--png-dir", str(tmp_path / "png"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "![roc-on-the-valid-part.png](roc-on-the-valid-part.png)" in result.stdout
    assert (tmp_path / "png" / "roc-on-the-valid-part.png").read_bytes().startswith(PNG_MAGIC)


def test_the_upgrade_check_summary_joins_the_note_when_there_is_one(tmp_path):
    summary = "### Dependency upgrade check\n\n| metric | before | after | change |\n|---|---:|---:|---:|\n"
    (tmp_path / "summary.md").write_text(summary + "| score | 0.2000 | 0.2100 | 0.0100 |\n")
    with_summary = report(tmp_path, {"PATH": "/usr/bin:/bin"}, METRICS_MD, "", None, "--dry-run",
                          "--upgrade-check", str(tmp_path / "summary.md"))  # fmt: skip
    assert with_summary.returncode == 0, with_summary.stderr
    assert "### Dependency upgrade check" in with_summary.stdout
    assert "| score | 0.2000 | 0.2100 | 0.0100 |" in with_summary.stdout
    without = report(tmp_path, {"PATH": "/usr/bin:/bin"}, METRICS_MD, "", None, "--dry-run",
                     "--upgrade-check", str(tmp_path / "absent.md"))  # fmt: skip
    assert without.returncode == 0, without.stderr
    assert "upgrade check" not in without.stdout.lower()


def test_a_plot_that_does_not_render_is_named_in_the_note(gitlab, tmp_path, plots_json):
    fake, api_url = gitlab
    data = json.loads(plots_json)
    data["data"]["ROC on the valid part"][0]["content"]["mark"] = {"type": "no-such-mark"}
    data["data"]["ROC on the valid part"][0]["content"].pop("layer")
    result = report(tmp_path, ci_env(api_url), METRICS_MD, "", json.dumps(data))
    assert result.returncode == 0, result.stderr
    assert [name for name, _ in fake.uploads] == ["precision-recall-on-the-valid-part.png"]
    assert "**ROC on the valid part**: not rendered (" in fake.notes[-1]["body"]


def test_bad_plots_json_is_a_clear_error(gitlab, tmp_path):
    fake, api_url = gitlab
    result = report(tmp_path, ci_env(api_url), METRICS_MD, "", "<html>not json</html>")
    assert result.returncode == 1
    assert "not `dvc plots diff --json` output" in result.stderr and "Traceback" not in result.stderr
    assert fake.requests == []


def test_missing_merge_request_is_a_clear_error(gitlab, tmp_path, plots_json):
    fake, api_url = gitlab
    result = report(tmp_path, ci_env(api_url) | {"CI_MERGE_REQUEST_IID": "8"}, METRICS_MD, "", plots_json)
    assert result.returncode == 1
    assert "merge request !8" in result.stderr and "HTTP 404" in result.stderr
    assert "Traceback" not in result.stderr
    assert fake.uploads == []  # nothing uploaded for a merge request that is not there


def test_the_note_gives_the_scores_intervals_and_flags_pairs_with_few_positives(tmp_path):
    def write(name: str, score: float, interval: list[float], few: list[str]) -> list[str]:
        metrics = {"score": score, "share": 0.3, "non_share": 0.1}
        summary = {
            "bootstrap": {"score": interval, "share": [0.25, 0.35], "non_share": [0.05, 0.2]},
            "pairs_with_few_positives": few,
            "pairs": {"BRD4/non_share": {"positives": 4}},
        }
        (tmp_path / f"{name}-metrics.json").write_text(json.dumps(metrics))
        (tmp_path / f"{name}-summary.json").write_text(json.dumps(summary))
        return [str(tmp_path / f"{name}-metrics.json"), str(tmp_path / f"{name}-summary.json")]

    head = write("head", 0.21, [0.17, 0.25], ["BRD4/non_share"])
    base = write("base", 0.19, [0.15, 0.23], [])
    result = report(tmp_path, {"PATH": "/usr/bin:/bin"}, METRICS_MD, "", None, "--dry-run", "--base", "main",
                    "--evaluate", *head, "--base-evaluate", *base)  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "| score | 0.2100 [0.1700, 0.2500] | 0.1900 [0.1500, 0.2300] | +0.0200 (inside the interval" in out
    assert "Pairs with too few positives for a stable AP (positives): BRD4/non_share (4)." in out
    missing_base = report(tmp_path, {"PATH": "/usr/bin:/bin"}, METRICS_MD, "", None, "--dry-run",
                          "--evaluate", *head, "--base-evaluate", "absent.json", "absent-summary.json")  # fmt: skip
    assert "| score | 0.2100 [0.1700, 0.2500] | - |  |" in missing_base.stdout


def note_table(note: str, heading: str) -> dict[str, list[str]]:
    """The markdown table under ``heading`` in the note: {first cell: the other cells}."""
    lines = note[note.index(heading) :].splitlines()[1:]
    rows = [
        line for line in itertools.takewhile(lambda line: line.startswith("|") or not line.strip(), lines)
    ]
    cells = [
        [cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows if row.startswith("|")
    ]
    return {row[0]: row[1:] for row in cells[2:]}  # past the head and the rule


def test_the_note_says_when_the_two_scores_average_different_pairs(tmp_path):
    """evaluate's own figures of a valid part with one pair without positives (HSA/non_share: 5 pairs) against the
    same part where that pair has one (6 pairs): the note gives both counts and calls the score and non_share
    changes not comparable; share averages the same pairs and keeps its usual reading."""
    from stages.evaluate import score_predictions
    from tests.test_evaluate import FIXTURE

    empty_pair = score_predictions(FIXTURE)[0]
    assert empty_pair["pairs_scored"] == 5
    filled = FIXTURE.with_columns(
        pl.when((pl.col("protein_name") == "HSA") & (pl.col("group") == "non_share") & (pl.col("prob") > 0.09))
        .then(1).otherwise(pl.col("binds")).cast(pl.Int8).alias("binds")
    )  # fmt: skip
    all_pairs = score_predictions(filled)[0]
    assert all_pairs["pairs_scored"] == 6
    del all_pairs["pairs_scored"]  # a target branch from before pairs_scored: counted from its per-pair APs
    files = {}
    for name, metrics in (("head", empty_pair), ("base", all_pairs)):
        (tmp_path / f"{name}.json").write_text(json.dumps(metrics))
        (tmp_path / f"{name}-summary.json").write_text(json.dumps({"bootstrap": {"score": [0.3, 0.9]}}))
        files[name] = [str(tmp_path / f"{name}.json"), str(tmp_path / f"{name}-summary.json")]
    result = report(tmp_path, {"PATH": "/usr/bin:/bin"}, METRICS_MD, "", None, "--dry-run", "--base", "main",
                    "--evaluate", *files["head"], "--base-evaluate", *files["base"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = note_table(result.stdout, "### Score with 95% bootstrap intervals")
    assert table["pairs scored"] == ["5", "6", "differ"]
    assert "not comparable" in table["score"][2] and "not comparable" in table["non_share"][2]
    assert table["share"][2].startswith("+0.0000") and "not comparable" not in table["share"][2]
    only = re.search(r"scored on `main` only: ([^;)]+)", result.stdout)
    assert only is not None and only.group(1).split(", ") == ["HSA/non_share"]

    same = report(tmp_path, {"PATH": "/usr/bin:/bin"}, METRICS_MD, "", None, "--dry-run", "--base", "main",
                  "--evaluate", *files["head"], "--base-evaluate", *files["head"])  # fmt: skip
    table = note_table(same.stdout, "### Score with 95% bootstrap intervals")
    assert table["pairs scored"] == ["5", "5", ""]
    assert not any("not comparable" in row[2] for row in table.values())
    assert "average different pairs" not in same.stdout
