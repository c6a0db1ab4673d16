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
import contextlib
import logging
import tempfile
import uuid
from collections.abc import Callable, Iterator
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
from stages.params import Params, Train, load_params, threads
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

TRAIN_EVENTS = "belka-train"  # Dask event topic: each rank's partitions as it reads them, rank 0's rounds


@dataclass(frozen=True)
class RowSelection:
    """The rows of the split a model trains on: every protein's, or only ``protein``'s; negatives kept at ``rate``
    (seeded by each row's id, see :func:`sample_rows`). The client plans partitions and the workers read them
    with the same selection."""

    rate: float
    seed: int
    protein: str | None = None

    def apply(self, rows: pl.DataFrame) -> pl.DataFrame:
        if self.protein is not None:
            rows = rows.filter(pl.col(PROTEIN) == self.protein)
        return sample_rows(rows, self.rate, self.seed)


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
        rows = pl.read_parquet(shard, columns=[ID, PROTEIN, BINDS])
        for start in range(0, len(rows), batch_rows):
            kept = len(selection.apply(rows.slice(start, batch_rows)))
            if kept:
                out.append(Partition(shard.resolve(), start, min(start + batch_rows, len(rows)), kept))
    return out


def partition_rows(partition: Partition, selection: RowSelection) -> pl.DataFrame:
    """The selected rows of one partition, with their weights (read by the worker that trains on them)."""
    rows = pl.read_parquet(partition.shard).slice(partition.start, partition.stop - partition.start)
    return selection.apply(rows)


def share_out(parts: list[Partition], n_ranks: int) -> list[tuple[Partition, ...]]:
    """Contiguous runs of the partitions, in order, one per rank: partition i goes to rank i * n_ranks // len(parts)
    (a rank gets none when there are fewer partitions than ranks)."""
    return [
        tuple(p for i, p in enumerate(parts) if i * n_ranks // len(parts) == rank) for rank in range(n_ranks)
    ]


@dataclass(frozen=True)
class RankSetup:
    """What every rank shares: where the molecules' features are, the fitted preprocessing, XGBoost's params."""

    features_dir: Path
    encoder: OneHotEncoder
    scaler: StandardScaler
    booster_params: dict
    n_rounds: int
    max_bin: int
    n_features: int


@dataclass(frozen=True)
class RankWork:
    """One rank's share of distributed training, described by paths and params only: whichever worker runs it (the
    first one, or another after a loss) builds the same matrices, so the model depends on the params alone."""

    rank: int
    train: tuple[Partition, ...]
    valid: tuple[Partition, ...]
    selection: RowSelection
    setup: RankSetup


@dataclass
class RankResult:
    booster: xgb.Booster | None  # rank 0's; every rank ends with the same model
    history: dict
    rows: int


class RoundEvents(xgb.callback.TrainingCallback):
    """Reports each boosting round of rank 0 to the scheduler (the client's progress bar follows it)."""

    def __init__(self, run: str) -> None:
        super().__init__()
        self.run = run

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        engine.report(TRAIN_EVENTS, run=self.run, rank=0, round=epoch + 1)
        return False


def rank_matrix(
    work: RankWork, side: str, store: MoleculeStore, run: str, ref: xgb.QuantileDMatrix | None = None
) -> xgb.QuantileDMatrix:
    """The rank's quantile matrix of one side, streamed partition by partition; empty for a rank without
    partitions (it still takes part in every collective operation)."""
    parts, setup = getattr(work, side), work.setup
    nthread = setup.booster_params["n_jobs"]
    if not parts:
        empty = np.empty((0, setup.n_features), dtype=np.float32)
        return xgb.QuantileDMatrix(empty, label=empty[:, 0], max_bin=setup.max_bin, ref=ref, nthread=nthread)

    def batches():
        for number, partition in enumerate(parts):
            engine.report(TRAIN_EVENTS, run=run, rank=work.rank, side=side, partition=number)
            yield partition_rows(partition, work.selection)

    rows = RowBatches(batches, store, setup.encoder, setup.scaler)
    return xgb.QuantileDMatrix(rows, max_bin=setup.max_bin, ref=ref, nthread=nthread)


def train_rank(work: RankWork, collective: dict, run: str) -> RankResult:
    """Runs on a Dask worker: joins XGBoost's collective as rank ``work.rank`` (the tracker sorts ranks by task
    id), builds the rank's matrices and trains; the quantile sketches and histograms are summed across ranks.
    ``run`` names the attempt in the progress events."""
    with xgb.collective.CommunicatorContext(**collective, dmlc_task_id=f"{work.rank:06d}"):
        store = cached_store(work.setup.features_dir)
        dtrain = rank_matrix(work, "train", store, run)
        dvalid = rank_matrix(work, "valid", store, run, ref=dtrain)
        history: dict = {}
        booster = xgb.train(
            work.setup.booster_params,
            dtrain,
            num_boost_round=work.setup.n_rounds,
            evals=[(dtrain, "train"), (dvalid, "valid")],
            evals_result=history,
            verbose_eval=False,
            callbacks=[RoundEvents(run)] if work.rank == 0 else None,
        )
    return RankResult(booster if work.rank == 0 else None, history, dtrain.num_row())


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
    split_dir: Path,
    features_dir: Path,
    encoder,
    scaler,
    store: MoleculeStore,
    selection: RowSelection | None = None,
) -> Fitted:
    """XGBoost's collective over ``train.distributed_workers`` ranks, each a task pinned to its own worker of the
    Dask cluster (at $DASK_SCHEDULER_ADDRESS, which needs at least that many workers, or a LocalCluster of them).
    Each batch of the split is a partition; rank r reads the r-th contiguous run of them from the shared
    filesystem, so the model depends on the params alone, not on the workers, the timing or Dask's scheduling.

    ``selection`` picks the rows (default: every protein's, sampled by ``train.negative_sample_rate``). A lost
    worker (killed, crashed, restarted by its nanny) cancels the attempt: once the cluster has enough workers
    again (waiting up to ``resources.worker_wait`` s), training starts over and gives the same model; after Dask's
    ``distributed.scheduler.allowed-failures`` losses, or without workers, one ClusterError names what was lost."""
    n_features = len(encoder.categories_[0]) + len(store.descriptors) + store.n_bits
    setup = RankSetup(features_dir.resolve(), encoder, scaler, booster_params, params.xgb.n_estimators,
                      params.xgb.max_bin, n_features)  # fmt: skip
    works = plan_ranks(params.train, split_dir, setup, selection)
    with engine.dask_client(len(works)) as client:
        results = run_ranks(client, works, params.resources.worker_wait)
    return Fitted(
        results[0].booster,
        results[0].history,
        sum(result.rows for result in results),
        n_features,
        "collective QuantileDMatrix",
    )


def plan_ranks(
    settings: Train, split_dir: Path, setup: RankSetup, selection: RowSelection | None = None
) -> list[RankWork]:
    """What each of the ``train.distributed_workers`` ranks trains on (see :func:`fit_distributed`)."""
    selection = selection or RowSelection(settings.negative_sample_rate, settings.seed)
    train_parts = partitions(split_dir / "train", settings.batch_rows, selection)
    if not train_parts:
        raise InputError(f"{split_dir / 'train'}: no rows to train on")
    valid_parts = partitions(split_dir / "valid", settings.batch_rows, selection)
    shares = zip(
        share_out(train_parts, settings.distributed_workers),
        share_out(valid_parts, settings.distributed_workers),
        strict=True,
    )
    return [RankWork(rank, train, valid, selection, setup) for rank, (train, valid) in enumerate(shares)]


def run_ranks(client, works: list[RankWork], wait: float) -> list[RankResult]:
    """Every rank's :func:`train_rank` at once, one per worker; started over on the workers then present when one
    is lost (at most ``distributed.scheduler.allowed-failures`` times, Dask's own limit for a task whose workers
    die); a :class:`engine.ClusterError` when that is spent or the cluster lacks workers for ``wait`` s."""
    import dask

    attempts = 1 + int(dask.config.get("distributed.scheduler.allowed-failures"))
    rounds = RoundsProgress(client, works[0].setup.n_rounds)
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
                lost += exc.addresses
                log.warning(
                    "lost Dask worker(s) %s (attempt %d of %d): training starts over", exc, attempt, attempts
                )
            except xgb.core.XGBoostError as exc:
                raise engine.ClusterError(
                    f"train: distributed training failed on the Dask cluster: {str(exc).splitlines()[0]}; "
                    "no model written"
                ) from None
    finally:
        rounds.close()
    raise engine.ClusterError(
        f"train: lost Dask worker(s) {', '.join(lost)}, one in each of {attempts} attempts of distributed training "
        "(distributed.scheduler.allowed-failures + 1); no model written"
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
