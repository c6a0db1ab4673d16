"""Evaluate the model on the valid part with BELKA's leaderboard metric, as Kaggle computes it, with its uncertainty.

Kaggle's score is the plain mean of ``average_precision_score`` over (protein, building-block group) pairs: ``share``
molecules have every building block in the training data, ``non_share`` molecules none (Kaggle's test has no
molecule that mixes the two). The split records each valid molecule's ``unseen_blocks`` (0 to 3); molecules with 1
or 2 are ``mixed``: not in Kaggle's test, so they are reported apart and left out of ``score``. A pair with no
positive rows has no average precision and is left out (the summary counts it).

The figures of one valid part move with which molecules happen to be in it, most of all where a pair holds few
positives. A seeded bootstrap over valid molecules (resampled within each group, all rows of a drawn molecule
together, ``evaluate.bootstrap_samples`` times) gives a 95% percentile interval for ``score``, ``share`` and
``non_share``; pairs with fewer than ``evaluate.min_positives`` positives are flagged.

Writes:

- ``--metrics`` (``metrics/evaluate.json``): only figures worth comparing across experiments: ``score`` (the mean
  over the share and non-share pairs), ``share``, ``non_share`` and ``mixed`` (the mean over the proteins of that
  group), AP and ROC AUC per protein (over the share and non-share rows), AP per scored pair.
- ``--summary``: the bootstrap intervals, flagged pairs, row counts, positives and rates per protein and pair, rows,
  positives and AP per protein for every number of unseen blocks, and a check of the groups against the building
  blocks actually in the training part (Kaggle's definition).
- ``--plots``: PR and ROC curves per (protein, group) (``pr.csv``, ``roc.csv``) and the model's most important
  features by gain (``importance.csv``), for ``dvc plots``.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from stages.cli import progress, run_main, setup_logging
from stages.dataset import BB_KEYS, GROUP_OF_UNSEEN, KEY, UNSEEN, count_rows, in_sorted, iter_row_batches
from stages.io import BINDS, PROTEIN, atomic_dir, write_csv, write_json
from stages.model import Model, load_model
from stages.molecules import MoleculeStore
from stages.params import Evaluate, load_params

log = logging.getLogger("stages.evaluate")

SCORED = ("share", "non_share")  # Kaggle's groups: the score is the mean over these pairs
GROUPS = (*SCORED, "mixed")
SCORE_ROWS = 200_000  # rows scored at a time (memory only)
CONFIDENCE = 0.95


def seen_building_blocks(rows_dir: Path) -> np.ndarray:
    """Sorted keys of every building block used in ``rows_dir`` (any position)."""
    keys: set[int] = set()
    for rows in iter_row_batches(rows_dir, 1_000_000, columns=list(BB_KEYS)):
        for column in BB_KEYS:
            keys.update(rows[column].unique().to_list())
    return np.array(sorted(keys), dtype=np.int64)


def blocks_seen(rows: pl.DataFrame, seen: np.ndarray) -> np.ndarray:
    """How many of each row's three building blocks are among ``seen`` (sorted keys)."""
    return sum(in_sorted(rows[column].to_numpy(), seen).astype(np.int8) for column in BB_KEYS)


def group_of(unseen: pl.Series) -> pl.Series:
    return unseen.replace_strict(GROUP_OF_UNSEEN, return_dtype=pl.String).alias("group")


def _ap(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(average_precision_score(labels, scores)) if labels.any() else None


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def _mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _parts(frame: pl.DataFrame, by: list[str]) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
    """(group values, labels, scores) for each group of ``frame``, in sorted order."""
    return [
        (key, part[BINDS].to_numpy(), part["prob"].to_numpy())
        for key, part in sorted(frame.group_by(by), key=lambda item: item[0])
    ]


def _counts(labels: np.ndarray) -> dict:
    return {"rows": len(labels), "positives": int(labels.sum()), "positive_rate": float(labels.mean())}


def score_predictions(frame: pl.DataFrame, min_positives: int = 0) -> tuple[dict, dict]:
    """(metrics, summary) from a frame of protein_name, group, binds, prob (and ``unseen_blocks`` when present).

    Metrics hold only comparable figures (None where undefined: a pair or protein without positives); the
    summary holds counts and rates.
    """
    pair_ap: dict[tuple[str, str], float | None] = {}
    summary: dict = {
        "rows": len(frame),
        "positives": int(frame[BINDS].sum() or 0),
        "pairs": {},
        "proteins": {},
    }
    for (protein, group), y, p in _parts(frame, [PROTEIN, "group"]):
        pair_ap[protein, group] = _ap(y, p)
        summary["pairs"][f"{protein}/{group}"] = {**_counts(y), "ap": pair_ap[protein, group]}
    scored = {pair: ap for pair, ap in pair_ap.items() if pair[1] in SCORED}
    metrics: dict = {
        "score": _mean(list(scored.values())),
        **{group: _mean([ap for (_, g), ap in pair_ap.items() if g == group]) for group in GROUPS},
    }
    for (protein,), y, p in _parts(frame.filter(pl.col("group").is_in(SCORED)), [PROTEIN]):
        metrics[f"ap_{protein}"] = _ap(y, p)
        metrics[f"roc_auc_{protein}"] = _auc(y, p)
        summary["proteins"][protein] = _counts(y)
    for (protein, group), ap in scored.items():
        metrics[f"ap_{protein}_{group}"] = ap
    summary["pairs_scored"] = sum(ap is not None for ap in scored.values())
    summary["pairs_without_positives"] = sorted(f"{p}/{g}" for (p, g), ap in scored.items() if ap is None)
    summary["pairs_with_few_positives"] = sorted(
        name
        for name, pair in summary["pairs"].items()
        if name.split("/")[1] in SCORED and pair["positives"] < min_positives
    )
    if UNSEEN in frame.columns:
        summary["by_unseen_blocks"] = {
            str(unseen): {
                protein: {**_counts(y), "ap": _ap(y, p)} for (protein,), y, p in _parts(part, [PROTEIN])
            }
            for (unseen,), part in sorted(frame.group_by(UNSEEN), key=lambda item: item[0])
        }
    return {k: v for k, v in metrics.items() if v is not None}, summary


# ---------------------------------------------------------------------------------------------- bootstrap


def weighted_average_precision(
    labels: np.ndarray, weights: np.ndarray, last_of_tie: np.ndarray
) -> np.ndarray:
    """sklearn's ``average_precision_score`` with ``sample_weight``, for many weightings at once.

    ``labels`` (n,) are sorted by decreasing score; ``weights`` (r, n) holds one weighting per row of ``r``;
    ``last_of_tie`` indexes the last row of each run of equal scores (the thresholds). AP is the sum over
    thresholds of (recall step) x (precision at that threshold); NaN where a weighting has no positive weight.
    """
    true_positives = np.cumsum(weights * labels, axis=1)[:, last_of_tie]
    predicted = np.cumsum(weights, axis=1)[:, last_of_tie]
    total = true_positives[:, -1:]
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, true_positives / np.where(predicted > 0, predicted, 1), 0.0)
        steps = np.diff(true_positives, axis=1, prepend=0.0)
        return np.where(total[:, 0] > 0, (steps * precision).sum(axis=1) / total[:, 0], np.nan)


@dataclass
class PairSample:
    """One (protein, group) pair, sorted by decreasing score, with each row's molecule index in its group."""

    protein: str
    group: str
    labels: np.ndarray
    molecule: np.ndarray
    last_of_tie: np.ndarray

    @classmethod
    def of(cls, protein: str, group: str, part: pl.DataFrame) -> PairSample:
        order = np.argsort(-part["prob"].to_numpy(), kind="stable")
        scores = part["prob"].to_numpy()[order]
        last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
        return cls(protein, group, part[BINDS].to_numpy()[order].astype(np.float64),
                   part["molecule"].to_numpy()[order], last)  # fmt: skip


def bootstrap_intervals(frame: pl.DataFrame, samples: int, seed: int, chunk: int = 100) -> dict:
    """95% percentile intervals of ``score``, ``share`` and ``non_share`` over ``samples`` bootstrap draws of the
    valid molecules, each group's molecules resampled with replacement (the groups keep their sizes, as in
    Kaggle's test), every row of a drawn molecule counted as many times as it was drawn."""
    frame = frame.filter(pl.col("group").is_in(SCORED))
    if samples == 0 or len(frame) == 0:
        return {}
    frame = frame.with_columns(
        pl.col(KEY).rank("dense").over("group").cast(pl.Int64).sub(1).alias("molecule")
    )
    molecules = {g: int(part["molecule"].max()) + 1 for (g,), part in frame.group_by("group")}
    pairs = [
        PairSample.of(protein, group, part)
        for (protein, group), part in sorted(frame.group_by(PROTEIN, "group"), key=lambda item: item[0])
    ]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[np.ndarray]] = {"score": [], "share": [], "non_share": []}
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        counts = {  # how often each molecule of each group is drawn, one row per bootstrap sample
            g: np.stack([np.bincount(rng.integers(0, n, n), minlength=n) for _ in range(size)]).astype(
                np.float64
            )
            for g, n in sorted(molecules.items())
        }
        ap = {(p.protein, p.group): weighted_average_precision(p.labels, counts[p.group][:, p.molecule],
                                                               p.last_of_tie) for p in pairs}  # fmt: skip
        draws["score"].append(_mean_of_present(list(ap.values())))
        for group in SCORED:
            values = [v for (_, g), v in ap.items() if g == group]
            if values:
                draws[group].append(_mean_of_present(values))
    tail = (1 - CONFIDENCE) / 2 * 100
    out = {"samples": samples, "seed": seed, "confidence": CONFIDENCE}
    for name, parts in draws.items():
        values = np.concatenate(parts) if parts else np.empty(0)
        values = values[~np.isnan(values)]
        if len(values):
            low, high = np.percentile(values, [tail, 100 - tail])
            out[name] = [float(low), float(high)]
    return out


def _mean_of_present(values: list[np.ndarray]) -> np.ndarray:
    """The mean over pairs for each bootstrap sample, leaving out pairs without a positive in that sample (as the
    score leaves out pairs without positives); NaN where no pair has one."""
    stacked = np.stack(values)
    present = ~np.isnan(stacked)
    count = present.sum(axis=0)
    return np.where(count > 0, np.where(present, stacked, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)


def curve_points(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` points of a curve, evenly spaced along it, both ends kept."""
    if len(x) <= n:
        return x, y
    index = np.unique(np.linspace(0, len(x) - 1, n).round().astype(int))
    return x[index], y[index]


def curves(frame: pl.DataFrame, n_points: int) -> dict[str, pl.DataFrame]:
    """PR and ROC curves of each (protein, group) pair that has positives and negatives, as long tables with
    ``protein`` and ``group`` columns (the plot colours by protein and puts the groups apart)."""
    pr, roc = [], []
    for (protein, group), y, p in _parts(frame, [PROTEIN, "group"]):
        if not 0 < y.sum() < len(y):
            continue
        precision, recall, _ = precision_recall_curve(y, p)
        recall, precision = curve_points(recall[::-1], precision[::-1], n_points)
        pr.append(_curve(protein, group, {"recall": recall, "precision": precision}))
        fpr, tpr, _ = roc_curve(y, p)
        fpr, tpr = curve_points(fpr, tpr, n_points)
        roc.append(_curve(protein, group, {"fpr": fpr, "tpr": tpr}))
    return {"pr": pl.concat(pr) if pr else None, "roc": pl.concat(roc) if roc else None}


def _curve(protein: str, group: str, columns: dict[str, np.ndarray]) -> pl.DataFrame:
    n = len(next(iter(columns.values())))
    return pl.DataFrame({"protein": [protein] * n, "group": [group] * n, "point": np.arange(n), **columns})


def feature_importance(model: Model, top: int) -> pl.DataFrame:
    """The ``top`` features by total gain in the trained model (summed over its boosters), named as in the design
    matrix."""
    gains = model.total_gain()
    frame = pl.DataFrame(
        {"feature": list(gains), "gain": list(gains.values())},
        schema={"feature": pl.String, "gain": pl.Float64},
    )
    return frame.sort(["gain", "feature"], descending=[True, False]).head(top)


def predict_valid(train_rows: Path, valid_rows: Path, features_dir: Path, model: Model) -> pl.DataFrame:
    """The valid rows scored by the model: protein, group, unseen_blocks, molecule key, label, probability, and
    how many of the row's building blocks the training part holds (Kaggle's test of the group)."""
    store = MoleculeStore(features_dir)
    model.check_features(store)
    seen = seen_building_blocks(train_rows)
    bar = progress("evaluate", count_rows(valid_rows))
    parts = []
    for rows in iter_row_batches(valid_rows, SCORE_ROWS):
        model.check_proteins(rows[PROTEIN], str(valid_rows))
        parts.append(
            pl.DataFrame(
                {
                    PROTEIN: rows[PROTEIN],
                    "group": group_of(rows[UNSEEN]),
                    UNSEEN: rows[UNSEEN],
                    KEY: rows[KEY],
                    BINDS: rows[BINDS].cast(pl.Int8),
                    "prob": model.predict(rows, store),
                    "blocks_in_training": blocks_seen(rows, seen),
                }
            )
        )
        bar.update(len(rows))
    bar.close()
    return pl.concat(parts)


def group_check(frame: pl.DataFrame) -> dict:
    """The split's groups against Kaggle's definition on the actual training part: no non-share row may use a
    block the training part holds (0 by construction); a share row whose block is missing from training (every
    molecule using it was drawn into valid) is possible on small data and counted."""
    share, non_share = (frame.filter(pl.col("group") == g) for g in SCORED)
    return {
        "share_rows_with_a_block_not_in_training": int((share["blocks_in_training"] < 3).sum()),
        "non_share_rows_with_a_block_in_training": int((non_share["blocks_in_training"] > 0).sum()),
    }


@dataclass(frozen=True)
class EvaluateOutput:
    metrics: Path
    summary: Path
    plots: Path


def evaluate(params: Evaluate, train_rows: Path, valid_rows: Path, features_dir: Path, model_dir: Path,
             out: EvaluateOutput) -> dict:  # fmt: skip
    model = load_model(model_dir)
    frame = predict_valid(train_rows, valid_rows, features_dir, model)
    metrics, summary = score_predictions(frame, params.min_positives)
    summary["bootstrap"] = bootstrap_intervals(frame, params.bootstrap_samples, params.seed)
    summary["groups_against_training"] = group_check(frame)
    with atomic_dir(out.plots) as tmp:
        for name, curve in curves(frame.filter(pl.col("group").is_in(SCORED)), params.curve_points).items():
            if curve is not None:
                write_csv(curve, tmp / f"{name}.csv")
        write_csv(feature_importance(model, params.top_features), tmp / "importance.csv")
    write_json(out.summary, summary)
    write_json(out.metrics, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--train-rows", type=Path, required=True, help="the split's train part")
    parser.add_argument("--valid-rows", type=Path, required=True, help="the split's valid part")
    parser.add_argument("--features", type=Path, required=True, help="featurize output of the train data")
    parser.add_argument("--models", type=Path, required=True)
    parser.add_argument("--metrics", type=Path, required=True, help="JSON of comparable figures")
    parser.add_argument("--summary", type=Path, required=True, help="JSON of counts and positive rates")
    parser.add_argument("--plots", type=Path, required=True, help="directory of plot data")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_params(args.params).evaluate
        out = EvaluateOutput(args.metrics, args.summary, args.plots)
        metrics = evaluate(params, args.train_rows, args.valid_rows, args.features, args.models, out)
        log.info("%s", ", ".join(f"{k} {metrics[k]:.4f}" for k in ("score", *GROUPS) if k in metrics))

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
