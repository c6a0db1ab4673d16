"""Compare two runs on the same valid molecules: the difference (B - A) in ``score``, ``share`` and ``non_share``
with a paired bootstrap 95% interval.

Two runs' own intervals overlap even when one model is better on nearly every resample: each interval holds the
noise of which molecules happen to be in the valid part, and that noise is shared. Here both models are scored on
the same valid molecules and, in every bootstrap sample, on the same resample of them (evaluate's seeded draws,
``stages.evaluate.bootstrap_draws``), so the interval of the difference holds only what differs between them. A
model compared with itself gives exactly 0 in every sample.

Each run's scored valid rows come from evaluate's valid predictions at that revision (the ``--predictions`` of
its cmd in dvc.yaml; git and the DVC cache, or the DVC remote: ``dvc.api``). When the two valid parts differ (other split params,
other data), only the rows common to both (the same molecule, protein, group and label) are compared, and the
counts say so; two runs with no row in common are refused.

    python -m stages.compare main HEAD           # any two git revisions or experiment names (dvc exp show)
    python -m stages.compare main workspace      # the workspace's own outputs
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import polars as pl
import yaml

from stages.cli import Command
from stages.dataset import KEY
from stages.errors import InputError
from stages.evaluate import MB, SCORED, bootstrap_draws, percentile_interval, score_predictions
from stages.io import BINDS, PROTEIN
from stages.params import Params

log = logging.getLogger("stages.compare")

PREDICTIONS_OPTION = "--predictions"  # evaluate's output, named in its dvc.yaml cmd (the one place for paths)
WORKSPACE = "workspace"
FIGURES = ("score", "share", "non_share")
ROW = [KEY, PROTEIN, "group", BINDS]  # what makes two runs' rows the same row


@dataclass(frozen=True)
class Paired:
    """Two runs' scores of the rows common to both (``prob_a``, ``prob_b``), and how many rows each had."""

    frame: pl.DataFrame
    rows_a: int
    rows_b: int

    @property
    def common(self) -> int:
        return len(self.frame)


def pair_predictions(a: pl.DataFrame, b: pl.DataFrame, name_a: str = "A", name_b: str = "B") -> Paired:
    """The rows of ``a`` and ``b`` (evaluate's valid predictions) with the same molecule, protein, group and label,
    each with both runs' scores. Raises InputError when none is common: there is nothing to compare."""
    frame = (
        a.select(*ROW, pl.col("prob").alias("prob_a"))
        .join(b.select(*ROW, pl.col("prob").alias("prob_b")), on=ROW, how="inner")
        .filter(pl.col("group").is_in(SCORED))
        .sort("group", PROTEIN, KEY)
    )
    if not len(frame):
        raise InputError(
            f"{name_a} and {name_b}: no valid row in common (the same molecule, protein, group and label): "
            "their valid parts differ entirely (other data or split params), so they cannot be compared"
        )
    return Paired(frame, len(a), len(b))


def figures(frame: pl.DataFrame, column: str) -> dict[str, float]:
    """``score``, ``share`` and ``non_share`` of one score column: evaluate's own figures of these rows."""
    metrics, _ = score_predictions(frame.select(*ROW, pl.col(column).alias("prob")))
    return {name: metrics[name] for name in FIGURES if name in metrics}


def paired_difference(paired: Paired, samples: int, seed: int, budget_bytes: int = 256 * MB) -> dict:
    """For each of ``score``, ``share`` and ``non_share``: A's and B's figure on the common rows, the difference
    B - A, and its paired bootstrap 95% interval (the same ``samples`` draws of the molecules for both, from
    ``seed``: evaluate's draws); ``better`` says whether the interval lies above 0 (B better), below (A better) or
    holds 0 (not distinguishable)."""
    a, b = figures(paired.frame, "prob_a"), figures(paired.frame, "prob_b")
    draws = bootstrap_draws(paired.frame, ("prob_a", "prob_b"), samples, seed, budget_bytes)
    out: dict = {}
    for name in FIGURES:
        if name not in a or name not in b:
            continue
        entry: dict = {"a": a[name], "b": b[name], "difference": b[name] - a[name], "interval": None}
        if draws and name in draws["prob_a"] and name in draws["prob_b"]:
            entry["interval"] = percentile_interval(draws["prob_b"][name] - draws["prob_a"][name])
        entry["better"] = verdict(entry["interval"])
        out[name] = entry
    return out


def verdict(interval: list[float] | None) -> str:
    """Which run the paired interval of B - A favours: B (above 0), A (below 0), or neither."""
    if interval is None:
        return "no interval"
    if interval[0] > 0:
        return "B"
    if interval[1] < 0:
        return "A"
    return "not distinguishable"


@dataclass(frozen=True)
class Comparison:
    """What ``python -m stages.compare`` prints: the revisions, the rows compared and the paired differences."""

    a: str
    b: str
    rows_a: int
    rows_b: int
    rows_common: int
    samples: int
    seed: int
    figures: dict

    @property
    def note(self) -> str:
        """One line on what was compared: the whole valid part, or only the rows common to both."""
        if self.rows_common == self.rows_a == self.rows_b:
            return f"the same valid part: {self.rows_common:,} rows"
        return (
            f"the valid parts differ: {self.rows_common:,} rows in common compared "
            f"({self.a}: {self.rows_a:,} rows, {self.b}: {self.rows_b:,}); the figures are those of the common rows"
        )


def compare(
    a: pl.DataFrame,
    b: pl.DataFrame,
    name_a: str,
    name_b: str,
    samples: int,
    seed: int,
    budget_bytes: int = 256 * MB,
) -> Comparison:
    paired = pair_predictions(a, b, name_a, name_b)
    return Comparison(name_a, name_b, paired.rows_a, paired.rows_b, paired.common, samples, seed,
                      paired_difference(paired, samples, seed, budget_bytes))  # fmt: skip


def format_comparison(result: Comparison) -> str:
    lines = [
        f"{result.b} - {result.a}, paired bootstrap ({result.samples} samples, seed {result.seed}): {result.note}",
        f"{'':10} {result.a[:12]:>12} {result.b[:12]:>12} {'B - A':>9}  95% interval",
    ]
    for name, entry in result.figures.items():
        interval = entry["interval"]
        shown = f"[{interval[0]:+.4f}, {interval[1]:+.4f}]" if interval else "-"
        better = {"A": f"{result.a} better", "B": f"{result.b} better"}.get(entry["better"], entry["better"])
        lines.append(
            f"{name:10} {entry['a']:12.4f} {entry['b']:12.4f} {entry['difference']:+9.4f}  {shown} {better}"
        )
    return "\n".join(lines)


def predictions_path(dvc_yaml: str) -> str:
    """Where evaluate writes its valid predictions: the ``--predictions`` argument of its cmd in ``dvc_yaml``."""
    stage = (yaml.safe_load(dvc_yaml) or {}).get("stages", {}).get("evaluate", {})
    words = str(stage.get("cmd", "")).split()
    if PREDICTIONS_OPTION not in words[:-1]:
        raise InputError(
            f"dvc.yaml: the evaluate stage's cmd passes no {PREDICTIONS_OPTION} PATH: a revision from before "
            "evaluate kept its valid predictions, which cannot be compared"
        )
    return words[words.index(PREDICTIONS_OPTION) + 1]


def read_predictions(rev: str, repo: str = ".") -> pl.DataFrame:
    """Evaluate's valid predictions at ``rev`` (a git revision or experiment ref), from git and the DVC cache or
    remote; ``workspace``: the file in the workspace."""
    if rev == WORKSPACE:
        path = Path(repo) / predictions_path((Path(repo) / "dvc.yaml").read_text())
        if not path.exists():
            raise InputError(f"{path}: not found: run `dvc repro evaluate` (or `dvc pull`) first")
        return pl.read_parquet(path)
    import dvc.api
    import dvc.exceptions
    import dvc.scm

    try:
        path = predictions_path(dvc.api.read("dvc.yaml", repo=repo, rev=rev))
        with dvc.api.open(path, repo=repo, rev=rev, mode="rb") as handle:
            return pl.read_parquet(io.BytesIO(handle.read()))
    except (dvc.exceptions.DvcException, dvc.scm.SCMError, FileNotFoundError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise InputError(
            f"evaluate's valid predictions at {rev}: cannot read them ({message}): a name git does not know, or "
            "outputs neither in the DVC cache nor on the remote (dvc pull, or the remote's keys)"
        ) from None


def resolve(rev: str, repo: str = ".") -> str:
    """An experiment name (``dvc exp show``) becomes its ref; anything else is passed to git as it is."""
    if rev == WORKSPACE:
        return rev
    from dvc.repo import Repo
    from dvc.repo.experiments.utils import resolve_name

    with Repo(repo) as dvc_repo:
        found = resolve_name(dvc_repo.scm, rev).get(rev)
    return str(found) if found is not None else rev


def run(args: argparse.Namespace, params: Params) -> None:
    samples = params.evaluate.bootstrap_samples if args.samples is None else args.samples
    if samples < 0:
        raise InputError(f"--samples must be 0 or more, got {samples}")
    frames = [read_predictions(resolve(rev)) for rev in (args.a, args.b)]
    result = compare(*frames, args.a, args.b, samples, params.evaluate.seed,
                     params.resources.evaluate_memory_mb * MB)  # fmt: skip
    print(format_comparison(result))
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    return (
        Command("compare", __doc__)
        .option("a", metavar="REV_A", help="git revision or experiment name (or `workspace`)")
        .option("b", metavar="REV_B", help="git revision or experiment name (or `workspace`)")
        .option("--samples", type=int, help="bootstrap samples (default: evaluate.bootstrap_samples)")
        .option("--json", type=Path, help="also write the comparison here as JSON")
        .main(argv, run)
    )


if __name__ == "__main__":
    raise SystemExit(main())
