"""Fitting a booster with XGBoost's collective on a Dask cluster (``train.distributed_workers`` ranks): the plan of
which partitions each rank reads, the rank's work on a worker, the tracker, and the retries when a worker is lost.
One of the two runners behind :class:`stages.boosting.FitJob`; the other is :mod:`stages.fit_local`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import xgboost as xgb
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from stages import engine
from stages.boosting import FitJob, Fitted, boost
from stages.cli import progress
from stages.dataset import read_rows
from stages.errors import InputError, first_line
from stages.io import list_shards
from stages.molecules import MoleculeStore, cached_store
from stages.params import Params, Train
from stages.train_rows import FIT, LABEL_COLUMNS, RowBatches, RowSelection

log = logging.getLogger("stages.train")

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


def train_rank(work: RankWork, collective: dict, run: str) -> Fitted:
    """Runs on a Dask worker: joins XGBoost's collective as rank ``work.rank`` (the tracker sorts ranks by task
    id), builds the rank's matrices and trains; the quantile sketches, histograms and metrics are reduced across
    ranks, so every rank stops at the same round. ``run`` names the attempt in the progress events. Rank 0's
    result holds the booster (every rank ends with the same model), the others' only their figures."""
    with xgb.collective.CommunicatorContext(**collective, dmlc_task_id=f"{work.rank:06d}"):
        store = cached_store(work.setup.features_dir)
        matrices: dict[str, xgb.DMatrix] = {}
        for part in work.partitions:
            matrices[part] = rank_matrix(work, part, store, run, ref=matrices.get(FIT))
        callbacks = [RoundEvents(run)] if work.rank == 0 else []
        fitted = boost(work.setup.params, work.setup.booster_params, matrices, callbacks)
    return fitted if work.rank == 0 else dataclasses.replace(fitted, booster=None)


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


def fit_distributed(job: FitJob) -> Fitted:
    """XGBoost's collective over ``train.distributed_workers`` ranks, each a task pinned to its own worker of the
    Dask cluster (at $DASK_SCHEDULER_ADDRESS, which needs at least that many workers, or a LocalCluster of them).
    Each batch of the train part is a partition; rank r reads the r-th contiguous run of each part's partitions
    from the shared filesystem, so the model depends on the params alone, not on the workers, the timing or Dask's
    scheduling. ``job.selections`` are the parts (fit and early stopping) with their rows, as on one machine.

    A lost worker (killed, crashed, restarted by its nanny) cancels the attempt: once the cluster has enough workers
    again (waiting up to ``resources.worker_wait`` s), training starts over and gives the same model; after Dask's
    ``distributed.scheduler.allowed-failures`` losses, or without workers, one ClusterError names what was lost."""
    params, encoder, store = job.params, job.encoder, job.store
    categories = len(encoder.categories_[0]) if encoder is not None else 0
    n_features = categories + len(store.descriptors) + store.n_bits
    setup = RankSetup(job.features_dir.resolve(), encoder, job.scaler, job.booster_params, params, n_features)
    works = plan_ranks(params.train, job.rows_dir, setup, job.selections)
    with engine.dask_client(len(works)) as client:
        results = run_ranks(client, works, params.resources.worker_wait)
    rows = sum(result.rows for result in results)
    return dataclasses.replace(
        results[0], rows=rows, features=n_features, matrix="collective QuantileDMatrix"
    )


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


def run_ranks(client, works: list[RankWork], wait: float) -> list[Fitted]:
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
