"""The merge-request sweep (the `sweep` job, docs/ci.md "Sweeps"): a grid of params run as DVC experiments on the
runner, compared with the target branch's run on the same valid molecules, in one note on the merge request.

    python ci/sweep.py plan --grid ci/sweep.grid --max 8        expand the grid, validate every experiment's
                                                               params with the params schema, refuse past the cap
    python ci/sweep.py run --prefix mr3-j77                      `dvc exp run --temp` each experiment (a failed one
                                                               is recorded, the others run); sweep/results.json
    python ci/sweep.py note --base main [--dry-run]              the table (sorted by score, the base first) and the
                                                               paired differences, posted as the MR's sweep note

The grid is in the form `dvc exp run` understands: each line one or more `-S key=v1,v2` (or `--set-param`), its
experiments every combination of the values; lines add up; `#` starts a comment. `params.yaml:key=...` is the
same key. The `SWEEP_GRID` CI variable, when set, replaces the file (lines, or `;` between them).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project's stages package

from stages.params import ParamsError, parse_params

OUT = Path("sweep")  # what the job leaves for the next step and the artifacts
PLAN, RESULTS, PUSHED = OUT / "plan.json", OUT / "results.json", OUT / "experiments.txt"
SWEEP_MARKER = "<!-- belka-dvc-sweep -->"  # the sweep's own note, apart from the report's
FIGURES = ("score", "share", "non_share")
PARAMS_FILE = "params.yaml"


class SweepError(Exception):
    """A bad grid or a failure worth one clear line, without a traceback."""


@dataclass(frozen=True)
class Experiment:
    """One combination of the grid: its overrides (key, value as written) and the grid line it comes from."""

    overrides: tuple[tuple[str, str], ...]
    source: str

    @property
    def set_params(self) -> list[str]:
        return [arg for key, value in self.overrides for arg in ("-S", f"{key}={value}")]

    @property
    def label(self) -> str:
        return " ".join(f"{key}={value}" for key, value in self.overrides)


def split_values(text: str) -> list[str]:
    """``v1,v2`` into its values; commas inside brackets or quotes belong to one value (``[a,b]``)."""
    values, current, depth, quote = [], "", 0, ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "[{(":
            depth += 1
        elif char in "]})":
            depth -= 1
        elif char == "," and depth == 0:
            values.append(current)
            current = ""
            continue
        current += char
    return [*values, current]


def grid_lines(text: str, source: str) -> list[tuple[str, str]]:
    """(where, line) of each line of a grid that holds something, comments removed; ``;`` also ends a line."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        for part in line.split("#", 1)[0].split(";"):
            if part.strip():
                lines.append((f"{source} line {number}", part.strip()))
    return lines


def expand_grid(lines: list[tuple[str, str]]) -> list[Experiment]:
    """Every experiment of the grid, in order: each line's ``-S key=v1,v2`` options, every combination."""
    experiments = []
    for where, line in lines:
        words = shlex.split(line)
        options: list[tuple[str, list[str]]] = []
        while words:
            flag = words.pop(0)
            if flag not in ("-S", "--set-param") or not words:
                raise SweepError(f"{where}: expected `-S key=v1,v2` (as `dvc exp run` takes), got {flag!r}")
            key, sep, values = words.pop(0).partition("=")
            key = key.removeprefix(f"{PARAMS_FILE}:")
            if not sep or not key or ":" in key:
                raise SweepError(f"{where}: expected `-S key=v1,v2` with a key of {PARAMS_FILE}, got {key!r}")
            options.append((key, split_values(values)))
        for values in itertools.product(*(values for _, values in options)):
            experiments.append(Experiment(tuple(zip((k for k, _ in options), values, strict=True)), where))
    return experiments


def with_overrides(params: dict, overrides: tuple[tuple[str, str], ...]) -> dict:
    """``params`` with each ``key=value`` set (dotted keys, the value read as YAML: 3, 0.1, true, null, [a, b])."""
    out = copy.deepcopy(params)
    for key, text in overrides:
        *parents, last = key.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SweepError(f"{key}: {part} is not a section of {PARAMS_FILE}")
        node[last] = yaml.safe_load(text) if text else ""
    return out


def plan(experiments: list[Experiment], params: dict, cap: int) -> list[Experiment]:
    """The experiments to run, each one's params validated by the params schema before any runs: an unknown key or
    a bad value fails with the schema's own message; more experiments than ``cap`` are refused."""
    if not experiments:
        raise SweepError("the grid holds no experiment (lines of `-S key=v1,v2`)")
    if len(experiments) > cap:
        raise SweepError(
            f"the grid makes {len(experiments)} experiments, more than SWEEP_MAX_EXPERIMENTS={cap}: "
            "shorten the grid or raise the cap"
        )
    for number, experiment in enumerate(experiments, 1):
        try:
            parse_params(
                with_overrides(params, experiment.overrides), f"experiment {number} ({experiment.label})"
            )
        except ParamsError as error:
            raise SweepError(f"{experiment.source}: {str(error).replace(chr(10) + '  ', ' ')}") from None
    return experiments


# ------------------------------------------------------------------------------------------------- results


@dataclass
class Row:
    """One run in the note: the target branch's, the merge request's, or an experiment (``failed`` with no
    figures). ``difference``: the paired comparison against the base row (stages.compare), where there is one."""

    name: str
    kind: str  # base | merge request | experiment
    params: dict
    figures: dict = field(default_factory=dict)  # name: value
    intervals: dict = field(default_factory=dict)  # name: [low, high]
    failed: str | None = None
    difference: dict | None = None  # stages.compare.Comparison as a dict


def flatten(params: dict, prefix: str = "") -> dict[str, object]:
    out = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_params(rows: list[Row]) -> list[str]:
    """The params keys whose values are not the same in every row, in params.yaml's order."""
    flat = [flatten(row.params) for row in rows]
    keys = list(dict.fromkeys(key for f in flat for key in f))
    return [key for key in keys if len({json.dumps(f.get(key), sort_keys=True) for f in flat}) > 1]


def ordered(rows: list[Row]) -> list[Row]:
    """The base row first; then the runs by score, best first; failed experiments last."""
    base = [row for row in rows if row.kind == "base"]
    done = sorted(
        (r for r in rows if r.kind != "base" and not r.failed), key=lambda r: -r.figures.get("score", -1)
    )
    return base + done + [row for row in rows if row.kind != "base" and row.failed]


def _figure(row: Row, name: str) -> str:
    if row.failed:
        return "failed" if name == "score" else ""
    value, interval = row.figures.get(name), row.intervals.get(name)
    if value is None:
        return "-"
    return f"{value:.3f} [{interval[0]:.3f}, {interval[1]:.3f}]" if interval else f"{value:.3f}"


def _difference(entry: dict | None) -> str:
    """``+0.012 [+0.003, +0.020]`` and a mark: ▲ better (the interval above 0), ▼ worse, nothing: not
    distinguishable."""
    if not entry:
        return "-"
    interval = entry.get("interval")
    if not interval:
        return f"{entry['difference']:+.3f}"
    mark = {"B": " ▲", "A": " ▼"}.get(entry.get("better"), "")
    return f"{entry['difference']:+.3f} [{interval[0]:+.3f}, {interval[1]:+.3f}]{mark}"


def _value(value: object) -> str:
    return "null" if value is None else json.dumps(value) if isinstance(value, list | dict) else str(value)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_note(rows: list[Row], base: str, apply_remote: str = "origin", dvc_remote: str = "mr") -> str:
    """The sweep's note: one table of the runs (the base first, then by score) with score, share and non_share and
    their 95% intervals, the paired difference in score against the base, and the params that differ between the
    rows (one column each for up to three, else one column); then the paired differences in score, share and
    non_share against the base, and the best experiment with the commands that fetch and apply it."""
    rows = ordered(rows)
    keys = differing_params(rows)
    short = {key: key.rsplit(".", 1)[-1] for key in keys}
    if len(set(short.values())) < len(keys):
        short = {key: key for key in keys}
    head = ["experiment", "score [95%]", "share [95%]", "non_share [95%]", f"Δ score vs `{base}`"]
    head += [f"`{short[key]}`" for key in keys] if len(keys) <= 3 else ["params"]
    lines = [SWEEP_MARKER, f"## DVC sweep against `{base}`\n", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]  # fmt: skip
    for row in rows:
        flat = flatten(row.params)
        difference = (row.difference or {}).get("figures", {}).get("score") if row.kind != "base" else None
        cells = [f"{row.name}" + (" (base)" if row.kind == "base" else ""), *(_figure(row, n) for n in FIGURES),
                 "" if row.kind == "base" else _difference(difference)]  # fmt: skip
        if len(keys) <= 3:
            cells += [_value(flat.get(key)) for key in keys]
        else:
            cells.append(", ".join(f"{short[key]}={_value(flat.get(key))}" for key in keys))
        lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
    compared = [row for row in rows if row.kind != "base" and row.difference]
    if compared:
        lines += [
            f"\n### Paired differences against `{base}` (same valid molecules, same resamples)\n",
            "| run | Δ score [95%] | Δ share [95%] | Δ non_share [95%] | rows compared |",
            "|---|---|---|---|---|",
        ]
        for row in compared:
            figures = row.difference.get("figures", {})
            common, own = row.difference["rows_common"], row.difference["rows_b"]
            rows_cell = f"{common:,}" + ("" if common == own == row.difference["rows_a"] else f" of {own:,}")
            lines.append("| " + " | ".join(cell(c) for c in [row.name, *(_difference(figures.get(n)) for n in FIGURES),
                                                               rows_cell]) + " |")  # fmt: skip
        lines.append("\n▲ / ▼: the paired 95% interval lies above / below 0 (better / worse than the base); "
                     "no mark: not distinguishable.")  # fmt: skip
        differ = [row.name for row in compared if row.difference["rows_common"] != row.difference["rows_b"]]
        if differ:
            lines.append(f"Valid parts differ from the base's for {', '.join(differ)}: compared on the common "
                         "molecules only.")  # fmt: skip
    failed = [row for row in rows if row.failed]
    if failed:
        lines.append("\n**Failed:** " + "; ".join(f"{row.name}: {row.failed}" for row in failed))
    experiments = [row for row in rows if row.kind == "experiment" and not row.failed]
    if experiments:
        best = max(experiments, key=lambda row: row.figures.get("score", -1))
        lines.append(
            f"\n**Best experiment: `{best.name}`** (score {best.figures.get('score', float('nan')):.3f}). "
            f"Apply it: `dvc exp pull --remote {dvc_remote} {apply_remote} {best.name} && dvc exp apply {best.name}`"
        )
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------- commands


def git(*args: str) -> str:
    return subprocess.run(["git", *args], check=True, capture_output=True, text=True).stdout


def read_grid(path: str | None, text: str | None) -> list[tuple[str, str]]:
    if text and text.strip():
        return grid_lines(text, "SWEEP_GRID")
    if not path or not Path(path).exists():
        raise SweepError(f"no grid: {path or 'the grid file'} not found and SWEEP_GRID not set")
    return grid_lines(Path(path).read_text(), path)


def command_plan(args: argparse.Namespace) -> int:
    params = yaml.safe_load(Path(PARAMS_FILE).read_text())
    experiments = plan(expand_grid(read_grid(args.grid, args.grid_text)), params, args.max)
    OUT.mkdir(exist_ok=True)
    PLAN.write_text(json.dumps([asdict(e) for e in experiments], indent=2) + "\n")
    for number, experiment in enumerate(experiments, 1):
        print(f"sweep: experiment {number}: {experiment.label} ({experiment.source})")
    print(f"sweep: {len(experiments)} experiment(s), params valid (cap {args.max})")
    return 0


def evaluation(rev: str | None) -> tuple[dict, dict, dict]:
    """(metrics, bootstrap intervals, params) at a git revision, or of the workspace (None)."""

    def read(path: str) -> dict:
        text = Path(path).read_text() if rev is None else git("show", f"{rev}:{path}")
        return (yaml.safe_load(text) if path.endswith(".yaml") else json.loads(text)) or {}

    summary = read("metrics/evaluate-summary.json")
    return read("metrics/evaluate.json"), summary.get("bootstrap", {}), read(PARAMS_FILE)


def row_at(name: str, kind: str, rev: str | None) -> Row:
    metrics, intervals, params = evaluation(rev)
    return Row(name, kind, params, {n: metrics[n] for n in FIGURES if n in metrics},
               {n: intervals[n] for n in FIGURES if n in intervals})  # fmt: skip


def failure_reason(stdout: str, stderr: str) -> str:
    """The line that says why `dvc exp run` failed: the stage's own one-line error (``error: ...``), else dvc's
    (``ERROR: ...``), else the last line; at most 200 characters."""
    lines = [line.strip() for line in (stdout + "\n" + stderr).splitlines() if line.strip()]
    stage = [line for line in lines if line.startswith("error:")]
    dvc = [line for line in lines if line.startswith("ERROR")]
    return (stage or dvc or lines or ["no output"])[-1][:200]


def command_run(args: argparse.Namespace) -> int:
    from stages.compare import WORKSPACE, compare, read_predictions
    from stages.params import load_params

    experiments = [
        Experiment(tuple(map(tuple, e["overrides"])), e["source"]) for e in json.loads(PLAN.read_text())
    ]
    evaluate = load_params(PARAMS_FILE).evaluate
    base_rev = args.base_rev
    rows = [row_at(args.base, "base", base_rev), row_at(args.head, "merge request", None)]
    revisions: dict[str, str] = {args.head: WORKSPACE}
    pushed = []
    for number, experiment in enumerate(experiments, 1):
        name = f"{args.prefix}-{number}"
        print(f"sweep: running {name}: {experiment.label}", flush=True)
        started = time.monotonic()
        ran = subprocess.run(["dvc", "exp", "run", "--temp", "--name", name, *experiment.set_params],
                             capture_output=True, text=True)  # fmt: skip
        sys.stdout.write(ran.stdout[-4000:])
        sys.stderr.write(ran.stderr[-4000:])
        params = with_overrides(rows[1].params, experiment.overrides)
        if ran.returncode != 0:
            rows.append(Row(name, "experiment", params, failed=failure_reason(ran.stdout, ran.stderr)))
            print(f"sweep: {name} failed: {rows[-1].failed}", flush=True)
            continue
        ref = next(line.split()[1] for line in git("for-each-ref", "--format=%(objectname) %(refname)",
                                                        "refs/exps").splitlines() if line.endswith(f"/{name}"))  # fmt: skip
        rows.append(row_at(name, "experiment", ref))
        print(f"sweep: {name} done in {time.monotonic() - started:.0f} s", flush=True)
        revisions[name] = ref
        pushed.append(name)
    try:
        base = read_predictions(base_rev)
    except Exception as error:  # the note goes out without the paired differences
        print(f"sweep: no paired comparison with {args.base}: {error}", file=sys.stderr)
        base = None
    for row in rows[1:]:
        if base is not None and row.name in revisions:
            try:
                result = compare(base, read_predictions(revisions[row.name]), args.base, row.name,
                                 evaluate.bootstrap_samples, evaluate.seed)  # fmt: skip
                row.difference = asdict(result)
                print(f"sweep: {row.name} against {args.base}: {result.note}")
            except Exception as error:  # one comparison that cannot be made must not stop the note
                print(f"sweep: no paired comparison of {row.name} with {args.base}: {error}", file=sys.stderr)
    OUT.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    PUSHED.write_text("".join(f"{name}\n" for name in pushed))
    failed = [row.name for row in rows if row.failed]
    print(f"sweep: {len(pushed)} experiment(s) done" + (f", failed: {', '.join(failed)}" if failed else ""))
    return 0


def command_note(args: argparse.Namespace) -> int:
    from ci import mr_report

    rows = [Row(**row) for row in json.loads(RESULTS.read_text())]
    body = render_note(rows, args.base, args.git_remote_name)
    (OUT / "note.md").write_text(body)
    if args.dry_run:
        print(body)
        return 0
    report = mr_report.Report(mr_report.require_env(dict(os.environ)))
    action, note_id = report.post(body, SWEEP_MARKER)
    print(f"sweep: {action} note {note_id} on merge request !{os.environ['CI_MERGE_REQUEST_IID']}")
    failed = [row.name for row in rows if row.failed]
    return 3 if failed else 0  # the job's allowed warning: the note says which failed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    planning = commands.add_parser("plan", help="expand and validate the grid")
    planning.add_argument("--grid", default="ci/sweep.grid")
    planning.add_argument(
        "--grid-text", default=os.environ.get("SWEEP_GRID"), help="the grid itself (SWEEP_GRID)"
    )
    planning.add_argument("--max", type=int, default=8, help="the most experiments a sweep may run")
    running = commands.add_parser("run", help="run the planned experiments and compare them with the base")
    running.add_argument("--prefix", default="sweep", help="experiment names: PREFIX-1, PREFIX-2, ...")
    running.add_argument("--base", required=True, help="the target branch's name, for the note")
    running.add_argument("--base-rev", required=True, help="its git revision (origin/main)")
    running.add_argument("--head", default="this MR", help="the merge request's row")
    noting = commands.add_parser("note", help="post the sweep's note on the merge request")
    noting.add_argument("--base", required=True)
    noting.add_argument(
        "--git-remote-name", default="origin", help="the git remote a user pulls experiments from"
    )
    noting.add_argument("--dry-run", action="store_true", help="print the note instead of posting it")
    args = parser.parse_args(argv)
    try:
        return {"plan": command_plan, "run": command_run, "note": command_note}[args.command](args)
    except SweepError as error:
        print(f"sweep: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:  # the mr_report errors, and files that are not there
        if type(error).__name__ != "ReportError" and not isinstance(error, OSError):
            raise
        print(f"sweep: error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
