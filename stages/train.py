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
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import polars as pl
import xgboost as xgb
from dvclive import Live
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from stages.cli import progress, run_main, setup_logging
from stages.dataset import MoleculeStore, iter_row_batches
from stages.io import BINDS, ID, PROTEIN, InputError, atomic_dir
from stages.model import design_matrix, feature_names, save_model
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


class LiveCurves(xgb.callback.TrainingCallback):
    """Logs every evaluation metric after each boosting round to dvclive."""

    def __init__(self, live: Live, bar) -> None:
        super().__init__()
        self.live, self.bar = live, bar

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        for data, metrics in evals_log.items():
            for name, values in metrics.items():
                self.live.log_metric(f"{data}/{name}", float(values[-1]))
        self.live.next_step()
        self.bar.update(1)
        return False


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
    n_rounds = params.xgb.n_estimators
    with tempfile.TemporaryDirectory(prefix="belka-xgb-") as pages:
        external = settings.data_mode == "external"
        matrix_type = xgb.ExtMemQuantileDMatrix if external else xgb.QuantileDMatrix

        def matrix(side: str, ref=None):
            prefix = str(Path(pages) / side) if external else None
            it = RowBatches(batches(side), store, encoder, scaler, cache_prefix=prefix)
            return matrix_type(it, max_bin=params.xgb.max_bin, ref=ref)

        dtrain = matrix("train")
        # The per-iteration curves use the valid part sampled like the train part (weighted), so their cost stays
        # proportional to the training data; evaluate scores every valid row.
        dvalid = matrix("valid", ref=dtrain)
        bar = progress("train", n_rounds, unit="rounds", every=10.0)
        with atomic_dir(live_dir) as live_tmp, atomic_dir(model_dir) as model_tmp:
            live = Live(dir=str(live_tmp), save_dvc_exp=False, dvcyaml=None, report=None)
            booster = xgb.train(
                booster_params,
                dtrain,
                num_boost_round=n_rounds,
                evals=[(dtrain, "train"), (dvalid, "valid")],
                callbacks=[LiveCurves(live, bar)],
                verbose_eval=False,
            )
            live.end()
            base_rate = {p: positives / n for p, (n, positives) in sorted(stats.items())}
            save_model(
                model_tmp,
                encoder,
                scaler,
                booster,
                {
                    "features": store.spec,
                    "feature_names": feature_names(
                        [str(c) for c in encoder.categories_[0]], store.descriptors, store.n_bits
                    ),
                    "base_rate": base_rate,
                    "train_rows": {p: n for p, (n, _) in sorted(stats.items())},
                    "negative_sample_rate": settings.negative_sample_rate,
                    "n_rounds": n_rounds,
                    "xgboost": xgb.__version__,
                },
            )
    bar.close()
    return {
        "rows": dtrain.num_row(),
        "features": dtrain.num_col(),
        "rounds": n_rounds,
        "matrix": type(dtrain).__name__,
    }


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
