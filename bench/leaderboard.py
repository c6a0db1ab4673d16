"""A leaderboard for the generated data: submissions scored against the test set's hidden labels as Kaggle scores
them, beside what `evaluate` estimates. A script that prints figures; it asserts nothing.

    python bench/leaderboard.py score data/submission.csv data/generated/test-labels.parquet
    python bench/leaderboard.py run --seeds 2024 1 2        # a fresh clone and `dvc repro` per generator seed

Kaggle's score: for each (protein, group) pair, group ``share`` (every building block in the training set) or
``non_share`` (none), scikit-learn's ``average_precision_score`` of the submission's ``binds`` against the labels,
then the plain mean over the pairs. A pair without a positive label has no average precision (scikit-learn returns
0.0 with a warning, which would pull the mean down by a sixth for nothing a model did): it is left out of the mean,
as `evaluate` leaves it out of ``score``, and the result says how many pairs were scored and which were empty.
Rows of group ``mixed`` (a generated test set has them only when its training set is too small to use every
training building block) are in neither of Kaggle's groups and are not scored.

``run``: for each seed, a git clone of this repository's HEAD in a work directory, ``generate.seed`` set in its
params.yaml (and the test set enlarged, ``--test-shared`` / ``--test-unseen``: the default test set holds a handful
of positives per pair; the test sizes leave the training data, so the split, the models and `evaluate`, untouched;
the default data's test-only building blocks make only 7,182 distinct non-share molecules, so 6,000 is near
the most there are, and a non-share pair may still hold no positive for some seeds),
``dvc repro`` with this interpreter's ``python`` and ``dvc``, then two submissions scored against the hidden labels:
the final model's (``data/submission.csv``, which predict writes) and the split model's (predict run again on the
split model), beside `evaluate`'s ``score`` and its 95% bootstrap interval. Prints a Markdown table and writes the
results as JSON under bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import polars as pl
import yaml
from sklearn.metrics import average_precision_score

ROOT = Path(__file__).resolve().parents[1]

# The repository's layout, read in each clone after `dvc repro`.
SPLIT_MODELS = "models/split"  # fit on the split's train part: what `evaluate` scores
FINAL_MODELS = "models/final"  # fit on every labelled row: what `predict` uses for data/submission.csv
SUBMISSION = "data/submission.csv"  # the final model's submission (predict's output)
TEST_FEATURES = "data/features/test"
TEST_REJECTS = "data/features/test-rejects.csv"
TEST_LABELS = "data/generated/test-labels.parquet"
METRICS = "metrics/evaluate.json"  # its "score"
SUMMARY = "metrics/evaluate-summary.json"  # its ["bootstrap"]["score"]: [low, high]
RESULTS = ROOT / "bench" / "results"
LAYOUT = (SPLIT_MODELS, FINAL_MODELS, TEST_LABELS, SUBMISSION, METRICS, SUMMARY)  # checked against dvc.yaml

PROTEINS = ("BRD4", "HSA", "sEH")
SCORED_GROUPS = ("share", "non_share")  # Kaggle's groups


class LeaderboardError(ValueError):
    """Bad input: one line naming the file and what is wrong."""


@dataclass
class Score:
    """Kaggle's score of one submission: the mean over the pairs with a positive, and every pair's figures."""

    score: float | None  # None when no pair has a positive
    pairs_scored: int
    pairs_without_positives: list[str]
    pairs: dict[str, dict]  # "protein/group" -> rows, positives, ap (None without positives)
    unscored_rows: int  # labelled rows outside Kaggle's groups (mixed)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """scikit-learn's average precision, None where there is no positive label."""
    return float(average_precision_score(labels, scores)) if labels.any() else None


def scored_pairs(joined: pl.DataFrame) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """("protein/group", labels, predictions) of every (protein, Kaggle group) pair with rows, in a fixed order;
    ``joined`` holds the labels and a ``prediction`` column."""
    out = []
    for protein in PROTEINS:
        for group in SCORED_GROUPS:
            part = joined.filter((pl.col("protein_name") == protein) & (pl.col("group") == group))
            if len(part):
                out.append((f"{protein}/{group}", part["binds"].to_numpy(), part["prediction"].to_numpy()))
    return out


def score_submission(submission: pl.DataFrame, labels: pl.DataFrame, name: str = "submission") -> Score:
    """Kaggle's score of ``submission`` (id, binds: the predicted probability) against ``labels`` (id,
    protein_name, binds, group). The submission must have exactly one row for each labelled id."""
    for column in ("id", "binds"):
        if column not in submission.columns:
            raise LeaderboardError(f"{name}: no column {column!r} (a submission is id,binds)")
    if submission["binds"].null_count() or not submission["binds"].dtype.is_numeric():
        raise LeaderboardError(f"{name}: column 'binds' must be a number on every row")
    if not submission["id"].is_unique().all():
        raise LeaderboardError(f"{name}: column 'id' repeats ids")
    joined = labels.join(submission.select("id", pl.col("binds").alias("prediction")), on="id", how="left")
    missing = joined["prediction"].null_count()
    if missing:
        raise LeaderboardError(f"{name}: {missing} of the {len(labels)} labelled ids have no row")
    if len(submission) != len(labels):
        raise LeaderboardError(f"{name}: {len(submission) - len(labels)} rows with an id that has no label")
    pairs: dict[str, dict] = {}
    for name, y, prediction in scored_pairs(joined):
        pairs[name] = {"rows": len(y), "positives": int(y.sum()), "ap": average_precision(y, prediction)}
    present = [pair["ap"] for pair in pairs.values() if pair["ap"] is not None]
    return Score(
        score=float(np.mean(present)) if present else None,
        pairs_scored=len(present),
        pairs_without_positives=[name for name, pair in pairs.items() if pair["ap"] is None],
        pairs=pairs,
        unscored_rows=int((~joined["group"].is_in(SCORED_GROUPS)).sum()),
    )


def leaderboard_interval(
    submission: pl.DataFrame, labels: pl.DataFrame, samples: int = 1000, seed: int = 0
) -> list[float] | None:
    """The leaderboard's own 95% interval: the test set is a sample too. Each (protein, group) pair's rows are
    resampled with replacement (seeded), its AP recomputed, and the mean over the pairs taken, ``samples`` times;
    a resample without a positive in a pair leaves that pair out of that resample's mean, as the score does."""
    joined = labels.join(submission.select("id", pl.col("binds").alias("prediction")), on="id", how="inner")
    rng = np.random.default_rng(seed)
    pairs = [(y, prediction) for _, y, prediction in scored_pairs(joined) if y.any()]
    if not pairs:
        return None
    means = np.empty(samples)
    for i in range(samples):
        aps = []
        for y, prediction in pairs:
            drawn = rng.integers(0, len(y), len(y))
            ap = average_precision(y[drawn], prediction[drawn])
            if ap is not None:
                aps.append(ap)
        means[i] = np.mean(aps) if aps else np.nan
    low, high = np.nanpercentile(means, [2.5, 97.5])
    return [float(low), float(high)]


def read_submission(path: Path) -> pl.DataFrame:
    try:
        return pl.read_csv(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise LeaderboardError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]})") from None


def read_labels(path: Path) -> pl.DataFrame:
    try:
        labels = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise LeaderboardError(f"{path}: not a readable parquet file ({str(exc).splitlines()[0]})") from None
    for column in ("id", "protein_name", "binds", "group"):
        if column not in labels.columns:
            raise LeaderboardError(
                f"{path}: no column {column!r} (labels are id, protein_name, binds, group)"
            )
    return labels


def score_report(score: Score) -> str:
    lines = [f"score {_figure(score.score)} (mean over {score.pairs_scored} pairs with a positive)"]
    for name, pair in score.pairs.items():
        lines.append(
            f"  {name:<16} AP {_figure(pair['ap'])}  ({pair['positives']} positives in {pair['rows']} rows)"
        )
    if score.pairs_without_positives:
        lines.append(f"  left out, no positive: {', '.join(score.pairs_without_positives)}")
    if score.unscored_rows:
        lines.append(f"  {score.unscored_rows} rows outside Kaggle's groups (mixed) not scored")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ the benchmark


@dataclass
class SeedResult:
    seed: int
    split_lb: Score
    final_lb: Score
    evaluate_score: float | None
    evaluate_interval: list[float] | None  # 95% bootstrap interval of evaluate's score
    seconds: float
    split_lb_interval: list[float] | None = (
        None  # the leaderboard's own 95% interval (its test set is a sample)
    )
    final_lb_interval: list[float] | None = None
    estimate: float | None = (
        None  # evaluate's leaderboard_estimate: the split model projected to the final fit
    )
    estimate_interval: list[float] | None = None  # its 95% interval, a leaderboard's own noise included


def covers(interval: list[float] | None, value: float | None) -> bool | None:
    """Whether ``interval`` holds ``value``; None when either is missing."""
    if interval is None or value is None:
        return None
    return interval[0] <= value <= interval[1]


def _figure(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else ("yes" if value else "no")


def _interval(interval: list[float] | None) -> str:
    return "" if interval is None else " [{}, {}]".format(*map(_figure, interval))


def table(results: list[SeedResult]) -> str:
    """A Markdown table, one row per seed: both models' leaderboard scores with the leaderboard's own interval,
    evaluate's ``score`` (the split model on the valid part) and ``leaderboard_estimate`` (projected to the final
    model, its interval holding a leaderboard's own noise), whether the estimate's interval covers the final
    model's leaderboard score (the submission's), and whether the score's covers the split model's."""
    lines = [
        "| seed | split model LB [95%] | final model LB [95%] | evaluate score [95%] | leaderboard estimate [95%] "
        "| estimate covers final LB | score covers split LB |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.seed} | {_figure(r.split_lb.score)}{_interval(r.split_lb_interval)} "
            f"| {_figure(r.final_lb.score)}{_interval(r.final_lb_interval)} "
            f"| {_figure(r.evaluate_score)}{_interval(r.evaluate_interval)} "
            f"| {_figure(r.estimate)}{_interval(r.estimate_interval)} "
            f"| {_yes_no(covers(r.estimate_interval, r.final_lb.score))} "
            f"| {_yes_no(covers(r.evaluate_interval, r.split_lb.score))} |"
        )
    return "\n".join(lines)


def results_json(results: list[SeedResult], settings: dict) -> dict:
    return {
        "settings": settings,
        "seeds": [
            {
                **asdict(r),
                "estimate_covers_final_lb": covers(r.estimate_interval, r.final_lb.score),
                "score_covers_split_lb": covers(r.evaluate_interval, r.split_lb.score),
            }
            for r in results
        ],
    }


def parse_setting(text: str) -> tuple[list[str], object]:
    """``section.key=value`` (value read as YAML) -> (path, value)."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected section.key=value, got {text!r}")
    return key.split("."), yaml.safe_load(value)


def set_params(path: Path, settings: list[tuple[list[str], object]]) -> None:
    params = yaml.safe_load(path.read_text())
    for keys, value in settings:
        node = params
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    path.write_text(yaml.safe_dump(params, sort_keys=False))


def env() -> dict[str, str]:
    """This interpreter's bin first on PATH, so the clone's `python` and `dvc` are this environment's."""
    out = dict(os.environ)
    out["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{out.get('PATH', '')}"
    out["DVC_NO_ANALYTICS"] = "1"
    out["BELKA_PROGRESS"] = "0"
    return out


def sh(args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, env=env(), capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-30:])
        raise SystemExit(f"error: {' '.join(args)} failed in {cwd} ({result.returncode}):\n{tail}")


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: {path}: {exc}") from None


def undeclared(dvc_yaml: dict, paths: tuple[str, ...]) -> list[str]:
    """The ``paths`` that no stage of ``dvc_yaml`` writes (as an out or a metric, inside one, or as a folder of
    them)."""
    outs = [
        next(iter(out)) if isinstance(out, dict) else out  # an out with options is a one-key mapping
        for stage in dvc_yaml.get("stages", {}).values()
        for body in (stage, stage.get("do", {}))
        for kind in ("outs", "metrics")
        for out in body.get(kind, [])
    ]
    return [
        path
        for path in paths
        if not any(out == path or out.startswith(f"{path}/") or path.startswith(f"{out}/") for out in outs)
    ]


def run_seed(seed: int, workdir: Path, settings: list[tuple[list[str], object]]) -> SeedResult:
    """Clone HEAD, set the seed (and ``settings``), `dvc repro`, score both submissions."""
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    clone = workdir / f"seed-{seed}"
    sh(["git", "clone", "-q", "--no-checkout", str(ROOT), str(clone)], workdir)
    sh(["git", "checkout", "-q", head.stdout.strip()], clone)
    set_params(clone / "params.yaml", [(["generate", "seed"], seed), *settings])
    missing = undeclared(yaml.safe_load((clone / "dvc.yaml").read_text()), LAYOUT)
    if missing:
        raise SystemExit(f"error: {clone / 'dvc.yaml'}: no stage writes {', '.join(missing)} (set the paths at the "
                         f"top of bench/leaderboard.py to the repository's layout)")  # fmt: skip
    start = time.perf_counter()
    print(f"seed {seed}: dvc repro in {clone}", file=sys.stderr, flush=True)
    sh([sys.executable, "-m", "dvc", "repro"], clone)
    for path in (SPLIT_MODELS, FINAL_MODELS):
        if not (clone / path).is_dir():
            raise SystemExit(f"error: {clone / path}: no model directory after dvc repro (set the paths at the top of "
                             f"bench/leaderboard.py to the repository's layout)")  # fmt: skip
    split_submission = clone / "split-submission.csv"
    sh([sys.executable, "-m", "stages.predict", "--features", TEST_FEATURES, "--rejects", TEST_REJECTS,
        "--models", SPLIT_MODELS, "--output", str(split_submission)], clone)  # fmt: skip
    return score_clone(clone, seed, time.perf_counter() - start)


def score_clone(clone: Path, seed: int, seconds: float) -> SeedResult:
    """Both submissions of a reproduced clone against its hidden labels, beside its evaluate figures."""
    split_submission = clone / "split-submission.csv"
    labels = read_labels(clone / TEST_LABELS)
    bootstrap = read_json(clone / SUMMARY).get("bootstrap", {})
    interval, estimate_interval = bootstrap.get("score"), bootstrap.get("leaderboard_estimate")
    metrics = read_json(clone / METRICS)
    split, final = read_submission(split_submission), read_submission(clone / SUBMISSION)
    return SeedResult(
        seed=seed,
        split_lb=score_submission(split, labels, str(split_submission)),
        final_lb=score_submission(final, labels, str(clone / SUBMISSION)),
        evaluate_score=metrics.get("score"),
        evaluate_interval=list(interval) if interval else None,
        seconds=seconds,
        split_lb_interval=leaderboard_interval(split, labels),
        final_lb_interval=leaderboard_interval(final, labels),
        estimate=metrics.get("leaderboard_estimate"),
        estimate_interval=list(estimate_interval) if estimate_interval else None,
    )


def write_results(data: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # bench/results/*.tmp is git-ignored
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/leaderboard.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    score = commands.add_parser("score", help="score a submission against hidden labels, as Kaggle does")
    score.add_argument("submission", type=Path, help="a submission CSV (id,binds)")
    score.add_argument("labels", type=Path, help="the hidden labels (generate's --test-labels parquet)")
    run = commands.add_parser(
        "run", help="per generator seed: a fresh clone, dvc repro, both submissions scored"
    )
    run.add_argument("--seeds", type=int, nargs="+", default=[2024, 1, 2], help="generate.seed values")
    run.add_argument(
        "--test-shared",
        type=int,
        default=20_000,
        help="generate.test_shared_molecules (3 rows each; default 20,000; 0: params.yaml's)",
    )
    run.add_argument(
        "--test-unseen",
        type=int,
        default=6_000,
        help="generate.test_unseen_molecules (1 row each; default 6,000, near the most the default test-only "
        "blocks make: 15%% of 125 amino acids x pairs of 15%% of 183 amines; 0: params.yaml's)",
    )
    run.add_argument(
        "--set",
        type=parse_setting,
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="any other param of the clones, e.g. --set generate.train_molecules=30000",
    )
    rescore = commands.add_parser("rescore", help="the table again from clones a run kept (--keep)")
    rescore.add_argument("clones", type=Path, nargs="+", help="seed-<N> directories of an earlier run")
    run.add_argument("--workdir", type=Path, help="where the clones go (default: a temporary directory)")
    run.add_argument("--keep", action="store_true", help="keep the clones")
    run.add_argument(
        "--results", type=Path, help="the JSON results (default: bench/results/leaderboard-<seeds>.json)"
    )
    args = parser.parse_args(argv)  # fmt: skip

    try:
        if args.command == "score":
            labels = read_labels(args.labels)
            print(
                score_report(score_submission(read_submission(args.submission), labels, str(args.submission)))
            )
        elif args.command == "rescore":
            print(table([score_clone(c, int(c.name.rpartition("-")[2]), float("nan")) for c in args.clones]))
        else:
            benchmark(args)
    except LeaderboardError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def benchmark(args: argparse.Namespace) -> None:
    settings = list(args.set)
    if args.test_shared:
        settings.append((["generate", "test_shared_molecules"], args.test_shared))
    if args.test_unseen:
        settings.append((["generate", "test_unseen_molecules"], args.test_unseen))
    workdir = Path(tempfile.mkdtemp(prefix="leaderboard-", dir=args.workdir))
    try:
        results = [run_seed(seed, workdir, settings) for seed in args.seeds]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    text = table(results)
    print(text)
    path = args.results or RESULTS / f"leaderboard-{'-'.join(map(str, args.seeds))}.json"
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    described = {"commit": head, "params": {".".join(k): v for k, v in settings}, "table": text}
    write_results(results_json(results, described), path)
    print(f"results: {path}", file=sys.stderr)


if __name__ == "__main__":
    raise SystemExit(main())
