"""Train the binding model: one-hot protein, StandardScaler on the descriptors, XGBoost on the design matrix.

Rows stream from ``data/split/train`` in batches through an ``xgboost.DataIter``; each batch is expanded with its
molecules' features only when XGBoost asks for it. ``train.data_mode`` picks ``QuantileDMatrix`` (the quantised
matrix in memory, about 1 byte a feature value) or ``ExtMemQuantileDMatrix`` (pages on disk, for data larger than
RAM). Negatives can be down-sampled (``train.negative_sample_rate``) with weight 1/rate, so the model still sees
BELKA's 0.54% positive rate.

The booster is trained with the parameters ``XGBClassifier(**xgb)`` would use (its ``get_xgb_params()``) and
``xgb.n_estimators`` rounds, so ``XGBClassifier().load_model("models/model.json")`` gives the same classifier.
dvclive logs the per-iteration training and validation curves to ``metrics/train``.
"""

from __future__ import annotations

import argparse
import logging
import operator
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import xgboost as xgb
from dvclive import Live
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from stages import engine
from stages.cli import progress, run_main, setup_logging
from stages.dataset import iter_row_batches
from stages.io import BINDS, ID, PROTEIN, InputError, atomic_dir, list_shards
from stages.model import design_matrix, feature_names, save_model
from stages.molecules import MoleculeStore, cached_store
from stages.params import Params, load_params, threads
from stages.split import uniform_hash

log = logging.getLogger("stages.train")


def sample_rows(rows: pl.DataFrame, rate: float, seed: int) -> pl.DataFrame:
    """Keep every positive and a seeded ``rate`` of negatives; add ``weight`` (1/rate for negatives)."""
    if rate >= 1.0:
        return rows.with_columns(pl.lit(1.0, dtype=pl.Float32).alias("weight"))
    keep = (rows[BINDS].to_numpy() == 1) | (uniform_hash(rows[ID].to_numpy(), seed) < rate)
    kept = rows.filter(pl.Series(keep))
    weight = pl.when(pl.col(BINDS) == 1).then(1.0).otherwise(1.0 / rate).cast(pl.Float32)
    return kept.with_columns(weight.alias("weight"))


class RowBatches(xgb.DataIter):
    """Feeds XGBoost one expanded batch at a time; XGBoost calls reset() for each pass it needs."""

    def __init__(
        self,
        batches: Callable[[], object],
        store: MoleculeStore,
        encoder: OneHotEncoder,
        scaler: StandardScaler,
        cache_prefix: str | None = None,
    ) -> None:
        self.batches, self.store, self.encoder, self.scaler = batches, store, encoder, scaler
        self.iterator = None
        super().__init__(cache_prefix=cache_prefix)

    def next(self, input_data: Callable) -> bool:
        if self.iterator is None:
            self.iterator = iter(self.batches())
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


def fit_preprocessing(
    batches: Callable, sample: Callable[[pl.DataFrame], pl.DataFrame], store: MoleculeStore
) -> tuple[OneHotEncoder, StandardScaler, dict]:
    """One streaming pass over the training rows: count rows and positives per protein on every row (the base
    rates, before any negative sampling), fit the scaler on the sampled rows the model trains on."""
    proteins: set[str] = set()
    scaler = StandardScaler()
    stats: dict[str, list[int]] = {}
    for rows in batches():
        proteins.update(rows[PROTEIN].unique().to_list())
        for protein, n, positives in rows.group_by(PROTEIN).agg(pl.len(), pl.col(BINDS).sum()).iter_rows():
            seen = stats.setdefault(protein, [0, 0])
            seen[0] += n
            seen[1] += positives
        if store.descriptors:
            scaler.partial_fit(store.lookup(sample(rows)["molecule_key"].to_numpy()).descriptors)
    if not proteins:
        raise InputError("train: no training rows (check the split and the input data)")
    if not store.descriptors:  # fingerprint only: nothing to scale
        scaler.mean_ = scaler.scale_ = scaler.var_ = np.empty(0)
        scaler.n_samples_seen_ = 0
    categories = sorted(proteins)
    encoder = OneHotEncoder(categories=[categories], sparse_output=False, dtype=np.float32)
    encoder.fit(np.array(categories, dtype=object).reshape(-1, 1))
    return encoder, scaler, stats


class ProgressBar(xgb.callback.TrainingCallback):
    """Advances the progress bar after each boosting round."""

    def __init__(self, bar) -> None:
        super().__init__()
        self.bar = bar

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        self.bar.update(1)
        return False


def log_curves(live: Live, history: dict) -> None:
    """Every evaluation metric of every boosting round, as dvclive steps."""
    series = [
        (f"{data}/{name}", values) for data, metrics in history.items() for name, values in metrics.items()
    ]
    for step in range(max((len(values) for _, values in series), default=0)):
        for name, values in series:
            live.log_metric(name, float(values[step]))
        live.next_step()


@dataclass
class Fitted:
    booster: xgb.Booster
    history: dict
    rows: int
    features: int
    matrix: str


def train_model(params: Params, split_dir: Path, features_dir: Path, model_dir: Path, live_dir: Path) -> dict:
    settings = params.train
    store = MoleculeStore(features_dir)

    def sample(rows: pl.DataFrame) -> pl.DataFrame:
        return sample_rows(rows, settings.negative_sample_rate, settings.seed)

    def batches(side: str, sampled: bool = True) -> Callable:
        def generate():
            for rows in iter_row_batches(split_dir / side, settings.batch_rows):
                yield sample(rows) if sampled else rows

        return generate

    encoder, scaler, stats = fit_preprocessing(batches("train", sampled=False), sample, store)
    classifier = xgb.XGBClassifier(**params.xgb.classifier_kwargs(threads(params)))
    booster_params = classifier.get_xgb_params()
    if settings.distributed_workers:
        fitted = fit_distributed(params, booster_params, split_dir, features_dir, encoder, scaler, store)
    else:
        fitted = fit_local(params, booster_params, batches, store, encoder, scaler)
    with atomic_dir(live_dir) as live_tmp, atomic_dir(model_dir) as model_tmp:
        live = Live(dir=str(live_tmp), save_dvc_exp=False, dvcyaml=None, report=None)
        log_curves(live, fitted.history)
        live.end()
        save_model(
            model_tmp,
            encoder,
            scaler,
            fitted.booster,
            {
                "features": store.spec,
                "feature_names": feature_names(
                    [str(c) for c in encoder.categories_[0]], store.descriptors, store.n_bits
                ),
                "base_rate": {p: positives / n for p, (n, positives) in sorted(stats.items())},
                "train_rows": {p: n for p, (n, _) in sorted(stats.items())},
                "negative_sample_rate": settings.negative_sample_rate,
                "n_rounds": params.xgb.n_estimators,
                "distributed_workers": settings.distributed_workers,
                "xgboost": xgb.__version__,
            },
        )
    return {
        "rows": fitted.rows,
        "features": fitted.features,
        "rounds": params.xgb.n_estimators,
        "matrix": fitted.matrix,
    }


def fit_local(
    params: Params, booster_params: dict, batches: Callable, store: MoleculeStore, encoder, scaler
) -> Fitted:
    """One machine: batches stream through a DataIter into a (possibly external-memory) quantile matrix."""
    n_rounds = params.xgb.n_estimators
    with tempfile.TemporaryDirectory(prefix="belka-xgb-") as pages:
        external = params.train.data_mode == "external"
        matrix_type = xgb.ExtMemQuantileDMatrix if external else xgb.QuantileDMatrix

        def matrix(side: str, ref=None):
            prefix = str(Path(pages) / side) if external else None
            it = RowBatches(batches(side), store, encoder, scaler, cache_prefix=prefix)
            return matrix_type(it, max_bin=params.xgb.max_bin, ref=ref)

        dtrain = matrix("train")
        # The per-iteration curves use the valid part sampled like the train part (weighted), so their cost stays
        # proportional to the training data; evaluate scores every valid row.
        dvalid = matrix("valid", ref=dtrain)
        history: dict = {}
        bar = progress("train", n_rounds, unit="rounds", every=10.0)
        booster = xgb.train(
            booster_params,
            dtrain,
            num_boost_round=n_rounds,
            evals=[(dtrain, "train"), (dvalid, "valid")],
            evals_result=history,
            callbacks=[ProgressBar(bar)],
            verbose_eval=False,
        )
        bar.close()
        return Fitted(booster, history, dtrain.num_row(), dtrain.num_col(), type(dtrain).__name__)


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
    parser.add_argument("--split", type=Path, required=True, help="split output (train and valid rows)")
    parser.add_argument("--features", type=Path, required=True, help="featurize output of the train data")
    parser.add_argument("--models", type=Path, required=True, help="where the JSON artifacts go")
    parser.add_argument("--live", type=Path, required=True, help="dvclive directory for training curves")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        result = train_model(load_params(args.params), args.split, args.features, args.models, args.live)
        log.info(
            "trained on %d rows x %d features, %d rounds (%s)",
            result["rows"],
            result["features"],
            result["rounds"],
            result["matrix"],
        )

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
