"""Train the binding model: XGBoost on ``[one-hot protein | scaled descriptors | fingerprint bits]``.

``train.model`` picks the form: ``joint`` (one booster for every protein, the protein one-hot encoded) or
``per_protein`` (one booster per protein on that protein's rows, the form most strong BELKA tree solutions used).
Rows stream from ``data/split/train`` in batches through an ``xgboost.DataIter``; each batch is expanded with its
molecules' features only when XGBoost asks for it. ``train.data_mode`` picks ``QuantileDMatrix`` (the quantised
matrix in memory, about 1 byte a feature value) or ``ExtMemQuantileDMatrix`` (pages on disk, under
``resources.external_memory_dir``, removed when training ends).

Negatives can be down-sampled, weighted so the model still sees BELKA's base rates: a fixed fraction
(``train.negative_sample_rate``, weight 1/rate) or a number of negatives per positive for each protein
(``train.negatives_per_positive``: rate = k x positives / negatives of that protein).

With ``train.early_stopping.rounds`` > 0, an inner part of the training rows is drawn by the split's rule with its
own fractions (molecules with a held-out block, and a random fraction of the others): boosting stops when the mean
of ``xgb.eval_metric`` over its unseen-like and share-like parts has not improved for that many rounds, and the
saved model keeps the best iteration's trees. The part ``evaluate`` scores is never read here.

The booster is trained with the parameters ``XGBClassifier(**xgb)`` would use (its ``get_xgb_params()``), so
``XGBClassifier().load_model("models/model.json")`` gives the same classifier. dvclive logs the per-iteration
curves (fit part and inner parts) and the best iteration to ``metrics/train``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import xgboost as xgb
from dvclive import Live
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from stages import engine
from stages.atomic import atomic_dir, scratch_dir
from stages.cli import Command, progress
from stages.dataset import BB_KEYS, KEY, iter_row_batches, read_rows
from stages.errors import InputError, first_line
from stages.io import BINDS, ID, PROTEIN, list_shards, write_csv
from stages.memory import check_fit
from stages.model import JOINT, design_matrix, feature_names, save_model
from stages.molecules import MoleculeStore, cached_store
from stages.params import Params, Train, external_memory_dir, threads
from stages.split import Rule, assign, uniform_hash

log = logging.getLogger("stages.train")

FIT, STOP_SHARE, STOP_UNSEEN = "fit", "stop_share", "stop_unseen"  # the parts of the training rows
LABEL_COLUMNS = [ID, KEY, PROTEIN, BINDS, *BB_KEYS]
EARLY_STOPPING_STREAM = 0xE5_1D_0F_F5  # the early-stopping draw's own stream: independent of the split's draw


def sample_rows(rows: pl.DataFrame, rates: dict[str, float], seed: int) -> pl.DataFrame:
    """Keep every positive and a seeded fraction of negatives (``rates`` by protein, 1 for one not named: a fixed
    draw per row id); add ``weight`` (1/rate for kept negatives), so weighted counts are the unsampled ones."""
    rate = rows[PROTEIN].replace_strict(rates, default=1.0, return_dtype=pl.Float64).to_numpy()
    keep = (rows[BINDS].to_numpy() == 1) | (uniform_hash(rows[ID].to_numpy(), seed) < rate)
    weight = np.where(rows[BINDS].to_numpy() == 1, 1.0, 1.0 / rate).astype(np.float32)
    return rows.with_columns(pl.Series("weight", weight)).filter(pl.Series(keep))


def inner_rule(params: Params) -> Rule | None:
    """The rule that draws the early-stopping part from the training rows (None: no early stopping)."""
    stopping = params.train.early_stopping
    if stopping.rounds == 0:
        return None
    return Rule(
        stopping.held_out_building_blocks, stopping.valid_fraction, params.train.seed, EARLY_STOPPING_STREAM
    )


def part_of(rows: pl.DataFrame, rule: Rule | None) -> np.ndarray:
    """Which part of the training rows each row is in: fit, or the unseen-like / share-like early-stopping part."""
    if rule is None:
        return np.full(len(rows), FIT)
    where = assign(rows, rule)
    return np.where(~where.held, FIT, np.where(where.unseen > 0, STOP_UNSEEN, STOP_SHARE))


@dataclass
class LabelCounts:
    """Rows and positives of the training rows by (part, protein): every part gives the base rates, the fit part
    the negative rates, and a part without both classes is not built into a matrix."""

    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    positives: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, rows: pl.DataFrame, parts: np.ndarray) -> None:
        grouped = rows.with_columns(pl.Series("part", parts)).group_by("part", PROTEIN)
        for part, protein, n, positives in grouped.agg(pl.len(), pl.col(BINDS).sum()).iter_rows():
            self.rows[part, protein] = self.rows.get((part, protein), 0) + n
            self.positives[part, protein] = self.positives.get((part, protein), 0) + positives

    @property
    def proteins(self) -> list[str]:
        return sorted({protein for _, protein in self.rows})

    def of(self, part: str | None = None, protein: str | None = None) -> tuple[int, int]:
        """(rows, positives) of a part (None: all) and a protein (None: all)."""
        chosen = [k for k in self.rows if part in (None, k[0]) and protein in (None, k[1])]
        return sum(self.rows[k] for k in chosen), sum(self.positives[k] for k in chosen)

    def base_rate(self) -> dict[str, float]:
        return {p: self.of(protein=p)[1] / self.of(protein=p)[0] for p in self.proteins}


def negative_rates(params: Params, counts: LabelCounts) -> dict[str, float]:
    """The fraction of negatives kept for each protein."""
    rates = {}
    for protein in counts.proteins:
        rows, positives = counts.of(FIT, protein)
        rates[protein] = params.train.negative_rate(positives, rows - positives)
    return rates


@dataclass(frozen=True)
class RowSelection:
    """The training rows one matrix holds: one part (fit, or an early-stopping part drawn by ``rule``), every
    protein's or only ``protein``'s, negatives kept at each protein's rate (seeded by the row id, see
    :func:`sample_rows`). The same on one machine and on a Dask worker, which reads its partitions with it."""

    rule: Rule | None
    part: str
    protein: str | None
    rates: tuple[tuple[str, float], ...]
    seed: int

    def apply(self, rows: pl.DataFrame) -> pl.DataFrame:
        chosen = part_of(rows, self.rule) == self.part
        if self.protein is not None:
            chosen &= rows[PROTEIN].to_numpy() == self.protein
        return sample_rows(rows.filter(pl.Series(chosen)), dict(self.rates), self.seed)


@dataclass(frozen=True)
class RowSource:
    """Every batch of a rows directory, as a selection keeps it: what one machine's matrices read, again for each
    pass XGBoost makes."""

    rows_dir: Path
    batch_rows: int
    selection: RowSelection

    def batches(self) -> Iterator[pl.DataFrame]:
        for rows in iter_row_batches(self.rows_dir, self.batch_rows):
            selected = self.selection.apply(rows)
            if len(selected):
                yield selected


class RowBatches(xgb.DataIter):
    """Feeds XGBoost one expanded batch at a time from ``source`` (anything with ``batches()``: a
    :class:`RowSource`, or a rank's :class:`PartitionSource`); XGBoost calls reset() for each pass it needs."""

    def __init__(
        self,
        source: RowSource | PartitionSource,
        store: MoleculeStore,
        encoder: OneHotEncoder | None,
        scaler: StandardScaler,
        cache_prefix: str | None = None,
    ) -> None:
        self.source, self.store, self.encoder, self.scaler = source, store, encoder, scaler
        self.iterator: Iterator[pl.DataFrame] | None = None
        super().__init__(cache_prefix=cache_prefix)

    def next(self, input_data: Callable) -> bool:
        if self.iterator is None:
            self.iterator = self.source.batches()
        rows = next(self.iterator, None)
        if rows is None:
            return False
        matrix = design_matrix(rows, self.store, self.encoder, self.scaler)
        input_data(
            data=matrix, label=rows[BINDS].to_numpy().astype(np.float32), weight=rows["weight"].to_numpy()
        )
        return True

    def reset(self) -> None:
        self.iterator = None


@dataclass
class Preprocessing:
    encoder: OneHotEncoder
    scaler: StandardScaler
    counts: LabelCounts  # every training row
    kept: LabelCounts  # the rows negative sampling keeps: what each matrix will hold
    rates: dict[str, float]


def fit_preprocessing(params: Params, rows_dir: Path, store: MoleculeStore) -> Preprocessing:
    """Two streaming passes over the training rows: the labels (base rates before any sampling, and the fit part's
    counts that set the negative rates), then what sampling keeps, with the scaler fitted on the sampled fit rows
    the model trains on."""
    rule, seed = inner_rule(params), params.train.seed
    counts = LabelCounts()
    for rows in iter_row_batches(rows_dir, params.train.batch_rows, columns=LABEL_COLUMNS):
        counts.add(rows, part_of(rows, rule))
    if not counts.rows:
        raise InputError("train: no training rows (check the split and the input data)")
    if not counts.of(FIT)[0]:
        raise InputError(
            "train: the early-stopping part takes every training row; lower train.early_stopping's fractions"
        )
    rates = negative_rates(params, counts)
    kept = LabelCounts()
    scaler = StandardScaler()
    for rows in iter_row_batches(rows_dir, params.train.batch_rows, columns=LABEL_COLUMNS):
        sampled = sample_rows(rows, rates, seed)
        parts = part_of(sampled, rule)
        kept.add(sampled, parts)
        # the rows the fit matrix holds (RowSelection(rule, FIT, ...)), in order: what the scaler is fitted on
        fit_keys = sampled[KEY].to_numpy()[parts == FIT]
        if store.descriptors and len(fit_keys):
            scaler.partial_fit(store.lookup(fit_keys).descriptors)
    if not store.descriptors:  # fingerprint only: nothing to scale
        scaler.mean_ = scaler.scale_ = scaler.var_ = np.empty(0)
        scaler.n_samples_seen_ = 0
    categories = counts.proteins
    encoder = OneHotEncoder(categories=[categories], sparse_output=False, dtype=np.float32)
    encoder.fit(np.array(categories, dtype=object).reshape(-1, 1))
    return Preprocessing(encoder, scaler, counts, kept, rates)


class ProgressBar(xgb.callback.TrainingCallback):
    """Advances the progress bar after each boosting round."""

    def __init__(self, bar) -> None:
        super().__init__()
        self.bar = bar

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        self.bar.update(1)
        return False


class InnerEarlyStopping(xgb.callback.TrainingCallback):
    """Stops boosting when the mean of ``metric`` over the early-stopping parts has not improved for ``rounds``
    rounds; a part whose metric is undefined (no positive) is left out of the mean."""

    def __init__(self, rounds: int, metric: str, parts: list[str]) -> None:
        super().__init__()
        self.rounds, self.metric, self.parts = rounds, metric, parts
        self.maximize = metric in ("aucpr", "auc")
        self.best_score: float | None = None
        self.best_iteration = -1

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        values = [float(evals_log[part][self.metric][-1]) for part in self.parts if part in evals_log]
        values = [v for v in values if np.isfinite(v)]
        if not values:
            return False
        score = float(np.mean(values))
        better = self.best_score is None or (
            score > self.best_score if self.maximize else score < self.best_score
        )
        if better:
            self.best_score, self.best_iteration = score, epoch
        return epoch - self.best_iteration >= self.rounds


def log_curves(live: Live, history: dict) -> None:
    """Every evaluation metric of every boosting round, as dvclive steps (series of unequal length end early)."""
    series = [
        (f"{data}/{name}", values) for data, metrics in history.items() for name, values in metrics.items()
    ]
    for step in range(max((len(values) for _, values in series), default=0)):
        for name, values in series:
            if step < len(values):
                live.log_metric(name, float(values[step]))
        live.next_step()


def curve_name(key: str, name: str) -> str:
    """A booster's curves and figures: under the protein's name for a per-protein booster."""
    return name if key == JOINT else f"{key}/{name}"


@dataclass
class Fitted:
    """One booster and how it was trained."""

    booster: xgb.Booster
    history: dict
    rows: int
    features: int
    matrix: str
    rounds: int  # rounds boosted
    best_iteration: int  # the last round the saved model keeps (rounds - 1 without early stopping)


@dataclass(frozen=True)
class FitPlan:
    """Which model a run of train makes, recorded in its manifest: the split model (the split's train part, early
    stopping as the params say: what ``evaluate`` scores) or the final model (every labelled row, each booster
    boosted for the rounds the split model kept: what ``predict`` and on-demand scoring use)."""

    name: str  # "split" | "final"
    rows: str  # which rows, in words
    sides: tuple[str, ...] = ("train",)  # the split's parts it fits on, as its summary counts them
    rounds: dict[str, int] | None = (
        None  # booster key -> rounds, fixed (no early stopping); None: the params'
    )

    def params_for(self, params: Params, key: str) -> Params:
        """The params one booster trains with: the final fit boosts the split model's rounds, without early
        stopping (every labelled row is fit: there is no inner part left to stop on)."""
        if self.rounds is None:
            return params
        stopping = params.train.early_stopping.model_copy(update={"rounds": 0})
        return params.model_copy(
            update={
                "train": params.train.model_copy(update={"early_stopping": stopping}),
                "xgb": params.xgb.model_copy(
                    update={"n_estimators": self.rounds.get(key, params.xgb.n_estimators)}
                ),
            }
        )

    def record(self, params: Params, rows: int) -> dict:
        """What the manifest says of this fit: which model, which rows and how many, where its rounds came from."""
        if self.rounds is not None:
            rounds = "the split model's kept rounds (best iteration + 1) of each booster"
        elif params.train.early_stopping.rounds:
            rounds = "early stopping on an inner part, at most xgb.n_estimators"
        else:
            rounds = "xgb.n_estimators"
        return {"model": self.name, "rows": self.rows, "labelled_rows": rows, "rounds": rounds}


SPLIT_FIT = FitPlan("split", "the split's train part")


def train_model(
    params: Params,
    rows_dir: Path,
    features_dir: Path,
    model_dir: Path,
    live_dir: Path | None,
    plan: FitPlan = SPLIT_FIT,
    summary: Path | None = None,
) -> dict:
    """Train on ``rows_dir`` (the split's train part, or every labelled row for the final model: ``plan``) and
    write the model's JSON artifacts and, with ``live_dir``, the training curves. First, before any row is read,
    the memory it needs is estimated from the split's ``summary`` (else the rows' labels): logged, or refused."""
    settings = params.train
    check_fit(params, summary, plan.sides, rows_dir, features_dir, f"{plan.name} fit")
    store = MoleculeStore(features_dir)
    prep = fit_preprocessing(plan.params_for(params, JOINT), rows_dir, store)
    classifier = xgb.XGBClassifier(**params.xgb.classifier_kwargs(threads(params)))
    booster_params = classifier.get_xgb_params()
    keys = [JOINT] if settings.model == "joint" else prep.counts.proteins
    fitted: dict[str, Fitted] = {}
    for key in keys:
        protein = None if key == JOINT else key
        encoder = prep.encoder if key == JOINT else None
        key_params = plan.params_for(params, key)
        selections = part_selections(key_params, prep, protein)
        if settings.distributed_workers:
            fitted[key] = fit_distributed(
                key_params, booster_params, rows_dir, features_dir, encoder, prep.scaler, store, selections
            )
        else:
            fitted[key] = fit_local(
                key_params, booster_params, rows_dir, selections, store, encoder, prep.scaler
            )
    n_features = next(iter(fitted.values())).features
    fit_record = plan.record(params, prep.counts.of()[0])
    with contextlib.ExitStack() as outputs:
        if live_dir is not None:
            stopping = any(
                len(result.history) > 1 for result in fitted.values()
            )  # an early-stopping part ran
            write_curves(outputs.enter_context(atomic_dir(live_dir)), fitted, stopping)
        model_tmp = outputs.enter_context(atomic_dir(model_dir))
        categories = [str(c) for c in prep.encoder.categories_[0]]
        save_model(
            model_tmp,
            prep.encoder,
            prep.scaler,
            {key: result.booster for key, result in fitted.items()},
            {
                "model": settings.model,
                "fit": fit_record,
                "features": store.spec,
                "feature_names": feature_names(
                    categories if settings.model == "joint" else None, store.descriptors, store.n_bits
                ),
                "base_rate": prep.counts.base_rate(),
                "train_rows": {p: prep.counts.of(protein=p)[0] for p in prep.counts.proteins},
                "negative_rate": dict(sorted(prep.rates.items())),
                "best_iteration": {key: result.best_iteration for key, result in fitted.items()},
                "distributed_workers": settings.distributed_workers,
                "xgboost": xgb.__version__,
            },
        )
    return {
        "model": settings.model,
        "rows": sum(f.rows for f in fitted.values()),
        "features": n_features,
        "rounds": {key: f.rounds for key, f in fitted.items()},
        "best_iteration": {key: f.best_iteration for key, f in fitted.items()},
        "matrix": next(iter(fitted.values())).matrix,
        "fit": fit_record,
    }


CURVES = (
    "curves.csv"  # every booster's metric by round and part, one table: the pipeline's training-curves plot
)


def curves_table(fitted: dict[str, Fitted], early_stopping: bool) -> pl.DataFrame:
    """Every booster's evaluation metric by round (1-based) and part (``train``: the rows it fits; ``stop_share``,
    ``stop_unseen``: the early-stopping parts), long format, one row per (booster, part, metric, round), with the
    booster's best round where early stopping chose it (null otherwise)."""
    frames = []
    for key, result in fitted.items():
        booster = "all" if key == JOINT else key
        best = result.best_iteration + 1 if early_stopping else None
        for part, metrics in result.history.items():
            for metric, values in metrics.items():
                frames.append(
                    pl.DataFrame(
                        {
                            "round": np.arange(1, len(values) + 1, dtype=np.int64),
                            "booster": booster,
                            "part": part,
                            "metric": metric,
                            "value": np.asarray(values, dtype=np.float64),
                            "best_round": pl.Series([best] * len(values), dtype=pl.Int64),
                        }
                    )
                )
    return pl.concat(frames) if frames else pl.DataFrame()


def write_curves(live_dir: Path, fitted: dict[str, Fitted], early_stopping: bool) -> None:
    """dvclive's curves of every booster (each part it watched, by round), with its rounds and best round, and the
    same curves as one table (``curves.csv``) for the one training-curves plot of ``dvc plots`` and the MR note."""
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    log_curves(live, {curve_name(k, data): m for k, f in fitted.items() for data, m in f.history.items()})
    for key, result in fitted.items():
        live.summary[curve_name(key, "best_iteration")] = result.best_iteration
        live.summary[curve_name(key, "rounds")] = result.rounds
    live.end()
    write_csv(curves_table(fitted, early_stopping), live_dir / CURVES)


@contextlib.contextmanager
def page_directory(params: Params) -> Iterator[Path]:
    """A fresh directory for external-memory pages under ``resources.external_memory_dir`` (on disk, not $TMPDIR,
    which may be tmpfs: RAM), removed when training ends, fails or is stopped (SIGTERM); what a killed run left
    is removed by the next run (only where its writer is dead)."""
    pages = scratch_dir(external_memory_dir(params) / "pages")

    def stop(signum, frame):  # SIGTERM -> an exception, so the finally below removes the pages
        raise SystemExit(128 + signum)

    handle = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if handle else None
    try:
        yield pages
    finally:
        gc.collect()  # the matrices (and their page files) are gone before the directory is
        shutil.rmtree(pages, ignore_errors=True)
        if handle:
            signal.signal(signal.SIGTERM, previous)


def part_selections(params: Params, prep: Preprocessing, protein: str | None) -> dict[str, RowSelection]:
    """The matrices one booster trains with: the fit part, and the early-stopping parts that hold both classes
    after sampling (a metric like aucpr needs both); the same plan on one machine and on the cluster."""
    rule, rates = inner_rule(params), tuple(sorted(prep.rates.items()))
    what = f"train {protein}" if protein else "train"
    if prep.kept.of(FIT, protein)[0] == 0:
        raise InputError(
            f"{what}: no rows to train on (protein {protein})" if protein else f"{what}: no rows"
        )
    selections = {FIT: RowSelection(rule, FIT, protein, rates, params.train.seed)}
    if rule is not None:
        for part in (STOP_SHARE, STOP_UNSEEN):
            rows, positives = prep.kept.of(part, protein)
            if 0 < positives < rows:
                selections[part] = RowSelection(rule, part, protein, rates, params.train.seed)
            else:
                log.warning("%s: the early-stopping part %s has %d rows, %d positive: not used", what, part,
                            rows, positives)  # fmt: skip
    return selections


def boost(
    params: Params, booster_params: dict, matrices: dict[str, xgb.DMatrix], callbacks: list
) -> tuple[xgb.Booster, dict, int, int]:
    """XGBoost on the fit matrix, watching the others; with early stopping when there are early-stopping parts.
    (booster with the best round's trees, history, rounds boosted, best round): the same on one machine and on
    every rank of the collective (whose metrics are reduced over the ranks, so each stops at the same round)."""
    stopper = None
    if len(matrices) > 1:
        parts = [part for part in matrices if part != FIT]
        stopper = InnerEarlyStopping(params.train.early_stopping.rounds, params.xgb.eval_metric, parts)
    history: dict = {}
    booster = xgb.train(
        booster_params,
        matrices[FIT],
        num_boost_round=params.xgb.n_estimators,
        evals=[(matrix, "train" if part == FIT else part) for part, matrix in matrices.items()],
        evals_result=history,
        callbacks=[*callbacks, *([stopper] if stopper else [])],
        verbose_eval=False,
    )
    rounds = booster.num_boosted_rounds()
    best = stopper.best_iteration if stopper is not None and stopper.best_iteration >= 0 else rounds - 1
    # the best round's trees, in a copy that holds no reference to the matrices (their pages can go)
    kept = xgb.Booster(model_file=bytearray(booster[: best + 1].save_raw("json")))
    return kept, history, rounds, best


def fit_local(
    params: Params,
    booster_params: dict,
    rows_dir: Path,
    selections: dict[str, RowSelection],
    store: MoleculeStore,
    encoder: OneHotEncoder | None,
    scaler: StandardScaler,
) -> Fitted:
    """One machine: batches stream through a DataIter into a (possibly external-memory) quantile matrix per part;
    the early-stopping parts' matrices use the fit matrix's cuts."""
    protein = selections[FIT].protein
    external = params.train.data_mode == "external"
    matrix_type = xgb.ExtMemQuantileDMatrix if external else xgb.QuantileDMatrix
    with page_directory(params) if external else contextlib.nullcontext() as pages:
        matrices: dict[str, xgb.DMatrix] = {}
        for part, selection in selections.items():
            prefix = str(pages / f"{protein or 'all'}-{part}") if external else None
            source = RowSource(rows_dir, params.train.batch_rows, selection)
            iterator = RowBatches(source, store, encoder, scaler, cache_prefix=prefix)
            matrices[part] = matrix_type(iterator, max_bin=params.xgb.max_bin, ref=matrices.get(FIT))
        bar = progress(f"train {protein}" if protein else "train", params.xgb.n_estimators, unit="rounds",
                       every=10.0)  # fmt: skip
        booster, history, rounds, best = boost(params, booster_params, matrices, [ProgressBar(bar)])
        bar.close()
        dfit = matrices[FIT]
        fitted = Fitted(booster, history, dfit.num_row(), dfit.num_col(), type(dfit).__name__, rounds, best)
        del matrices, dfit
    return fitted


# ---------------------------------------------------------------------------------------------- distributed

TRAIN_EVENTS = "belka-train"  # Dask event topic: each rank's partitions as it reads them, rank 0's rounds


@dataclass(frozen=True)
class Partition:
    """Rows ``start:stop`` of one shard of the split (a batch of ``train.batch_rows``), ``rows`` of them selected."""

    shard: Path
    start: int
    stop: int
    rows: int


def partitions(rows_dir: Path, batch_rows: int, selection: RowSelection) -> list[Partition]:
    """The batches of ``rows_dir`` that hold selected rows, in the order the local DataIter reads them."""
    out = []
    for shard in list_shards(rows_dir):
        rows = read_rows(shard, LABEL_COLUMNS)
        for start in range(0, len(rows), batch_rows):
            kept = len(selection.apply(rows.slice(start, batch_rows)))
            if kept:
                out.append(Partition(shard.resolve(), start, min(start + batch_rows, len(rows)), kept))
    return out


@dataclass(frozen=True)
class PartitionSource:
    """One rank's partitions of one part, as its selection keeps them; each read is reported to the scheduler
    (progress, and the points the tests kill workers at)."""

    partitions: tuple[Partition, ...]
    selection: RowSelection
    rank: int
    run: str

    def batches(self) -> Iterator[pl.DataFrame]:
        for number, partition in enumerate(self.partitions):
            engine.report(
                TRAIN_EVENTS, run=self.run, rank=self.rank, side=self.selection.part, partition=number
            )
            rows = read_rows(partition.shard).slice(partition.start, partition.stop - partition.start)
            yield self.selection.apply(rows)


def share_out(parts: list[Partition], n_ranks: int) -> list[tuple[Partition, ...]]:
    """Contiguous runs of the partitions, in order, one per rank: partition i goes to rank i * n_ranks // len(parts)
    (a rank gets none when there are fewer partitions than ranks)."""
    return [
        tuple(p for i, p in enumerate(parts) if i * n_ranks // len(parts) == rank) for rank in range(n_ranks)
    ]


@dataclass(frozen=True)
class RankSetup:
    """What every rank shares: where the molecules' features are, the fitted preprocessing (no encoder for a
    per-protein booster), XGBoost's params, and the params (rounds, early stopping)."""

    features_dir: Path
    encoder: OneHotEncoder | None
    scaler: StandardScaler
    booster_params: dict
    params: Params
    n_features: int


@dataclass(frozen=True)
class RankWork:
    """One rank's share of distributed training, described by paths and params only: whichever worker runs it (the
    first one, or another after a loss) builds the same matrices, so the model depends on the params alone. One
    run of partitions per part (fit, and the early-stopping parts), each read with its selection."""

    rank: int
    partitions: dict[str, tuple[Partition, ...]]
    selections: dict[str, RowSelection]
    setup: RankSetup


@dataclass
class RankResult:
    booster: xgb.Booster | None  # rank 0's; every rank ends with the same model
    history: dict
    rows: int
    rounds: int
    best_iteration: int


class RoundEvents(xgb.callback.TrainingCallback):
    """Reports each boosting round of rank 0 to the scheduler (the client's progress bar follows it)."""

    def __init__(self, run: str) -> None:
        super().__init__()
        self.run = run

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        engine.report(TRAIN_EVENTS, run=self.run, rank=0, round=epoch + 1)
        return False


def rank_matrix(
    work: RankWork, part: str, store: MoleculeStore, run: str, ref: xgb.QuantileDMatrix | None = None
) -> xgb.QuantileDMatrix:
    """The rank's quantile matrix of one part, streamed partition by partition; empty for a rank without
    partitions of it (it still takes part in every collective operation)."""
    parts, setup = work.partitions[part], work.setup
    nthread = setup.booster_params["n_jobs"]
    max_bin = setup.params.xgb.max_bin
    if not parts:
        empty = np.empty((0, setup.n_features), dtype=np.float32)
        return xgb.QuantileDMatrix(empty, label=empty[:, 0], max_bin=max_bin, ref=ref, nthread=nthread)
    source = PartitionSource(parts, work.selections[part], work.rank, run)
    rows = RowBatches(source, store, setup.encoder, setup.scaler)
    return xgb.QuantileDMatrix(rows, max_bin=max_bin, ref=ref, nthread=nthread)


def train_rank(work: RankWork, collective: dict, run: str) -> RankResult:
    """Runs on a Dask worker: joins XGBoost's collective as rank ``work.rank`` (the tracker sorts ranks by task
    id), builds the rank's matrices and trains; the quantile sketches, histograms and metrics are reduced across
    ranks, so every rank stops at the same round. ``run`` names the attempt in the progress events."""
    with xgb.collective.CommunicatorContext(**collective, dmlc_task_id=f"{work.rank:06d}"):
        store = cached_store(work.setup.features_dir)
        matrices: dict[str, xgb.DMatrix] = {}
        for part in work.partitions:
            matrices[part] = rank_matrix(work, part, store, run, ref=matrices.get(FIT))
        callbacks = [RoundEvents(run)] if work.rank == 0 else []
        booster, history, rounds, best = boost(
            work.setup.params, work.setup.booster_params, matrices, callbacks
        )
    return RankResult(booster if work.rank == 0 else None, history, matrices[FIT].num_row(), rounds, best)


@contextlib.contextmanager
def rabit_tracker(host: str, n_ranks: int) -> Iterator[dict]:
    """XGBoost's tracker, in this process on ``host`` (an address every rank's worker reaches); yields the ranks'
    collective arguments."""
    tracker = xgb.tracker.RabitTracker(n_workers=n_ranks, host_ip=host, port=0, sortby="task")
    tracker.start()
    try:
        yield tracker.worker_args()
    finally:
        try:
            tracker.free()  # waits for the tracker's thread; fails with its error when the ranks failed
        except xgb.core.XGBoostError as exc:
            log.debug("the collective's tracker ended with: %s", exc)


def tracker_host(client) -> str:
    """The address through which this machine reaches the scheduler: the workers reach this machine by it."""
    from distributed.comm import get_address_host
    from distributed.utils import get_ip

    return get_ip(get_address_host(client.scheduler.address))


class RoundsProgress:
    """The progress bar of distributed training: the rounds rank 0 reports (pushed by the scheduler as they
    happen) in the current attempt."""

    def __init__(self, client, n_rounds: int) -> None:
        self.client, self.run = client, ""
        self.bar = progress("train", n_rounds, unit="rounds", every=10.0)
        client.subscribe_topic(TRAIN_EVENTS, self.event)

    def event(self, event: tuple[float, dict]) -> None:
        message = event[1]
        if message.get("run") == self.run and "round" in message:
            self.bar.update(message["round"] - self.bar.n)

    def close(self) -> None:
        self.client.unsubscribe_topic(TRAIN_EVENTS)
        self.bar.close()


def fit_distributed(
    params: Params,
    booster_params: dict,
    rows_dir: Path,
    features_dir: Path,
    encoder: OneHotEncoder | None,
    scaler: StandardScaler,
    store: MoleculeStore,
    selections: dict[str, RowSelection],
) -> Fitted:
    """XGBoost's collective over ``train.distributed_workers`` ranks, each a task pinned to its own worker of the
    Dask cluster (at $DASK_SCHEDULER_ADDRESS, which needs at least that many workers, or a LocalCluster of them).
    Each batch of the train part is a partition; rank r reads the r-th contiguous run of each part's partitions
    from the shared filesystem, so the model depends on the params alone, not on the workers, the timing or Dask's
    scheduling. ``selections`` are the parts (fit and early stopping) with their rows, as on one machine.

    A lost worker (killed, crashed, restarted by its nanny) cancels the attempt: once the cluster has enough workers
    again (waiting up to ``resources.worker_wait`` s), training starts over and gives the same model; after Dask's
    ``distributed.scheduler.allowed-failures`` losses, or without workers, one ClusterError names what was lost."""
    categories = len(encoder.categories_[0]) if encoder is not None else 0
    n_features = categories + len(store.descriptors) + store.n_bits
    setup = RankSetup(features_dir.resolve(), encoder, scaler, booster_params, params, n_features)
    works = plan_ranks(params.train, rows_dir, setup, selections)
    with engine.dask_client(len(works)) as client:
        results = run_ranks(client, works, params.resources.worker_wait)
    first = results[0]
    rows = sum(result.rows for result in results)
    return Fitted(first.booster, first.history, rows, n_features, "collective QuantileDMatrix", first.rounds,
                  first.best_iteration)  # fmt: skip


def plan_ranks(
    settings: Train, rows_dir: Path, setup: RankSetup, selections: dict[str, RowSelection]
) -> list[RankWork]:
    """What each of the ``train.distributed_workers`` ranks trains on (see :func:`fit_distributed`)."""
    shares: dict[str, list[tuple[Partition, ...]]] = {}
    for part, selection in selections.items():
        parts = partitions(rows_dir, settings.batch_rows, selection)
        if part == FIT and not parts:
            raise InputError(f"{rows_dir}: no rows to train on")
        shares[part] = share_out(parts, settings.distributed_workers)
    return [
        RankWork(rank, {part: share[rank] for part, share in shares.items()}, selections, setup)
        for rank in range(settings.distributed_workers)
    ]


def run_ranks(client, works: list[RankWork], wait: float) -> list[RankResult]:
    """Every rank's :func:`train_rank` at once, one per worker; started over on the workers then present when one
    is lost (at most ``distributed.scheduler.allowed-failures`` times, Dask's own limit for a task whose workers
    die); a :class:`engine.ClusterError` when that is spent or the cluster lacks workers for ``wait`` s."""
    import dask

    attempts = 1 + int(dask.config.get("distributed.scheduler.allowed-failures"))
    rounds = RoundsProgress(client, works[0].setup.params.xgb.n_estimators)
    lost: list[str] = []
    try:
        for attempt in range(1, attempts + 1):
            try:
                workers = engine.wait_for_workers(client, len(works), wait)
            except engine.ClusterError as exc:
                after = (
                    f"lost Dask worker(s) {', '.join(lost)} during distributed training, and " if lost else ""
                )
                raise engine.ClusterError(
                    f"train: {after}{exc} (train.distributed_workers); no model written"
                ) from None
            rounds.run = f"{uuid.uuid4().hex}-{attempt}"
            try:
                with rabit_tracker(tracker_host(client), len(works)) as collective:
                    calls = [(work, collective, rounds.run) for work in works]
                    return engine.run_pinned(client, train_rank, calls, workers)
            except engine.WorkerLost as exc:
                lost += [address for address in exc.addresses if address not in lost]
                log.warning(
                    "lost Dask worker(s) %s (attempt %d of %d): training starts over", exc, attempt, attempts
                )
            except xgb.core.XGBoostError as exc:
                raise engine.ClusterError(
                    f"train: distributed training failed on the Dask cluster: {first_line(exc)}; "
                    "no model written"
                ) from None
    finally:
        rounds.close()
    raise engine.ClusterError(
        f"train: lost Dask worker(s) {', '.join(lost)}, one in each of {attempts} attempts of distributed training "
        "(distributed.scheduler.allowed-failures + 1); no model written"
    )


def run(args: argparse.Namespace, params: Params) -> None:
    result = train_model(params, args.rows, args.features, args.models, args.live, summary=args.split_summary)
    rounds = ", ".join(
        f"{key if key != JOINT else 'all'}: {result['best_iteration'][key] + 1} of {boosted}"
        for key, boosted in result["rounds"].items()
    )
    log.info(
        "%s model on %d rows x %d features (%s); trees kept per booster: %s",
        result["model"], result["rows"], result["features"], result["matrix"], rounds,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    command = Command("train", __doc__).fit(
        rows="the split's train part", models="where the JSON artifacts go"
    )
    return command.paths(live="dvclive directory for training curves").main(argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
