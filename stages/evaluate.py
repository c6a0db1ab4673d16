"""Evaluate the model on the valid part with BELKA's leaderboard metric, as Kaggle computes it, with its uncertainty.

Kaggle's score is the plain mean of ``average_precision_score`` over (protein, building-block group) pairs: ``share``
molecules have every building block in the training data, ``non_share`` molecules none (Kaggle's test has no
molecule that mixes the two). The split records each valid molecule's ``unseen_blocks`` (0 to 3); molecules with 1
or 2 are ``mixed``: not in Kaggle's test, so they are reported apart and left out of ``score``, and scored from a
seeded sample of ``evaluate.mixed_sample`` molecules (0: not at all). A pair with no positive rows has no average
precision and is left out: ``pairs_scored`` says how many pairs ``score`` averages.

The figures of one valid part move with which molecules happen to be in it, most of all where a pair holds few
positives. A seeded bootstrap over valid molecules (resampled within each group, all rows of a drawn molecule
together, ``evaluate.bootstrap_samples`` times) gives a 95% percentile interval for ``score``, ``share`` and
``non_share``; pairs with fewer than ``evaluate.min_positives`` positives are flagged.

Memory: a first pass reads the mixed rows' keys to draw the mixed sample (keeping the best candidates only); the
second reads and scores the valid part in batches, the mixed rows outside the sample counted but never scored, and
keeps, per share or non-share row and per sampled mixed row, the float32 score, label, protein and group (a byte
each), unseen blocks and molecule key (about 16 bytes a row). The bootstrap computes as many samples at a time as ``resources.evaluate_memory_mb`` allows (about 4
bytes a scored molecule a sample), each sample from its own seeded generator, so its intervals do not depend on
the budget; the budget also caps the rows scored at a time. It changes no output, so it is not a stage param.

Writes:

- ``--metrics`` (``metrics/evaluate.json``): only figures worth comparing across experiments: ``score`` (the mean
  over the share and non-share pairs), ``pairs_scored`` (how many pairs that mean covers, 6 when every pair has a
  positive), ``share``, ``non_share`` and ``mixed`` (the mean over the proteins of that group), AP and ROC AUC per
  protein (over the share and non-share rows), AP per scored pair.
- ``--summary``: the bootstrap intervals, flagged pairs, row counts, positives and rates per protein and pair, rows,
  positives and AP per protein for every number of unseen blocks (1 and 2: of the mixed sample), the mixed
  sample's size against all mixed rows, and a check of the groups against the building blocks actually in the
  training part (Kaggle's definition).
- ``--predictions`` (``data/evaluate/valid-predictions.parquet``): the share and non-share rows with their score
  (molecule key, protein, group, label, ``prob``), about 20 bytes a row: what ``python -m stages.compare`` pairs
  to compare two runs on the same molecules.
- ``--plots``: PR and ROC curves per (protein, group) (``pr.csv``, ``roc.csv``) and the model's most important
  features by gain (``importance.csv``), for ``dvc plots``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from stages.atomic import atomic_dir
from stages.cli import MODELS, TRAIN_FEATURES, Command, progress
from stages.dataset import BB_KEYS, GROUP_OF_UNSEEN, KEY, UNSEEN, count_rows, in_sorted, iter_row_batches
from stages.errors import InputError
from stages.io import BINDS, PROTEIN, read_json, write_csv, write_json, write_parquet
from stages.model import MANIFEST, Model, load_model
from stages.molecules import MoleculeStore
from stages.params import Evaluate, Params
from stages.split import uniform_hash

log = logging.getLogger("stages.evaluate")

SCORED = ("share", "non_share")  # Kaggle's groups: the score is the mean over these pairs
GROUPS = (*SCORED, "mixed")
GROUP = pl.Enum(GROUPS)
SCORE_ROWS = 200_000  # rows scored at a time at most (memory only)
READ_ROWS = 1_000_000  # rows whose keys are read at a time to draw the mixed sample (memory only)
CONFIDENCE = 0.95
MB = 1 << 20
DRAW = "_draw"  # the mixed sample's hash column
MIXED_SALT = 0x313D_5A3F  # the mixed sample draws on another stream than the split's draws of the same seed
HALF_PROB = "prob_half"  # the half model's score of a valid row (stages/learning_curve.py)
LEADERBOARD = "leaderboard_estimate"
LEADERBOARD_STREAM = (
    0x1EAD_B0A2  # the leaderboard noise's pairing: a generator apart from the bootstrap samples'
)


@dataclass(frozen=True)
class Projection:
    """The learning curve through two fits of the same settings, the half model (``half_rows``) and the split model
    (``split_rows``), extended to the final fit's ``final_rows``: a pair's average precision taken as linear in
    log(rows) (clipped to [0, 1]). ``factor`` is how many half-to-split steps the final fit lies beyond the split
    model: 0 when the final model is the split model."""

    half_rows: int
    split_rows: int
    final_rows: int

    @property
    def factor(self) -> float:
        if self.final_rows <= self.split_rows or self.half_rows >= self.split_rows:
            return 0.0
        return float(np.log(self.final_rows / self.split_rows) / np.log(self.split_rows / self.half_rows))

    def of(self, split_ap, half_ap):
        """The projected AP from the split model's and the half model's (floats or arrays; NaN/None stays)."""
        if split_ap is None or half_ap is None:
            return None
        return np.clip(split_ap + (split_ap - half_ap) * self.factor, 0.0, 1.0)


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
    # how many pairs ``score`` averages: a pair without positives has no AP and is left out, so two runs'
    # scores measure the same thing only when they cover the same pairs
    metrics["pairs_scored"] = sum(ap is not None for ap in scored.values())
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


@dataclass
class PairSample:
    """One (protein, group) pair prepared for weighted average precision, rows by decreasing score.

    Only the thresholds (runs of equal scores) that hold a positive row change the AP: ``molecule`` is each row's
    molecule index in its group, up to the last row of the last such threshold; ``starts`` the first row of each
    stretch that ends with such a threshold; ``positive_molecule`` the molecule of each positive row and
    ``positive_starts`` the first positive of each such threshold."""

    protein: str
    group: str
    molecule: np.ndarray
    starts: np.ndarray
    positive_molecule: np.ndarray
    positive_starts: np.ndarray

    @classmethod
    def of(
        cls, protein: str, group: str, labels: np.ndarray, scores: np.ndarray, molecule: np.ndarray
    ) -> PairSample:
        order = np.argsort(-scores, kind="stable")
        scores, labels, molecule = scores[order], labels[order], molecule[order]
        threshold = np.cumsum(np.r_[False, scores[1:] != scores[:-1]])  # each row's threshold, 0, 1, ...
        positive = np.flatnonzero(labels)
        of_positive = threshold[positive]
        positive_starts = np.flatnonzero(np.r_[True, of_positive[1:] != of_positive[:-1]])[: len(positive)]
        ends = np.searchsorted(threshold, of_positive[positive_starts], side="right")  # one past each
        starts = np.r_[0, ends[:-1]].astype(np.intp) if len(ends) else np.empty(0, dtype=np.intp)
        return cls(protein, group, molecule[: ends[-1] if len(ends) else 0], starts, molecule[positive],
                   positive_starts)  # fmt: skip

    def nbytes(self) -> int:
        """Bytes a bootstrap sample needs for this pair beyond its group's counts (see average_precision)."""
        return 4 * (len(self.molecule) + len(self.positive_molecule)) + 64 * len(self.starts)


def average_precision(pair: PairSample, counts: np.ndarray) -> np.ndarray:
    """sklearn's ``average_precision_score`` with ``sample_weight``, for many weightings at once: ``counts`` (r,
    molecules of the pair's group) weighs every row of a molecule by how often it was drawn. AP is the sum over
    thresholds of (recall step) x (precision at that threshold); integer sums, so a weighting's AP is the same
    whatever the other rows of ``counts``. NaN where a weighting has no positive weight."""
    if not len(pair.starts):
        return np.full(len(counts), np.nan)
    # int32 sums (a segment holds at most a group's draws), int64 running totals: no copy of the (r, rows) array
    predicted = np.add.reduceat(counts[:, pair.molecule], pair.starts, axis=1, dtype=np.int32)
    predicted = np.cumsum(predicted, axis=1, dtype=np.int64)
    hits = np.add.reduceat(counts[:, pair.positive_molecule], pair.positive_starts, axis=1, dtype=np.int32)
    hits = np.cumsum(hits, axis=1, dtype=np.int64)
    total = hits[:, -1]
    precision = hits / np.maximum(predicted, 1)  # predicted >= hits: 0 only where hits are
    steps = np.diff(hits, axis=1, prepend=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (steps * precision).sum(axis=1) / np.maximum(total, 1), np.nan)


def sample_counts(seed: int, sample: int, sizes: list[int]) -> list[np.ndarray]:
    """How often each molecule of each group is drawn in bootstrap sample ``sample``: ``n`` draws with replacement
    from each group of ``n`` molecules, from a generator of its own (``seed``, ``sample``), so a sample's draw does
    not depend on which samples are computed together."""
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(sample,)))
    return [np.bincount(rng.integers(0, n, n), minlength=n) for n in sizes]


def samples_per_chunk(samples: int, sizes: list[int], pairs: list[PairSample], budget_bytes: int) -> int:
    """How many bootstrap samples to compute at once so that their arrays stay under ``budget_bytes``: each holds
    4 bytes a molecule of every group (its counts) plus the largest pair's arrays; one sample's draw needs 16
    bytes a molecule of the largest group. At least one."""
    per_sample = 4 * sum(sizes) + max((pair.nbytes() for pair in pairs), default=0)
    return int(min(samples, max(1, (budget_bytes - 16 * max(sizes, default=0)) // max(per_sample, 1))))


def molecule_index(frame: pl.DataFrame) -> pl.Expr:
    """Each row's molecule number within its group, 0, 1, ... by molecule key: what a bootstrap sample counts."""
    return pl.col(KEY).rank("dense").over("group").cast(pl.Int32).sub(1).alias("molecule")


def bootstrap_draws(
    frame: pl.DataFrame,
    columns: tuple[str, ...],
    samples: int,
    seed: int,
    budget_bytes: int = 256 * MB,
    projection: Projection | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """``score``, ``share`` and ``non_share`` of each score column of ``frame`` (``prob``, or two models' scores of
    the same rows) in each of ``samples`` bootstrap draws of the valid molecules: each group's molecules resampled
    with replacement (the groups keep their sizes, as in Kaggle's test), every row of a drawn molecule counted as
    many times as it was drawn, the same draws for every column (:func:`sample_counts`: a paired comparison).
    NaN where a draw leaves a figure without a positive; a group without rows has no entry. Samples are computed a
    chunk at a time under ``budget_bytes``; the draws do not depend on it."""
    frame = frame.filter(pl.col("group").is_in(SCORED))
    if samples == 0 or len(frame) == 0:
        return {}
    frame = frame.select(PROTEIN, "group", BINDS, *columns, molecule_index(frame))
    groups = sorted(set(frame["group"].to_list()))
    sizes = [int(frame.filter(pl.col("group") == g)["molecule"].max()) + 1 for g in groups]
    parts = sorted(frame.group_by(PROTEIN, "group"), key=lambda item: item[0])
    pairs = {
        column: [
            PairSample.of(protein, group, part[BINDS].to_numpy(), part[column].to_numpy(),
                          part["molecule"].to_numpy())
            for (protein, group), part in parts
        ]
        for column in columns
    }  # fmt: skip
    del frame, parts
    chunk = samples_per_chunk(samples, sizes, [p for ps in pairs.values() for p in ps], budget_bytes)
    log.info("bootstrap: %d samples, %d at a time", samples, chunk)
    draws: dict[str, dict[str, list[np.ndarray]]] = {
        c: {"score": [], "share": [], "non_share": []} for c in columns
    }
    if projection is not None:
        draws[LEADERBOARD] = {"score": []}
    for start in range(0, samples, chunk):
        size = min(chunk, samples - start)
        counts = [np.empty((size, n), dtype=np.int32) for n in sizes]  # one row per bootstrap sample
        for row in range(size):
            for into, drawn in zip(counts, sample_counts(seed, start + row, sizes), strict=True):
                into[row] = drawn
        of_group = dict(zip(groups, counts, strict=True))
        aps = {}
        for column in columns:
            ap = aps[column] = {
                (p.protein, p.group): average_precision(p, of_group[p.group]) for p in pairs[column]
            }
            draws[column]["score"].append(_mean_of_present(list(ap.values())))
            for group in SCORED:
                values = [v for (_, g), v in ap.items() if g == group]
                if values:
                    draws[column][group].append(_mean_of_present(values))
        if projection is not None:
            projected = [projection.of(split, half)
                         for split, half in zip(aps["prob"].values(), aps[HALF_PROB].values(), strict=True)]  # fmt: skip
            draws[LEADERBOARD]["score"].append(_mean_of_present(projected))
        del counts, of_group
    return {
        column: {name: np.concatenate(parts) for name, parts in figures.items() if parts}
        for column, figures in draws.items()
    }


def percentile_interval(values: np.ndarray) -> list[float] | None:
    """The 95% percentile interval of ``values`` (NaN left out); None where none is left."""
    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return [float(low), float(high)]


def bootstrap_intervals(
    frame: pl.DataFrame,
    samples: int,
    seed: int,
    budget_bytes: int = 256 * MB,
    projection: Projection | None = None,
) -> dict:
    """95% percentile intervals of ``score``, ``share`` and ``non_share`` over ``samples`` bootstrap draws of the
    valid molecules (:func:`bootstrap_draws` of the ``prob`` column); the intervals do not depend on the budget.

    Also ``leaderboard_estimate``'s 95% interval (:func:`prediction_interval`): with a ``projection`` (and the half
    model's ``prob_half`` in ``frame``) of the projected draws, without one of ``score``'s, each plus a
    leaderboard's own sampling noise."""
    paired = projection is not None and HALF_PROB in frame.columns
    columns = ("prob", HALF_PROB) if paired else ("prob",)
    draws = bootstrap_draws(frame, columns, samples, seed, budget_bytes, projection if paired else None)
    if not draws:
        return {}
    out: dict = {"samples": samples, "seed": seed, "confidence": CONFIDENCE}
    for name, values in draws["prob"].items():
        interval = percentile_interval(values)
        if interval is not None:
            out[name] = interval
    if "score" in draws["prob"]:
        estimate = draws[LEADERBOARD]["score"] if paired else draws["prob"]["score"]
        interval = prediction_interval(estimate, draws["prob"]["score"], seed)
        if interval is not None:
            out[LEADERBOARD] = interval
    return out


def prediction_interval(estimate: np.ndarray, score: np.ndarray, seed: int) -> list[float] | None:
    """The 95% interval of what a leaderboard would give: the estimate's bootstrap draws (how much the valid
    molecules tell of the model) plus a leaderboard's own sampling noise, taken as the spread of ``score``'s
    draws around their mean (the score of a test set the size of the valid part, drawn again), paired at random
    (a seeded permutation), so the two add as independent errors. None without draws."""
    present = ~(np.isnan(estimate) | np.isnan(score))
    estimate, score = estimate[present], score[present]
    if not len(estimate):
        return None
    noise = score - score.mean()
    noise = noise[
        np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(LEADERBOARD_STREAM, 0))).permutation(
            len(noise)
        )
    ]
    tail = (1 - CONFIDENCE) / 2 * 100
    low, high = np.percentile(np.clip(estimate + noise, 0.0, 1.0), [tail, 100 - tail])
    return [float(low), float(high)]


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


def scoring_rows(n_features: int, budget_bytes: int) -> int:
    """Valid rows scored at a time: at most ``SCORE_ROWS``, fewer where a batch's design matrix (float32, built
    about three times over: the lookup, the scaled matrix, the joint model's stacked copy) would take more than
    half the memory budget. Memory only: the scores do not depend on it."""
    return int(min(SCORE_ROWS, max(1_000, budget_bytes // 2 // (12 * max(n_features, 1)))))


def valid_batches(
    train_rows: Path, valid_rows: Path, batch_rows: int, model: Model
) -> Iterator[pl.DataFrame]:
    """The valid rows a batch at a time, in compact columns: protein (an enum of the model's proteins), group,
    unseen_blocks, molecule key, label, and how many of the row's building blocks the training part holds
    (Kaggle's test of the group)."""
    seen = seen_building_blocks(train_rows)
    bar = progress("evaluate", count_rows(valid_rows))
    for rows in iter_row_batches(valid_rows, batch_rows):
        model.check_proteins(rows[PROTEIN], str(valid_rows))
        yield pl.DataFrame(
            {
                PROTEIN: rows[PROTEIN].cast(pl.Enum(model.categories)),
                "group": group_of(rows[UNSEEN]).cast(GROUP),
                UNSEEN: rows[UNSEEN].cast(pl.Int8),
                KEY: rows[KEY],
                BINDS: rows[BINDS].cast(pl.Int8),
                "blocks_in_training": blocks_seen(rows, seen),
            }
        )
        bar.update(len(rows))
    bar.close()


def mixed_keys(valid_rows: Path) -> Iterator[np.ndarray]:
    """The molecule keys of the mixed rows of the valid part, a batch at a time (two columns read)."""
    for rows in iter_row_batches(valid_rows, READ_ROWS, columns=[KEY, UNSEEN]):
        yield rows.filter(pl.col(UNSEEN).is_in([1, 2]))[KEY].to_numpy()


def group_check(frame: pl.DataFrame) -> dict:
    """The split's groups against Kaggle's definition on the actual training part: no non-share row may use a
    block the training part holds (0 by construction); a share row whose block is missing from training (every
    molecule using it was drawn into valid) is possible on small data and counted."""
    share, non_share = (frame.filter(pl.col("group") == g) for g in SCORED)
    return {
        "share_rows_with_a_block_not_in_training": int((share["blocks_in_training"] < 3).sum()),
        "non_share_rows_with_a_block_in_training": int((non_share["blocks_in_training"] > 0).sum()),
    }


Cutoff = tuple[float, int]  # (hash, key) of the last molecule in the mixed sample


def _draw(keys: np.ndarray, seed: int) -> np.ndarray:
    return uniform_hash(keys, seed ^ MIXED_SALT)


def sample_cutoff(keys: Iterable[np.ndarray], size: int, seed: int) -> Cutoff | None:
    """The mixed sample: the ``size`` molecules with the smallest seeded hash of their key (ties broken by the
    key) among ``keys`` (batches of mixed molecule keys, repeats allowed), given by the last one in; None where
    there are no more than ``size`` (all are in). The same whatever the batches; memory: the ``size`` best and a
    batch."""
    if size == 0:
        return (-1.0, 0)  # below every hash: none is in
    best = pl.DataFrame(schema={DRAW: pl.Float64, KEY: pl.Int64})
    for batch in keys:
        frame = pl.DataFrame({DRAW: _draw(batch, seed), KEY: batch}, schema=best.schema)
        if len(best) == size:
            frame = frame.filter(pl.col(DRAW) <= best[DRAW][-1])
        best = pl.concat([best, frame]).unique().sort(DRAW, KEY).head(size)
    return best.row(size - 1) if len(best) == size else None


def in_sample(keys: np.ndarray, cutoff: Cutoff | None, seed: int) -> np.ndarray:
    """True for the keys of the mixed sample that ``cutoff`` ends."""
    if cutoff is None:
        return np.ones(len(keys), dtype=bool)
    draw = _draw(keys, seed)
    return (draw < cutoff[0]) | ((draw == cutoff[0]) & (keys <= cutoff[1]))


@dataclass
class Kept:
    """What evaluate keeps of the valid rows: every share and non-share row, the rows of the mixed sample, scored."""

    frame: pl.DataFrame
    groups_against_training: dict
    mixed: dict  # the mixed rows' counts, and the sample's
    rows: int  # the valid part's rows and positives, every group
    positives: int


def keep_for_scoring(
    batches: Iterable[pl.DataFrame],
    scorers: dict[str, Callable[[pl.DataFrame], np.ndarray]],
    cutoff: Cutoff | None,
    seed: int,
) -> Kept:
    """Every share and non-share row of ``batches`` and the rows of the mixed sample that ``cutoff`` ends
    (:func:`sample_cutoff`), scored by each of ``scorers`` (a float32 column of that name: ``prob``, the split
    model's, and ``prob_half`` where the half model is scored too); the other mixed rows are counted, never
    scored. The group check and the counts are summed batch by batch. No leaderboard scores the mixed molecules
    (Kaggle's test has none), so a sample is enough for their figure; the score does not depend on it."""
    parts: list[pl.DataFrame] = []
    check = {"share_rows_with_a_block_not_in_training": 0, "non_share_rows_with_a_block_in_training": 0}
    rows = positives = mixed_rows = mixed_positives = 0
    for batch in batches:
        rows += len(batch)
        positives += int(batch[BINDS].sum() or 0)
        if "blocks_in_training" in batch.columns:
            for name, count in group_check(batch).items():
                check[name] += count
            batch = batch.drop("blocks_in_training")
        mixed = ~batch["group"].is_in(SCORED).to_numpy()
        mixed_rows += int(mixed.sum())
        mixed_positives += int(batch[BINDS].to_numpy()[mixed].sum())
        keep = ~mixed
        keep[mixed] = in_sample(batch[KEY].to_numpy()[mixed], cutoff, seed)
        batch = batch.filter(pl.Series(keep))
        if len(batch):
            parts.append(
                batch.with_columns(
                    pl.Series(name, score(batch), dtype=pl.Float32) for name, score in scorers.items()
                )
            )
    frame = pl.concat(parts, rechunk=True) if parts else pl.DataFrame()
    sampled = frame.filter(~pl.col("group").is_in(SCORED)) if len(frame) else frame
    counts = {
        "sample_molecules": sampled[KEY].n_unique() if len(sampled) else 0,
        "sample_rows": len(sampled),
        "rows": mixed_rows,
        "positives": mixed_positives,
    }
    return Kept(frame, check, counts, rows, positives)


def half_model(half_dir: Path, split_model: Model) -> Model | None:
    """The half model (stages/learning_curve.py), or None where its manifest says none was needed (the final
    model is the split model)."""
    if "skipped" in read_json(half_dir / MANIFEST, "half model manifest").get("fit", {}):
        return None
    half = load_model(half_dir)
    if (
        half.manifest.get("fit", {}).get("model") != "half"
        or half.boosters.keys() != split_model.boosters.keys()
    ):
        raise InputError(
            f"{half_dir}: not the half model of {split_model.manifest.get('model')} boosters "
            f"{sorted(split_model.boosters)} (expected learning_curve's output; dvc repro learning_curve)"
        )
    return half


def pair_aps(frame: pl.DataFrame, column: str) -> dict[tuple[str, str], float | None]:
    """Average precision of ``column``'s scores per scored (protein, group) pair (None without positives)."""
    scored = frame.filter(pl.col("group").is_in(SCORED))
    return {
        key: _ap(part[BINDS].to_numpy(), part[column].to_numpy())
        for key, part in sorted(scored.group_by(PROTEIN, "group"), key=lambda item: item[0])
    }


def leaderboard_point(curve: dict | None, metrics: dict) -> float | None:
    """The leaderboard estimate: the mean over the scored pairs of each pair's AP projected to the final fit's
    rows (``curve``: :func:`learning_curve_summary`); without one (the final model is the split model), the split
    model's ``score``."""
    if curve is None:
        return metrics.get("score")
    return _mean([pair["final_projected"] for pair in curve["pairs"].values()])


def learning_curve_summary(frame: pl.DataFrame, projection: Projection) -> dict:
    """The two points of the learning curve and the projection, per scored pair."""
    split, half = pair_aps(frame, "prob"), pair_aps(frame, HALF_PROB)
    return {
        "rows": {
            "half": projection.half_rows,
            "split": projection.split_rows,
            "final": projection.final_rows,
        },
        "factor": projection.factor,
        "pairs": {
            f"{protein}/{group}": {
                "half": half[protein, group],
                "split": split[protein, group],
                "final_projected": None
                if (v := projection.of(split[protein, group], half[protein, group])) is None
                else float(v),
            }
            for protein, group in split
        },
        "half_score": _mean(list(half.values())),
    }


def valid_predictions(frame: pl.DataFrame) -> pl.DataFrame:
    """The rows ``score`` is computed from (share and non-share), with the model's score: molecule key, protein,
    group, label and ``prob``, sorted, for ``python -m stages.compare`` to pair two runs' predictions row by row."""
    return (
        frame.filter(pl.col("group").is_in(SCORED))
        .select(KEY, pl.col(PROTEIN).cast(pl.String), pl.col("group").cast(pl.String), BINDS, "prob")
        .sort("group", PROTEIN, KEY)
    )


@dataclass(frozen=True)
class EvaluateOutput:
    metrics: Path
    summary: Path
    plots: Path
    predictions: Path | None = None  # the scored valid rows (valid_predictions), for stages.compare


def evaluate(params: Evaluate, train_rows: Path, valid_rows: Path, features_dir: Path, model_dir: Path,
             out: EvaluateOutput, memory_mb: int, half_dir: Path | None = None) -> dict:  # fmt: skip
    """Score the valid part in batches, keeping only what scoring needs (:func:`keep_for_scoring`), then the
    figures, the bootstrap (under ``memory_mb`` megabytes) and the plots. ``memory_mb`` changes no output. With
    ``half_dir`` (the half model), the leaderboard estimate projects the split model's APs to the final fit's
    rows; without it, the estimate is the split model's score."""
    budget = memory_mb * MB
    model = load_model(model_dir)
    if model.manifest.get("fit", {}).get("model") == "final":
        raise InputError(
            f"{model_dir}: the final model was fit on every labelled row, the valid part included: its score "
            "would say nothing of unseen molecules; evaluate the split model (train's output, models/split)"
        )
    store = MoleculeStore(features_dir)
    model.check_features(store)
    half = half_model(half_dir, model) if half_dir is not None else None
    cutoff = sample_cutoff(mixed_keys(valid_rows), params.mixed_sample, params.seed)
    batch_rows = scoring_rows(len(model.manifest["feature_names"]), budget) // (2 if half else 1)
    batches = valid_batches(train_rows, valid_rows, batch_rows, model)
    scorers = {"prob": lambda rows: model.predict(rows, store)}
    if half is not None:
        scorers[HALF_PROB] = lambda rows: half.predict(rows, store)
    kept = keep_for_scoring(batches, scorers, cutoff, params.seed)
    frame = kept.frame
    metrics, summary = score_predictions(frame, params.min_positives)
    summary["rows"], summary["positives"] = kept.rows, kept.positives  # all valid rows, not only those kept
    summary["mixed_sample"] = {"size": params.mixed_sample, **kept.mixed}
    projection = curve = None
    if half is not None:
        split_rows = int(model.manifest["fit"]["labelled_rows"])
        projection = Projection(
            int(half.manifest["fit"]["labelled_rows"]), split_rows, split_rows + kept.rows
        )
        curve = summary["learning_curve"] = learning_curve_summary(frame, projection)
    if (estimate := leaderboard_point(curve, metrics)) is not None:
        metrics[LEADERBOARD] = estimate
    summary["bootstrap"] = bootstrap_intervals(
        frame, params.bootstrap_samples, params.seed, budget, projection
    )
    summary["groups_against_training"] = kept.groups_against_training
    with atomic_dir(out.plots) as tmp:
        for name, curve in curves(frame.filter(pl.col("group").is_in(SCORED)), params.curve_points).items():
            if curve is not None:
                write_csv(curve, tmp / f"{name}.csv")
        write_csv(feature_importance(model, params.top_features), tmp / "importance.csv")
    if out.predictions is not None:
        write_parquet(valid_predictions(frame), out.predictions)
    write_json(out.summary, summary)
    write_json(out.metrics, metrics)
    return metrics


def run(args: argparse.Namespace, params: Params) -> None:
    out = EvaluateOutput(args.metrics, args.summary, args.plots, args.predictions)
    metrics = evaluate(params.evaluate, args.train_rows, args.valid_rows, args.features, args.models, out,
                       params.resources.evaluate_memory_mb, args.half_model)  # fmt: skip
    log.info(
        "%s", ", ".join(f"{k} {metrics[k]:.4f}" for k in ("score", *GROUPS, LEADERBOARD) if k in metrics)
    )


def main(argv: list[str] | None = None) -> int:
    return (
        Command("evaluate", __doc__)
        .paths(
            train_rows="the split's train part",
            valid_rows="the split's valid part",
            features=TRAIN_FEATURES,
            models=MODELS,
            metrics="JSON of comparable figures",
            summary="JSON of counts and positive rates",
            plots="directory of plot data",
        )
        .option("--predictions", type=Path, help="parquet of the scored valid rows (stages.compare)")
        .option(
            "--half-model",
            type=Path,
            help="the half model (learning_curve's output); without it, the leaderboard estimate is the split model's score",
        )
        .main(argv, run)
    )


if __name__ == "__main__":
    raise SystemExit(main())
