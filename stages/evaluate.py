"""Evaluate the model on the valid part with BELKA's leaderboard metric, as Kaggle computes it.

Kaggle's score is the plain mean of ``average_precision_score`` over (protein, building-block group) pairs, where
the group says whether all of a molecule's building blocks were seen in training (``share``) or not
(``non_share``). A pair with no positive rows has no average precision and is left out (the summary counts it).

Writes:

- ``--metrics`` (``metrics/evaluate.json``): only figures worth comparing across experiments: ``score`` (the mean
  over the pairs), ``share`` and ``non_share`` (the mean over the proteins of that group), AP and ROC AUC per
  protein, AP per pair.
- ``--summary``: row counts, positives and positive rates per protein and pair (not declared as metrics).
- ``--plots``: PR and ROC curves per (protein, group) (``pr.csv``, ``roc.csv``) and the model's most important
  features by gain (``importance.csv``), for ``dvc plots``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from stages.cli import progress, run_main, setup_logging
from stages.dataset import BB_KEYS, count_rows, in_sorted, iter_row_batches
from stages.io import BINDS, PROTEIN, atomic_dir, write_csv, write_json
from stages.model import Model, load_model
from stages.molecules import MoleculeStore
from stages.params import Evaluate, load_params

log = logging.getLogger("stages.evaluate")

GROUPS = ("share", "non_share")
SCORE_ROWS = 200_000  # rows scored at a time (memory only)


def seen_building_blocks(rows_dir: Path) -> np.ndarray:
    """Sorted keys of every building block used in ``rows_dir`` (any position)."""
    keys: set[int] = set()
    for rows in iter_row_batches(rows_dir, 1_000_000, columns=list(BB_KEYS)):
        for column in BB_KEYS:
            keys.update(rows[column].unique().to_list())
    return np.array(sorted(keys), dtype=np.int64)


def building_block_group(rows: pl.DataFrame, seen: np.ndarray) -> np.ndarray:
    """``share`` where all three building blocks were seen in training, else ``non_share``."""
    shared = np.ones(len(rows), dtype=bool)
    for column in BB_KEYS:
        shared &= in_sorted(rows[column].to_numpy(), seen)
    return np.where(shared, GROUPS[0], GROUPS[1])


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


def score_predictions(frame: pl.DataFrame) -> tuple[dict, dict]:
    """(metrics, summary) from a frame of protein_name, group, binds, prob.

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
        summary["pairs"][f"{protein}/{group}"] = {
            "rows": len(y),
            "positives": int(y.sum()),
            "positive_rate": float(y.mean()),
        }
    metrics: dict = {
        "score": _mean(list(pair_ap.values())),
        **{group: _mean([ap for (_, g), ap in pair_ap.items() if g == group]) for group in GROUPS},
    }
    for (protein,), y, p in _parts(frame, [PROTEIN]):
        metrics[f"ap_{protein}"] = _ap(y, p)
        metrics[f"roc_auc_{protein}"] = _auc(y, p)
        summary["proteins"][protein] = {
            "rows": len(y),
            "positives": int(y.sum()),
            "positive_rate": float(y.mean()),
        }
    for (protein, group), ap in pair_ap.items():
        metrics[f"ap_{protein}_{group}"] = ap
    summary["pairs_scored"] = sum(ap is not None for ap in pair_ap.values())
    summary["pairs_without_positives"] = sorted(f"{p}/{g}" for (p, g), ap in pair_ap.items() if ap is None)
    return {k: v for k, v in metrics.items() if v is not None}, summary


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
    """The ``top`` features by total gain in the trained model, named as in the design matrix."""
    names = model.manifest["feature_names"]
    # keys f0, f1, ...: the booster has no feature names, the manifest has them in design-matrix order
    gains = model.booster.get_score(importance_type="total_gain")
    frame = pl.DataFrame(
        {
            "feature": [names[int(key[1:])] for key in gains],
            "gain": [float(value) for value in gains.values()],
        },
        schema={"feature": pl.String, "gain": pl.Float64},
    )
    return frame.sort(["gain", "feature"], descending=[True, False]).head(top)


def predict_valid(split_dir: Path, features_dir: Path, model: Model) -> pl.DataFrame:
    store = MoleculeStore(features_dir)
    model.check_features(store)
    seen = seen_building_blocks(split_dir / "train")
    valid_dir = split_dir / "valid"
    bar = progress("evaluate", count_rows(valid_dir))
    parts = []
    for rows in iter_row_batches(valid_dir, SCORE_ROWS):
        model.check_proteins(rows[PROTEIN], str(valid_dir))
        parts.append(
            pl.DataFrame(
                {
                    PROTEIN: rows[PROTEIN],
                    "group": building_block_group(rows, seen),
                    BINDS: rows[BINDS].cast(pl.Int8),
                    "prob": model.predict(rows, store),
                }
            )
        )
        bar.update(len(rows))
    bar.close()
    return pl.concat(parts)


def evaluate(params: Evaluate, split_dir: Path, features_dir: Path, model_dir: Path, metrics_file: Path,
             summary_file: Path, plots_dir: Path) -> dict:  # fmt: skip
    model = load_model(model_dir)
    frame = predict_valid(split_dir, features_dir, model)
    metrics, summary = score_predictions(frame)
    with atomic_dir(plots_dir) as tmp:
        for name, curve in curves(frame, params.curve_points).items():
            if curve is not None:
                write_csv(curve, tmp / f"{name}.csv")
        write_csv(feature_importance(model, params.top_features), tmp / "importance.csv")
    write_json(summary_file, summary)
    write_json(metrics_file, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", type=Path, required=True, help="split output (train and valid rows)")
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
        metrics = evaluate(
            params, args.split, args.features, args.models, args.metrics, args.summary, args.plots
        )
        log.info(
            "score %s (share %s, non_share %s)", *(metrics.get(k) for k in ("score", "share", "non_share"))
        )

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
