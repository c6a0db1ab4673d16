"""Scoring featurized rows with a trained model: every shard of a featurize output (here, or on the Dask cluster),
rejected rows at their protein's base rate, and the model loaded once per process.

The predict stage's library (:mod:`stages.predict` is its command line) and on-demand scoring's
(:mod:`stages.serve` featurizes raw molecules, then scores them here).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import polars as pl

from stages import engine
from stages.cli import progress
from stages.dataset import count_rows, read_rows
from stages.errors import InputError
from stages.io import ID, PROTEIN, list_shards, manifest_version
from stages.model import Model, load_model
from stages.molecules import cached_store

log = logging.getLogger("stages.predict")

PREDICT_EVENTS = "belka-predict"  # Dask event topic: each shard as a worker starts scoring it


def fallback_predictions(rejects: pl.DataFrame, model: Model) -> pl.DataFrame:
    """Rejected rows get their protein's positive rate in the training data (the best guess without features)."""
    base_rate = model.manifest["base_rate"]
    model.check_proteins(rejects[PROTEIN], "rejected test rows")
    probs = np.array([base_rate[p] for p in rejects[PROTEIN].to_list()], dtype=np.float64)
    return pl.DataFrame({ID: rejects[ID], "binds": probs})


@functools.lru_cache(maxsize=2)
def _model(directory: Path, _version: int) -> Model:
    return load_model(directory)


def cached_model(directory: Path) -> Model:
    """The model, loaded (and its artifacts verified) once per process while its manifest is unchanged."""
    return _model(Path(directory), manifest_version(directory))


def score_shard(shard: Path, features_dir: Path, model_dir: Path, batch_rows: int) -> pl.DataFrame:
    """``id,binds`` for the rows of one featurized shard: a pure function of files, so it runs the same in this
    process or on a Dask worker (which then needs the features and the model on a shared filesystem)."""
    engine.report(PREDICT_EVENTS, shard=shard.name)
    model, store = cached_model(model_dir), cached_store(features_dir)
    rows = read_rows(shard, [ID, "molecule_key", PROTEIN])
    model.check_proteins(rows[PROTEIN], str(shard))
    parts = [
        pl.DataFrame({ID: batch[ID], "binds": model.predict(batch, store)})
        for batch in rows.iter_slices(batch_rows)
    ]
    return pl.concat(parts) if parts else pl.DataFrame(schema={ID: pl.Int64, "binds": pl.Float64})


def predict_file(
    features_dir: Path,
    rejects_file: Path | None,
    model_dir: Path,
    batch_rows: int,
    engine_name: str = "local",
    n_workers: int = 1,
    worker_wait: float = engine.DEFAULT_WORKER_WAIT,
) -> pl.DataFrame:
    """The submission for a featurized file: every shard scored (here, or on the Dask cluster with
    ``engine_name="dask"``: the same function, the same bytes), plus the rejected rows at their base rate. On
    Dask, a lost worker's shards are scored again by the others; a cluster left without workers for
    ``worker_wait`` seconds, or a shard that kills its workers, fails the run with one error."""
    model = cached_model(model_dir)
    model.check_features(cached_store(features_dir))  # once, here: the shards are scored with the same files
    shards = list_shards(features_dir / "rows")
    bar = progress("predict", count_rows(features_dir / "rows"))
    with engine.executor(engine_name, n_workers if engine_name == "dask" else 1, worker_wait) as pool:
        if pool is None:
            results = (score_shard(shard, features_dir, model_dir, batch_rows) for shard in shards)
        else:
            futures = [
                pool.submit(score_shard, s.resolve(), features_dir.resolve(), model_dir.resolve(), batch_rows)
                for s in shards
            ]
            results = (future.result() for future in futures)
        parts = []
        for part in results:
            parts.append(part)
            bar.update(len(part))
    bar.close()
    if rejects_file is not None and rejects_file.exists():
        rejects = pl.read_csv(rejects_file, schema_overrides={ID: pl.Int64, PROTEIN: pl.String})
        if len(rejects):
            log.warning("%d rejected rows get their protein's base rate (see %s)", len(rejects), rejects_file)
            parts.append(fallback_predictions(rejects, model))
    submission = pl.concat(parts) if parts else pl.DataFrame(schema={ID: pl.Int64, "binds": pl.Float64})
    duplicated = submission.filter(pl.col(ID).is_duplicated())
    if len(duplicated):
        raise InputError(f"{features_dir}: duplicate id(s) {duplicated[ID].unique().head(5).to_list()}")
    return submission.sort(ID)
