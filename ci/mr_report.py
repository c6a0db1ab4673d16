"""Post (or update) the DVC report note on the current GitLab merge request.

The CI job `report` runs `dvc metrics diff --md`, `dvc params diff --md` and `dvc plots diff --json` against the
target branch, then calls this script with their output. Each vega-lite plot of `dvc plots diff --json` is
rendered to PNG (vl-convert, no browser), uploaded to the project (`POST /projects/:id/uploads`, as CML does)
and shown in the note as an image. The note carries a hidden marker, so each pipeline updates the same note
instead of adding one more.

Environment (GitLab sets all but the token):
  GITLAB_API_TOKEN      a dedicated project access token, role Reporter, `api` scope, short expiry (a masked,
                        unprotected CI variable that every Developer can read: docs/ci.md, "The note's token";
                        CI_JOB_TOKEN cannot write notes)
  CI_API_V4_URL         e.g. https://gitlab.example.com/api/v4
  CI_PROJECT_ID         numeric project id
  CI_MERGE_REQUEST_IID  the merge request's iid

Talks to GitLab through python-gitlab; the token goes in the PRIVATE-TOKEN header and is never printed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import gitlab
import gitlab.exceptions
import requests
import vl_convert

MARKER = "<!-- belka-dvc-report -->"
REQUIRED = ("GITLAB_API_TOKEN", "CI_API_V4_URL", "CI_PROJECT_ID", "CI_MERGE_REQUEST_IID")
PNG_SCALE = 2.0  # sharp on high-density screens; a 300x300 dvc plot becomes about 860x720 pixels


class ReportError(Exception):
    """A failure worth one clear line, without a traceback."""


@dataclass
class Plot:
    """One rendered plot: its name in dvc.yaml, a file name for the upload, and the PNG (or why there is none)."""

    name: str
    filename: str
    png: bytes | None = None
    error: str | None = None


def section(title: str, text: str, empty: str) -> str:
    text = text.strip()
    rows = [line for line in text.splitlines() if line.startswith("|")]
    if len(rows) == 2 and len(text.splitlines()) == 2:  # dvc prints the table head even when nothing changed
        text = ""
    return f"### {title}\n\n{text if text else empty}\n"


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "plot"


def vega_specs(plots_json: dict) -> list[tuple[str, dict]]:
    """(name, vega-lite spec) for each vega plot of `dvc plots diff --json` output:
    {"data": {name: [{"type": "vega", "revisions": [...], "content": spec}, ...]}, "errors": [...]}.
    Image plots (type "image") are left out; older dvc-render versions gave the spec as a JSON string."""
    specs = []
    for name, entries in (plots_json.get("data") or {}).items():
        for entry in entries:
            if entry.get("type") != "vega" or not entry.get("content"):
                continue
            content = entry["content"]
            specs.append((name, json.loads(content) if isinstance(content, str) else content))
    return specs


def render_plots(plots_json: dict, scale: float = PNG_SCALE) -> list[Plot]:
    plots: list[Plot] = []
    used: set[str] = set()
    for name, spec in vega_specs(plots_json):
        stem = slug(name)
        filename, n = f"{stem}.png", 2
        while filename in used:
            filename, n = f"{stem}-{n}.png", n + 1
        used.add(filename)
        try:
            plots.append(Plot(name, filename, png=vl_convert.vegalite_to_png(spec, scale=scale)))
        except (
            Exception
        ) as error:  # vl-convert raises ValueError for a bad spec; a broken plot must not stop the note
            plots.append(Plot(name, filename, error=str(error).splitlines()[0][:200] if str(error) else "?"))
    return plots


def plots_section(plots: list[Plot], images: dict[str, str], plots_url: str | None) -> str | None:
    """Markdown for the plots: each image's markdown (from the upload) under its name, then the HTML link."""
    if not plots and not plots_url:
        return None
    lines = ["### Plots\n"]
    for plot in plots:
        if plot.filename in images:
            lines.append(f"**{plot.name}**\n\n{images[plot.filename]}\n")
        else:
            lines.append(f"**{plot.name}**: not rendered ({plot.error or 'not uploaded'})\n")
    if plots_url:
        lines.append(f"[Plots diff (HTML)]({plots_url})\n")
    return "\n".join(lines)


GROUPS_OF = {"score": ("share", "non_share"), "share": ("share",), "non_share": ("non_share",)}


@dataclass
class Evaluation:
    """One revision's evaluate outputs: the figures (metrics/evaluate.json) and the summary with the bootstrap
    intervals and the pairs with few positives (metrics/evaluate-summary.json)."""

    metrics: dict
    summary: dict

    @classmethod
    def read(cls, metrics_path: str | None, summary_path: str | None) -> Evaluation | None:
        if not (
            metrics_path and summary_path and Path(metrics_path).exists() and Path(summary_path).exists()
        ):
            return None
        try:
            return cls(json.loads(Path(metrics_path).read_text()), json.loads(Path(summary_path).read_text()))
        except json.JSONDecodeError as error:
            raise ReportError(f"{metrics_path} or {summary_path} is not evaluate's JSON: {error}") from None

    def interval(self, name: str) -> list[float] | None:
        """The bootstrap 95% interval of a figure, [low, high], if evaluate gave one."""
        return self.summary.get("bootstrap", {}).get(name)

    def pairs(self, name: str = "score") -> set[tuple[str, str]]:
        """The (protein, group) pairs a figure averages: those with an AP (``ap_<protein>_<group>``) in its groups
        (``score``: share and non-share). A pair without positives has no AP and is left out of the mean."""
        groups = GROUPS_OF.get(name, ())
        found = set()
        for key in self.metrics:
            group = next((g for g in ("non_share", "share") if key.endswith(f"_{g}")), None)
            if key.startswith("ap_") and group in groups:
                found.add((key[3 : -len(group) - 1], group))
        return found

    def pairs_scored(self) -> int:
        """How many pairs ``score`` averages: evaluate's ``pairs_scored``, or counted from the per-pair APs of a
        revision that did not write it."""
        value = self.metrics.get("pairs_scored")
        return int(value) if value is not None else len(self.pairs())

    def figure(self, name: str) -> str:
        value = self.metrics.get(name)
        interval = self.interval(name)
        if value is None:
            return "-"
        return f"{value:.4f} [{interval[0]:.4f}, {interval[1]:.4f}]" if interval else f"{value:.4f}"


def uncertainty_section(
    head: Evaluation | None, base: Evaluation | None, base_name: str | None
) -> str | None:
    """Score, share and non_share with their bootstrap 95% intervals, on this branch and the target, whether the
    change is inside this branch's interval, how many pairs the score averages, and the pairs with too few
    positives to trust. A figure whose mean covers other pairs on the two sides (a pair without positives on one
    side) is not comparable, and the note says so instead of giving its change a meaning."""
    if head is None:
        return None
    target = f"`{base_name}`" if base_name else "target"
    lines = [
        "### Score with 95% bootstrap intervals\n",
        f"| | this branch | {target} | change |",
        "|---|---|---|---|",
    ]
    for name in ("score", "share", "non_share"):
        change = ""
        if base is not None and name in head.metrics and name in base.metrics:
            delta = head.metrics[name] - base.metrics[name]
            interval = head.interval(name)
            inside = interval is not None and interval[0] <= base.metrics[name] <= interval[1]
            if head.pairs(name) != base.pairs(name):
                change = f"{delta:+.4f} (not comparable: averages other pairs)"
            else:
                change = f"{delta:+.4f}" + (" (inside the interval: not distinguishable)" if inside else "")
        lines.append(f"| {name} | {head.figure(name)} | {base.figure(name) if base else '-'} | {change} |")
    differ = base is not None and head.pairs() != base.pairs()
    lines.append(
        f"| pairs scored | {head.pairs_scored()} | {base.pairs_scored() if base else '-'} | "
        f"{'differ' if differ else ''} |"
    )
    if differ:
        only_head, only_base = sorted(head.pairs() - base.pairs()), sorted(base.pairs() - head.pairs())
        named = "; ".join(
            f"{where}: {', '.join(f'{p}/{g}' for p, g in pairs)}"
            for where, pairs in (
                ("scored on this branch only", only_head),
                (f"scored on {target} only", only_base),
            )
            if pairs
        )
        lines.append(
            f"\n**The two scores average different pairs** ({named}): a pair without positives has no AP and is "
            "left out of the mean, so the change in score measures the pairs as much as the model."
        )
    few = head.summary.get("pairs_with_few_positives") or []
    if few:
        pairs = head.summary.get("pairs", {})
        named = ", ".join(f"{pair} ({pairs.get(pair, {}).get('positives', '?')})" for pair in few)
        lines.append(f"\nPairs with too few positives for a stable AP (positives): {named}.")
    return "\n".join(lines) + "\n"


def build_body(
    metrics_md: str,
    params_md: str,
    plots_url: str | None,
    base: str | None,
    plots: list[Plot] | None = None,
    images: dict[str, str] | None = None,
    upgrade_md: str = "",
    uncertainty_md: str | None = None,
) -> str:
    against = f" against `{base}`" if base else ""
    parts = [
        MARKER,
        f"## DVC report{against}\n",
        section("Metrics", metrics_md, "No metric changed."),
    ]
    if uncertainty_md:
        parts.append(uncertainty_md)
    parts.append(section("Params", params_md, "No param changed."))
    if upgrade_md.strip():  # the upgrade_check job's summary (ci/upgrade_check.py compare), as it wrote it
        parts.append(upgrade_md.strip() + "\n")
    plots_md = plots_section(plots or [], images or {}, plots_url)
    if plots_md:
        parts.append(plots_md)
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
            "(GITLAB_API_TOKEN is a masked CI/CD variable holding a dedicated project access token, role Reporter, "
            "api scope; "
            "the others are set by GitLab in merge request pipelines)"
        )
    return {name: env[name] for name in REQUIRED}


class Report:
    """The merge request's report note, through python-gitlab. Every API failure becomes a ReportError that names
    what was tried and the HTTP status, never the token."""

    def __init__(self, settings: dict[str, str], timeout: float = 30.0) -> None:
        self.api_url = settings["CI_API_V4_URL"].rstrip("/")
        server = self.api_url.removesuffix("/api/v4")
        self.gl = gitlab.Gitlab(server, private_token=settings["GITLAB_API_TOKEN"], timeout=timeout)
        self.project = self.gl.projects.get(settings["CI_PROJECT_ID"], lazy=True)
        self.mr_iid = settings["CI_MERGE_REQUEST_IID"]
        self._mr = None

    def _call(self, what: str, function, *args, **kwargs):
        try:
            return function(*args, **kwargs)
        except gitlab.exceptions.GitlabError as error:
            message = error.error_message
            if isinstance(message, bytes):
                message = message.decode(errors="replace")
            raise ReportError(f"{what} failed: HTTP {error.response_code}: {str(message)[:300]}") from None
        except requests.exceptions.RequestException as error:
            raise ReportError(
                f"{what} failed: cannot reach the GitLab API at {self.api_url} ({type(error).__name__})"
            ) from None

    @property
    def mr(self):
        if self._mr is None:
            self._mr = self._call(
                f"reading merge request !{self.mr_iid}", self.project.mergerequests.get, self.mr_iid
            )
        return self._mr

    def upload(self, plots: list[Plot]) -> dict[str, str]:
        """Upload each rendered PNG; returns {filename: markdown that GitLab gave for it}."""
        images = {}
        for plot in plots:
            if plot.png is not None:
                answer = self._call(
                    f"uploading {plot.filename}", self.project.upload, plot.filename, filedata=plot.png
                )
                if not isinstance(answer, dict) or "markdown" not in answer:
                    raise ReportError(f"unexpected answer uploading {plot.filename}")
                images[plot.filename] = answer["markdown"]
        return images

    def post(self, body: str, marker: str = MARKER) -> tuple[str, int]:
        """Create or update the note that holds ``marker`` (the report's, or another job's own note); returns
        ("created" | "updated", note id)."""
        mr = self.mr
        notes = self._call("listing notes", mr.notes.list, get_all=True, sort="asc", order_by="created_at")
        earlier = [note for note in notes if marker in (getattr(note, "body", None) or "")]
        if earlier:
            note = earlier[-1]
            note.body = body
            self._call(f"updating note {note.id}", note.save)
            return "updated", note.id
        created = self._call("creating the note", mr.notes.create, {"body": body})
        if getattr(created, "id", None) is None:
            raise ReportError("unexpected answer creating the note")
        return "created", created.id


def read(path: str | None) -> str:
    return Path(path).read_text() if path else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--metrics", help="file with `dvc metrics diff --md` output")
    parser.add_argument("--params", help="file with `dvc params diff --md` output")
    parser.add_argument(
        "--plots-json", help="file with `dvc plots diff --json` output: its plots become images"
    )
    parser.add_argument("--png-dir", help="also write the rendered PNGs here (e.g. for the job's artifacts)")
    parser.add_argument("--plots-url", help="link to the `dvc plots diff` HTML (a job artifact)")
    parser.add_argument("--base", help="the branch compared against, for the title")
    parser.add_argument(
        "--upgrade-check",
        help="the upgrade_check job's summary (markdown), added to the note; skipped when the file is absent",
    )
    parser.add_argument("--evaluate", nargs=2, metavar=("METRICS", "SUMMARY"),
                        help="this branch's metrics/evaluate.json and metrics/evaluate-summary.json")  # fmt: skip
    parser.add_argument("--base-evaluate", nargs=2, metavar=("METRICS", "SUMMARY"),
                        help="the same two files of the target branch (skipped when absent)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="print the note instead of posting it")
    args = parser.parse_args(argv)

    try:
        metrics, params = read(args.metrics), read(args.params)
        upgrade = read(args.upgrade_check) if args.upgrade_check and Path(args.upgrade_check).exists() else ""
        uncertainty = uncertainty_section(
            Evaluation.read(*(args.evaluate or (None, None))),
            Evaluation.read(*(args.base_evaluate or (None, None))),
            args.base,
        )
        plots_text = read(args.plots_json)
        try:
            plots = render_plots(json.loads(plots_text)) if plots_text.strip() else []
        except json.JSONDecodeError as error:
            raise ReportError(f"{args.plots_json} is not `dvc plots diff --json` output: {error}") from None
        if args.png_dir:
            Path(args.png_dir).mkdir(parents=True, exist_ok=True)
            for plot in plots:
                if plot.png is not None:
                    (Path(args.png_dir) / plot.filename).write_bytes(plot.png)
        if args.dry_run:
            local = {p.filename: f"![{p.filename}]({p.filename})" for p in plots if p.png is not None}
            print(build_body(metrics, params, args.plots_url, args.base, plots, local, upgrade, uncertainty))
            return 0
        report = Report(require_env(dict(os.environ)))
        report.mr  # noqa: B018 (a missing merge request fails before anything is uploaded)
        images = report.upload(plots)
        body = build_body(metrics, params, args.plots_url, args.base, plots, images, upgrade, uncertainty)
        action, note_id = report.post(body)
    except (ReportError, OSError) as error:
        print(f"mr_report: error: {error}", file=sys.stderr)
        return 1
    print(f"mr_report: {action} note {note_id} on merge request !{os.environ['CI_MERGE_REQUEST_IID']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
