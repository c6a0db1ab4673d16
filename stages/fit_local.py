"""Fitting a booster on one machine: the rows stream through a DataIter into a quantile matrix per part, in memory
or, with ``train.data_mode: external``, in pages on disk (under ``resources.external_memory_dir``, removed when
training ends). One of the two runners behind :class:`stages.boosting.FitJob`; the other is
:mod:`stages.fit_dask`.
"""

from __future__ import annotations

import contextlib
import gc
import shutil
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import xgboost as xgb

from stages.atomic import scratch_dir
from stages.boosting import FitJob, Fitted, ProgressBar, boost
from stages.cli import progress
from stages.params import Params, external_memory_dir
from stages.train_rows import FIT, RowBatches, RowSource


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


def fit_local(job: FitJob) -> Fitted:
    """One machine: batches stream through a DataIter into a (possibly external-memory) quantile matrix per part;
    the early-stopping parts' matrices use the fit matrix's cuts."""
    params, selections = job.params, job.selections
    protein = selections[FIT].protein
    external = params.train.data_mode == "external"
    matrix_type = xgb.ExtMemQuantileDMatrix if external else xgb.QuantileDMatrix
    with page_directory(params) if external else contextlib.nullcontext() as pages:
        matrices: dict[str, xgb.DMatrix] = {}
        for part, selection in selections.items():
            prefix = str(pages / f"{protein or 'all'}-{part}") if external else None
            source = RowSource(job.rows_dir, params.train.batch_rows, selection)
            iterator = RowBatches(source, job.store, job.encoder, job.scaler, cache_prefix=prefix)
            matrices[part] = matrix_type(iterator, max_bin=params.xgb.max_bin, ref=matrices.get(FIT))
        bar = progress(f"train {protein}" if protein else "train", params.xgb.n_estimators, unit="rounds",
                       every=10.0)  # fmt: skip
        fitted = boost(params, job.booster_params, matrices, [ProgressBar(bar)])
        bar.close()
        del matrices
    return fitted
