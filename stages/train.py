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
import operator
import shutil
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import xgboost as xgb
from dvclive import Live
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from stages import engine
from stages.cli import progress, run_main, setup_logging
from stages.dataset import BB_KEYS, KEY, iter_row_batches
from stages.io import BINDS, ID, PROTEIN, InputError, atomic_dir, list_shards, scratch_dir
from stages.model import JOINT, design_matrix, feature_names, save_model
from stages.molecules import MoleculeStore, cached_store
from stages.params import Params, external_memory_dir, load_params, threads
from stages.split import Rule, assign, uniform_hash

log = logging.getLogger("stages.train")

FIT, STOP_SHARE, STOP_UNSEEN = "fit", "stop_share", "stop_unseen"  # the parts of the training rows
LABEL_COLUMNS = [ID, KEY, PROTEIN, BINDS, *BB_KEYS]


def sample_rows(rows: pl.DataFrame, rates: dict[str, float] | float, seed: int) -> pl.DataFrame:
    """Keep every positive and a seeded fraction of negatives (``rates`` by protein, or one rate for all: a fixed
    draw per row id); add ``weight`` (1/rate for kept negatives), so weighted counts are the unsampled ones."""
    if isinstance(rates, dict):
        rate = rows[PROTEIN].replace_strict(rates, default=1.0, return_dtype=pl.Float64).to_numpy()
    else:
        rate = np.full(len(rows), rates)
    keep = (rows[BINDS].to_numpy() == 1) | (uniform_hash(rows[ID].to_numpy(), seed) < rate)
    weight = np.where(rows[BINDS].to_numpy() == 1, 1.0, 1.0 / rate).astype(np.float32)
    return rows.with_columns(pl.Series("weight", weight)).filter(pl.Series(keep))


def inner_rule(params: Params) -> Rule | None:
    """The rule that draws the early-stopping part from the training rows (None: no early stopping)."""
    stopping = params.train.early_stopping
    if stopping.rounds == 0:
        return None
    return Rule(stopping.held_out_building_blocks, stopping.valid_fraction, params.train.seed)


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
    per_positive = params.train.negatives_per_positive
    if per_positive is None:
        return dict.fromkeys(counts.proteins, params.train.negative_sample_rate)
    rates = {}
    for protein in counts.proteins:
        rows, positives = counts.of(FIT, protein)
        negatives = rows - positives
        rates[protein] = min(1.0, per_positive * positives / negatives) if negatives and positives else 1.0
    return rates


@dataclass(frozen=True)
class RowSource:
    """The training rows one matrix holds: one part, optionally one protein, sampled. ``batches()`` reads them
    again for each pass XGBoost makes."""

    rows_dir: Path
    batch_rows: int
    rule: Rule | None
    part: str
    protein: str | None
    rates: tuple[tuple[str, float], ...]
    seed: int

    def batches(self) -> Iterator[pl.DataFrame]:
        for rows in iter_row_batches(self.rows_dir, self.batch_rows):
            chosen = part_of(rows, self.rule) == self.part
            if self.protein is not None:
                chosen &= rows[PROTEIN].to_numpy() == self.protein
            if chosen.any():
                sampled = sample_rows(rows.filter(pl.Series(chosen)), dict(self.rates), self.seed)
                if len(sampled):
                    yield sampled


class RowBatches(xgb.DataIter):
    """Feeds XGBoost one expanded batch at a time; XGBoost calls reset() for each pass it needs."""

    def __init__(
        self,
        source: RowSource,
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
    """Streaming passes over the training rows: the labels (base rates before any sampling, the fit part's counts
    that set the negative rates, then what sampling keeps), then the scaler on the sampled fit rows the model trains
    on."""
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
    for rows in iter_row_batches(rows_dir, params.train.batch_rows, columns=LABEL_COLUMNS):
        sampled = sample_rows(rows, rates, seed)
        kept.add(sampled, part_of(sampled, rule))
    scaler = StandardScaler()
    if store.descriptors:
        source = RowSource(
            rows_dir, params.train.batch_rows, rule, FIT, None, tuple(sorted(rates.items())), seed
        )
        for rows in source.batches():
            scaler.partial_fit(store.lookup(rows[KEY].to_numpy()).descriptors)
    else:  # fingerprint only: nothing to scale
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


@dataclass
class Fitted:
    """One booster and how it was trained."""

    booster: xgb.Booster
    history: dict
    rows: int
    features: int
    matrix: str
    rounds: int = 0  # rounds boosted
    best_iteration: int = -1  # the last round the saved model keeps (rounds - 1 without early stopping)


def train_model(params: Params, rows_dir: Path, features_dir: Path, model_dir: Path, live_dir: Path) -> dict:
    """Train on the split's train part (``rows_dir``) and write the model's JSON artifacts and the curves."""
    settings = params.train
    store = MoleculeStore(features_dir)
    prep = fit_preprocessing(params, rows_dir, store)
    classifier = xgb.XGBClassifier(**params.xgb.classifier_kwargs(threads(params)))
    booster_params = classifier.get_xgb_params()
    keys = [JOINT] if settings.model == "joint" else prep.counts.proteins
    fitted: dict[str, Fitted] = {}
    for key in keys:
        encoder = prep.encoder if key == JOINT else None
        if settings.distributed_workers:
            if settings.model != "joint" or inner_rule(params) or settings.negatives_per_positive:
                raise InputError(
                    "train.distributed_workers > 0 trains the joint model without early stopping and with "
                    "train.negative_sample_rate only (train.model: joint, train.early_stopping.rounds: 0)"
                )
            fitted[key] = fit_distributed(
                params, booster_params, rows_dir.parent, features_dir, prep.encoder, prep.scaler, store
            )
            fitted[key].rounds = params.xgb.n_estimators
            fitted[key].best_iteration = params.xgb.n_estimators - 1
        else:
            protein = None if key == JOINT else key
            fitted[key] = fit_local(params, booster_params, rows_dir, protein, prep, store, encoder)
    n_features = next(iter(fitted.values())).features
    with atomic_dir(live_dir) as live_tmp, atomic_dir(model_dir) as model_tmp:
        live = Live(dir=str(live_tmp), save_dvc_exp=False, dvcyaml=None, report=None)
        prefix = (lambda key: "") if keys == [JOINT] else (lambda key: f"{key}/")
        log_curves(
            live, {f"{prefix(k)}{data}": m for k, f in fitted.items() for data, m in f.history.items()}
        )
        for key, result in fitted.items():
            live.summary[f"{prefix(key)}best_iteration"] = result.best_iteration
            live.summary[f"{prefix(key)}rounds"] = result.rounds
        live.end()
        categories = [str(c) for c in prep.encoder.categories_[0]]
        save_model(
            model_tmp,
            prep.encoder,
            prep.scaler,
            {key: result.booster for key, result in fitted.items()},
            {
                "model": settings.model,
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
    }


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


def fit_local(
    params: Params,
    booster_params: dict,
    rows_dir: Path,
    protein: str | None,
    prep: Preprocessing,
    store: MoleculeStore,
    encoder: OneHotEncoder | None,
) -> Fitted:
    """One machine: batches stream through a DataIter into a (possibly external-memory) quantile matrix; the
    early-stopping parts, when there are some, are matrices of their own with the fit matrix's cuts."""
    rule, seed = inner_rule(params), params.train.seed
    rates = tuple(sorted(prep.rates.items()))
    external = params.train.data_mode == "external"
    matrix_type = xgb.ExtMemQuantileDMatrix if external else xgb.QuantileDMatrix
    stopping = params.train.early_stopping.rounds
    what = f"train {protein}" if protein else "train"
    with page_directory(params) if external else contextlib.nullcontext() as pages:

        def matrix(part: str, ref=None):
            prefix = str(pages / f"{protein or 'all'}-{part}") if external else None
            source = RowSource(rows_dir, params.train.batch_rows, rule, part, protein, rates, seed)
            iterator = RowBatches(source, store, encoder, prep.scaler, cache_prefix=prefix)
            return matrix_type(iterator, max_bin=params.xgb.max_bin, ref=ref)

        if prep.kept.of(FIT, protein)[0] == 0:
            raise InputError(f"{what}: no rows to train on in {rows_dir}")
        dfit = matrix(FIT)
        evals = [(dfit, "train")]
        callbacks: list[xgb.callback.TrainingCallback] = []
        if rule is not None:
            for part in (STOP_SHARE, STOP_UNSEEN):
                rows, positives = prep.kept.of(part, protein)
                if 0 < positives < rows:  # a metric like aucpr needs both classes
                    evals.append((matrix(part, ref=dfit), part))
                else:
                    log.warning("%s: the early-stopping part %s has %d rows, %d positive: not used", what, part,
                                rows, positives)  # fmt: skip
            stopper = InnerEarlyStopping(stopping, params.xgb.eval_metric, [STOP_SHARE, STOP_UNSEEN])
            callbacks.append(stopper)
        history: dict = {}
        bar = progress(what, params.xgb.n_estimators, unit="rounds", every=10.0)
        callbacks.append(ProgressBar(bar))
        booster = xgb.train(
            booster_params,
            dfit,
            num_boost_round=params.xgb.n_estimators,
            evals=evals,
            evals_result=history,
            callbacks=callbacks,
            verbose_eval=False,
        )
        bar.close()
        rounds = booster.num_boosted_rounds()
        best = stopper.best_iteration if rule is not None and stopper.best_iteration >= 0 else rounds - 1
        kept = booster[: best + 1]
        # A copy that holds no reference to the matrices, so their page files can go before the directory.
        kept = xgb.Booster(model_file=bytearray(kept.save_raw("json")))
        fitted = Fitted(kept, history, dfit.num_row(), dfit.num_col(), type(dfit).__name__, rounds, best)
        del booster, dfit, evals
    return fitted


# ---------------------------------------------------------------------------------------------- distributed


def partitions(rows_dir: Path, batch_rows: int, rate: float, seed: int) -> list[tuple[Path, int, int, int]]:
    """(shard, start, stop, rows kept by sampling) for each batch of ``rows_dir``, in the order the local DataIter
    reads them: the same batches become the Dask partitions."""
    out = []
    for shard in list_shards(rows_dir):
        rows = pl.read_parquet(shard, columns=[ID, BINDS])
        for start in range(0, len(rows), batch_rows):
            kept = len(sample_rows(rows.slice(start, batch_rows), rate, seed))
            if kept:
                out.append((shard, start, min(start + batch_rows, len(rows)), kept))
    return out


def partition_arrays(
    shard: Path, start: int, stop: int, features_dir: Path, encoder, scaler, rate: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The design matrix, labels and weights of one partition: runs on a Dask worker (which reads the split and
    the features from a filesystem it shares with the client)."""
    store = cached_store(features_dir)
    rows = sample_rows(pl.read_parquet(shard).slice(start, stop - start), rate, seed)
    matrix = design_matrix(rows, store, encoder, scaler)
    return matrix, rows[BINDS].to_numpy().astype(np.float32), rows["weight"].to_numpy()


def fit_distributed(
    params: Params,
    booster_params: dict,
    split_dir: Path,
    features_dir: Path,
    encoder,
    scaler,
    store: MoleculeStore,
) -> Fitted:
    """``xgboost.dask`` on ``train.distributed_workers`` workers (the cluster at $DASK_SCHEDULER_ADDRESS, which
    must have exactly that many, or a LocalCluster of them): each batch of the split is a partition whose design
    matrix is built on a worker. The model depends on the workers and partitions, so both are fixed by params."""
    import dask
    import dask.array as da
    from xgboost import dask as dxgb

    settings = params.train
    n_features = len(encoder.categories_[0]) + len(store.descriptors) + store.n_bits
    with engine.dask_client(settings.distributed_workers) as client:
        found = len(client.scheduler_info()["workers"])
        if found != settings.distributed_workers:
            raise InputError(
                f"train.distributed_workers={settings.distributed_workers}, but the Dask cluster at "
                f"{client.scheduler.address} has {found} workers: the model depends on the worker count, so they "
                "must match"
            )

        # Each partition is built on a fixed worker: contiguous runs of partitions, in order, over the workers
        # sorted by address. The workers' data, and so the model, then depend only on the params.
        addresses = sorted(client.scheduler_info()["workers"])
        build = engine.importable(partition_arrays)

        def arrays(side: str) -> tuple:
            parts = partitions(
                split_dir / side, settings.batch_rows, settings.negative_sample_rate, settings.seed
            )
            if not parts:
                raise InputError(f"{split_dir / side}: no rows to train on")
            columns: list[list] = [[], [], []]
            for number, (shard, start, stop, kept) in enumerate(parts):
                pin = {
                    "workers": [addresses[number * len(addresses) // len(parts)]],
                    "allow_other_workers": False,
                }
                part = client.submit(
                    build, shard.resolve(), start, stop, features_dir.resolve(), encoder, scaler,
                    settings.negative_sample_rate, settings.seed, pure=False, **pin,
                )  # fmt: skip
                shapes = ((kept, n_features), (kept,), (kept,))
                for k, shape in enumerate(shapes):
                    piece = client.submit(operator.getitem, part, k, pure=False, **pin)
                    columns[k].append(da.from_delayed(dask.delayed(piece), shape=shape, dtype=np.float32))
            return tuple(da.concatenate(c) for c in columns)

        x, y, w = arrays("train")
        dtrain = dxgb.DaskQuantileDMatrix(client, x, y, weight=w, max_bin=params.xgb.max_bin)
        vx, vy, vw = arrays("valid")
        dvalid = dxgb.DaskQuantileDMatrix(client, vx, vy, weight=vw, max_bin=params.xgb.max_bin, ref=dtrain)
        output = dxgb.train(
            client,
            booster_params,
            dtrain,
            num_boost_round=params.xgb.n_estimators,
            evals=[(dtrain, "train"), (dvalid, "valid")],
            verbose_eval=False,
        )
        return Fitted(
            output["booster"], output["history"], int(x.shape[0]), n_features, "DaskQuantileDMatrix"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--rows", type=Path, required=True, help="the split's train part")
    parser.add_argument("--features", type=Path, required=True, help="featurize output of the train data")
    parser.add_argument("--models", type=Path, required=True, help="where the JSON artifacts go")
    parser.add_argument("--live", type=Path, required=True, help="dvclive directory for training curves")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        result = train_model(load_params(args.params), args.rows, args.features, args.models, args.live)
        rounds = ", ".join(
            f"{key if key != JOINT else 'all'}: {result['best_iteration'][key] + 1} of {boosted}"
            for key, boosted in result["rounds"].items()
        )
        log.info(
            "%s model on %d rows x %d features (%s); trees kept per booster: %s",
            result["model"], result["rows"], result["features"], result["matrix"], rounds,
        )  # fmt: skip

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
