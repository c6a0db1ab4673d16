"""Peak memory and time of the evaluate stage on a large valid part: this checkout's evaluate, at one or more
memory budgets, against another commit's (``--baseline``) on the same inputs. A script that prints figures; it
asserts nothing.

    python bench/evaluate_memory.py --rows 1M --baseline 2ea1684             # about 15 min on 2 cores
    python bench/evaluate_memory.py --rows 30000 --trees 3 --baseline HEAD   # a smoke run

The data: ``bench/belka_gen.py``'s BELKA-shaped rows, featurized (``--bits`` fingerprint bits), split with
``--held-out`` blocks and ``--valid-fraction`` of the share candidates (a large valid part: the old evaluate's
memory grows with it), a joint model of ``--trees`` trees on sampled negatives. Each step runs as its own
``python -m stages.<name>`` process; evaluate's peak RSS is that of its process tree (``bench.common.TreeRss``). The
baseline runs from ``git archive <ref> stages`` with a params file without the keys its schema does not know yet.
The report says whether every run of this checkout wrote the same bytes (the budget must change no output) and
whether ``score``, ``share`` and ``non_share`` equal the baseline's.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from bench.belka_gen import write_belka  # noqa: E402
from bench.common import GB, human, markdown_table, parse_size, publish, run_measured  # noqa: E402

NEW_KEYS = (("evaluate", "mixed_sample"), ("resources", "evaluate_memory_mb"))  # unknown to older schemas
FIGURES = ("score", "share", "non_share", "mixed")


def bench_params(args: argparse.Namespace, cache: Path) -> dict:
    params = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
    params["featurize"]["fingerprint"]["n_bits"] = args.bits
    params["split"].update(held_out_building_blocks=args.held_out, valid_fraction=args.valid_fraction)
    params["train"].update(model="joint", negative_sample_rate=args.negative_sample_rate)
    params["train"]["early_stopping"]["rounds"] = 0
    params["xgb"]["n_estimators"] = args.trees
    params["evaluate"]["mixed_sample"] = args.mixed_sample
    params["resources"]["feature_cache"] = str(cache)
    return params


def without_new_keys(params: dict) -> dict:
    params = copy.deepcopy(params)
    for section, key in NEW_KEYS:
        params[section].pop(key, None)
    return params


def prepare(args: argparse.Namespace, work: Path, params_file: Path) -> None:
    """Raw rows, features, split and model under ``work``, each step skipped when its output is there."""

    def step(name: str, done: Path, command: list[str]) -> None:
        if done.exists():
            return
        measured = run_measured(
            [sys.executable, "-m", *command, "--params", str(params_file)], work / f"{name}.log"
        )
        print(
            f"{name}: {measured['seconds']:.0f} s, peak RSS {measured['peak_rss'] / GB:.2f} GB",
            file=sys.stderr,
        )

    raw = work / "raw" / "train.parquet"
    if not raw.exists():
        print(f"writing {args.rows:,} rows: {write_belka(raw, args.rows)}", file=sys.stderr)
    features, split = work / "features", work / "split"
    step("featurize", features / "manifest.json", ["stages.featurize", "--side", "train", "--input", str(raw),
         "--output", str(features), "--rejects", str(work / "rejects.csv")])  # fmt: skip
    step("split", split / "summary.json", ["stages.split", "--rows", str(features / "rows"), "--train",
         str(split / "train"), "--valid", str(split / "valid"), "--summary", str(split / "summary.json")])  # fmt: skip
    step("train", work / "models" / "manifest.json", ["stages.train", "--rows", str(split / "train"), "--features",
         str(features), "--models", str(work / "models"), "--live", str(work / "live")])  # fmt: skip


def run_evaluate(work: Path, name: str, params: dict, root: Path) -> dict:
    """One evaluate run from the code under ``root``; its figures, peak RSS and seconds."""
    out = work / "runs" / re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    params_file = out / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    command = [sys.executable, "-m", "stages.evaluate", "--params", str(params_file), "--train-rows",
               str(work / "split" / "train"), "--valid-rows", str(work / "split" / "valid"), "--features",
               str(work / "features"), "--models", str(work / "models"), "--metrics", str(out / "metrics.json"),
               "--summary", str(out / "summary.json"), "--plots", str(out / "plots")]  # fmt: skip
    measured = run_measured(command, out / "evaluate.log", root=root)
    print(
        f"evaluate {name}: {measured['seconds']:.0f} s, peak RSS {measured['peak_rss'] / GB:.2f} GB",
        file=sys.stderr,
    )
    return {
        "name": name,
        **measured,
        "metrics": json.loads((out / "metrics.json").read_text()),
        "summary": json.loads((out / "summary.json").read_text()),
        "bytes": (out / "metrics.json").read_bytes() + (out / "summary.json").read_bytes(),
    }


def baseline_tree(work: Path, ref: str) -> Path:
    tree = work / f"baseline-{ref}"
    if not tree.exists():
        tree.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", ref, "stages"], cwd=ROOT, check=True, capture_output=True)
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    return tree


def report(args: argparse.Namespace, split_summary: dict, runs: list[dict]) -> str:
    ours = [run for run in runs if not run["name"].startswith("baseline")]
    same_bytes = all(run["bytes"] == ours[0]["bytes"] for run in ours)
    lines = [
        f"# evaluate: peak memory on a valid part of {human(args.rows)} input rows",
        "",
        f"`python bench/evaluate_memory.py {' '.join(sys.argv[1:])}`",
        "",
        f"Split (held out {args.held_out}, valid fraction {args.valid_fraction}): valid rows "
        + ", ".join(
            f"{group} {part['rows']:,}" for group, part in sorted(split_summary["valid_groups"].items())
        )
        + f"; train rows {split_summary['train']['rows']:,}.",
        "",
    ]
    columns = ["run", "peak RSS (tree)", "seconds", "CPU s", "load", *FIGURES, "rows kept", "bootstrap score"]
    rows = []
    for run in runs:
        summary, metrics = run["summary"], run["metrics"]
        kept = summary.get("mixed_sample", {})
        interval = summary.get("bootstrap", {}).get("score")
        rows.append([
            run["name"], f"{run['peak_rss'] / GB:.2f} GB", f"{run['seconds']:.0f}", f"{run['cpu_seconds']:.0f}",
            f"{run['load']:.1f}", *(f"{metrics[k]:.4f}" if k in metrics else "-" for k in FIGURES),
            f"{summary['rows'] - kept.get('rows', 0) + kept.get('sample_rows', 0):,}" if kept else f"{summary['rows']:,}",
            f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "-",
        ])  # fmt: skip
    lines += markdown_table(columns, rows, text_columns=0)
    lines += [
        "",
        f"This checkout's runs wrote identical metrics and summary bytes: {'yes' if same_bytes else 'NO'}.",
    ]
    for run in (r for r in runs if r["name"].startswith("baseline")):
        equal = all(abs(run["metrics"].get(k, 0) - ours[0]["metrics"].get(k, 0)) < 1e-12 for k in FIGURES[:3])
        lines.append(f"score, share and non_share equal to {run['name']}'s: {'yes' if equal else 'NO'}.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=parse_size, default=1_000_000, help="input rows (3 a molecule)")
    parser.add_argument("--bits", type=int, default=1024, help="featurize.fingerprint.n_bits")
    parser.add_argument("--held-out", type=float, default=0.1, help="split.held_out_building_blocks")
    parser.add_argument("--valid-fraction", type=float, default=0.5, help="split.valid_fraction")
    parser.add_argument("--trees", type=int, default=20, help="xgb.n_estimators")
    parser.add_argument("--negative-sample-rate", type=float, default=0.05)
    parser.add_argument("--mixed-sample", type=int, default=20_000, help="evaluate.mixed_sample")
    parser.add_argument("--budgets", default="256,64", help="resources.evaluate_memory_mb values to run")
    parser.add_argument("--baseline", help="a git ref whose evaluate runs on the same inputs (e.g. main)")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work" / "evaluate")
    parser.add_argument("--results", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    params = bench_params(args, work / "cache")
    settings = work / "settings.json"
    wanted = json.dumps({k: v for k, v in vars(args).items() if k not in ("budgets", "baseline", "results",
                                                                          "workdir")}, default=str)  # fmt: skip
    if settings.exists() and settings.read_text() != wanted:
        raise SystemExit(f"{work} holds data made with other settings ({settings.read_text()}); remove it")
    settings.write_text(wanted)
    params_file = work / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    prepare(args, work, params_file)

    runs = []
    if args.baseline:
        runs.append(run_evaluate(work, f"baseline {args.baseline}", without_new_keys(params),
                                 baseline_tree(work, args.baseline)))  # fmt: skip
    for budget in (int(b) for b in args.budgets.split(",")):
        budgeted = copy.deepcopy(params)
        budgeted["resources"]["evaluate_memory_mb"] = budget
        runs.append(run_evaluate(work, f"this checkout, {budget} MB", budgeted, ROOT))
    split_summary = json.loads((work / "split" / "summary.json").read_text())
    publish(report(args, split_summary, runs), args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
