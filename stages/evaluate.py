"""Evaluate the model on the valid part with BELKA's leaderboard metric, as Kaggle computes it.

Kaggle's score is the plain mean of ``average_precision_score`` over (protein, building-block group) pairs, where
the group says whether all of a molecule's building blocks were seen in training (``share``) or not
(``non_share``). A pair with no positive rows has no average precision and is left out (and counted).

Writes ``metrics/evaluate.json`` (score, AP and ROC AUC per protein and per pair, row counts, positive rates) and
PR and ROC curve data per protein under ``metrics/plots/`` for ``dvc plots``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from stages.dataset import BB_KEYS, MoleculeStore, count_rows, iter_row_batches
from stages.io import BINDS, PROTEIN, Progress, atomic_dir, run_main, setup_logging, write_csv, write_json
from stages.model import MODEL_DIR, load_model
from stages.params import Evaluate, load_params
from stages.split import SPLIT_DIR

log = logging.getLogger("stages.evaluate")

FEATURES_DIR = Path("data/features/train")
METRICS_FILE = Path("metrics/evaluate.json")
PLOTS_DIR = Path("metrics/plots")
GROUPS = ("share", "non_share")


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
        values = rows[column].to_numpy()
        pos = np.minimum(np.searchsorted(seen, values), max(len(seen) - 1, 0))
        shared &= (seen[pos] == values) if len(seen) else False
    return np.where(shared, GROUPS[0], GROUPS[1])


def _ap(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(average_precision_score(labels, scores)) if labels.any() else None


def _auc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    return float(roc_auc_score(labels, scores)) if 0 < labels.sum() < len(labels) else None


def score_predictions(frame: pl.DataFrame) -> dict:
    """Metrics from a frame of protein_name, group, binds, prob."""
    labels, scores = frame[BINDS].to_numpy(), frame["prob"].to_numpy()
    metrics: dict = {
        "rows": len(frame),
        "positives": int(labels.sum()),
        "positive_rate": float(labels.mean()) if len(frame) else 0.0,
        "ap": _ap(labels, scores),
        "roc_auc": _auc(labels, scores),
        "by_protein": {},
        "by_group": {},
    }
    pair_aps = []
    for (protein,), part in sorted(frame.group_by([PROTEIN]), key=lambda item: item[0]):
        y, p = part[BINDS].to_numpy(), part["prob"].to_numpy()
        metrics["by_protein"][protein] = {
            "rows": len(part),
            "positive_rate": float(y.mean()),
            "ap": _ap(y, p),
            "roc_auc": _auc(y, p),
        }
    for (protein, group), part in sorted(frame.group_by([PROTEIN, "group"]), key=lambda item: item[0]):
        y, p = part[BINDS].to_numpy(), part["prob"].to_numpy()
        ap = _ap(y, p)
        metrics["by_group"][f"{protein}/{group}"] = {"rows": len(part), "positives": int(y.sum()), "ap": ap}
        if ap is not None:
            pair_aps.append(ap)
    metrics["score"] = float(np.mean(pair_aps)) if pair_aps else None
    metrics["pairs_scored"] = len(pair_aps)
    metrics["pairs_without_positives"] = len(metrics["by_group"]) - len(pair_aps)
    return metrics


def curve_points(x: np.ndarray, y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` points of a curve, evenly spaced along it, both ends kept."""
    if len(x) <= n:
        return x, y
    index = np.unique(np.linspace(0, len(x) - 1, n).round().astype(int))
    return x[index], y[index]


def curves(frame: pl.DataFrame, n_points: int) -> dict[str, pl.DataFrame]:
    out = {}
    for (protein,), part in sorted(frame.group_by([PROTEIN]), key=lambda item: item[0]):
        y, p = part[BINDS].to_numpy(), part["prob"].to_numpy()
        if not 0 < y.sum() < len(y):
            continue
        precision, recall, _ = precision_recall_curve(y, p)
        recall, precision = curve_points(recall[::-1], precision[::-1], n_points)
        out[f"pr_{protein}"] = pl.DataFrame({"recall": recall, "precision": precision})
        fpr, tpr, _ = roc_curve(y, p)
        fpr, tpr = curve_points(fpr, tpr, n_points)
        out[f"roc_{protein}"] = pl.DataFrame({"fpr": fpr, "tpr": tpr})
    return out


def predict_valid(split_dir: Path, features_dir: Path, model_dir: Path, batch_rows: int) -> pl.DataFrame:
    model = load_model(model_dir)
    store = MoleculeStore(features_dir)
    model.check_features(store)
    seen = seen_building_blocks(split_dir / "train")
    valid_dir = split_dir / "valid"
    progress = Progress("evaluate", count_rows(valid_dir))
    parts = []
    for rows in iter_row_batches(valid_dir, batch_rows):
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
        progress.update(len(rows))
    progress.finish()
    return pl.concat(parts)


def evaluate(params: Evaluate, split_dir: Path, features_dir: Path, model_dir: Path, metrics_file: Path,
             plots_dir: Path, batch_rows: int = 200_000) -> dict:  # fmt: skip
    frame = predict_valid(split_dir, features_dir, model_dir, batch_rows)
    metrics = score_predictions(frame)
    with atomic_dir(plots_dir) as tmp:
        for name, curve in curves(frame, params.curve_points).items():
            write_csv(curve, tmp / f"{name}.csv")
    write_json(metrics_file, metrics)
    return metrics


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", type=Path, default=SPLIT_DIR)
    parser.add_argument("--features", type=Path, default=FEATURES_DIR)
    parser.add_argument("--models", type=Path, default=MODEL_DIR)
    parser.add_argument("--metrics", type=Path, default=METRICS_FILE)
    parser.add_argument("--plots", type=Path, default=PLOTS_DIR)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_params(args.params).evaluate
        metrics = evaluate(params, args.split, args.features, args.models, args.metrics, args.plots)
        log.info("score (mean AP over protein x building-block group) %s", metrics["score"])

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
