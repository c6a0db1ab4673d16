"""Score BELKA-format rows: the test set into a submission, or any molecules on demand, through one code path.

- Pipeline (``dvc.yaml``): ``--features`` (featurize's output for the test data), ``--rejects`` and ``--output``:
  ``id,binds`` (probability of binding), one row per test id, sorted by id like Kaggle's sample submission. Rows
  that featurize rejected (an unparsable SMILES, say) still get a row, with their protein's positive rate in the
  training data, and a warning says how many.
- On demand: ``--smiles "<molecule_smiles as in BELKA, with [Dy]>" --protein BRD4`` prints the probability as the
  last line on stdout; ``--input FILE --output OUT`` (parquet or CSV with ``molecule_smiles`` and
  ``protein_name``, optional ``id``) writes ``id,binds`` for every input row. Both featurize with the featurize
  stage's own code and the model's recorded feature settings, then score exactly as the pipeline does, so
  training and serving cannot drift.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import polars as pl

from stages import engine, featurize
from stages.chem import FeatureConfig
from stages.cli import progress, run_main, setup_logging
from stages.dataset import count_rows
from stages.io import (
    BB_COLUMNS,
    ID,
    PROTEIN,
    SMILES,
    InputError,
    list_shards,
    manifest_version,
    write_csv,
    write_parquet,
)
from stages.model import Model, load_model
from stages.molecules import cached_store
from stages.params import load_params, workers

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
    rows = pl.read_parquet(shard, columns=[ID, "molecule_key", PROTEIN])
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


def read_molecules(source: Path) -> pl.DataFrame:
    """A parquet or CSV file of molecules to score, as BELKA-format rows (ids 0, 1, ... when it has none)."""
    try:
        frame = pl.read_csv(source) if source.suffix.lower() == ".csv" else pl.read_parquet(source)
    except FileNotFoundError:
        raise InputError(f"{source}: not found") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{source}: not a readable {source.suffix or 'parquet'} file ({exc})") from None
    for column in (SMILES, PROTEIN):
        if column not in frame.columns:
            raise InputError(
                f"{source}: missing column {column!r} (found {', '.join(frame.columns) or 'none'})"
            )
    ids = frame[ID] if ID in frame.columns else pl.Series(ID, range(len(frame)))
    return molecule_rows(frame[SMILES].cast(pl.String), frame[PROTEIN].cast(pl.String), ids.cast(pl.Int64))


def molecule_rows(smiles: pl.Series, proteins: pl.Series, ids: pl.Series) -> pl.DataFrame:
    """BELKA-format rows; the building blocks are unknown and not needed to score."""
    return pl.DataFrame(
        {ID: ids, **{bb: [""] * len(ids) for bb in BB_COLUMNS}, SMILES: smiles, PROTEIN: proteins},
        schema={ID: pl.Int64, **dict.fromkeys(BB_COLUMNS, pl.String), SMILES: pl.String, PROTEIN: pl.String},
    )


def score_rows(
    raw: pl.DataFrame, model_dir: Path, batch_rows: int, n_workers: int = 1
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(``id,binds`` for every row, the rejected rows with their reason): featurized by the featurize stage's code
    with the model's feature settings, scored by :func:`predict_file`."""
    spec = cached_model(model_dir).feature_spec
    options = featurize.Options(
        config=FeatureConfig.from_spec(spec), batch_rows=batch_rows, workers=n_workers, cache_dir=None
    )
    with tempfile.TemporaryDirectory(prefix="belka-score-") as tmp:
        source, features, rejects = (
            Path(tmp) / "raw.parquet",
            Path(tmp) / "features",
            Path(tmp) / "rejects.csv",
        )
        write_parquet(raw, source)
        featurize.featurize(source, features, rejects, options, needs_binds=False)
        rejected = pl.read_csv(
            rejects, schema_overrides={ID: pl.Int64, PROTEIN: pl.String, SMILES: pl.String}
        )
        return predict_file(features, rejects, model_dir, batch_rows), rejected


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.predict",
        description=__doc__.split("\n\n")[0],
        epilog="Pipeline: --features DIR --rejects CSV --output CSV. "
        "On demand: --smiles S --protein P, or --input FILE --output CSV.",
    )
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", type=Path, required=True, help="the trained model's directory")
    parser.add_argument("--features", type=Path, help="featurize output of the test data")
    parser.add_argument("--rejects", type=Path, help="featurize's rejects of the test data")
    parser.add_argument("--smiles", help="one molecule_smiles as BELKA writes it (with [Dy])")
    parser.add_argument("--protein", help="the protein to score --smiles against (BRD4, HSA or sEH)")
    parser.add_argument("--input", type=Path, help="parquet or CSV with molecule_smiles, protein_name[, id]")
    parser.add_argument("--output", type=Path, help="the submission-format CSV to write (id,binds)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    modes = [args.features is not None, args.smiles is not None, args.input is not None]
    if sum(modes) != 1:
        parser.error("give one of --features (pipeline), --smiles with --protein, or --input")
    if (args.features or args.input) and not args.output:
        parser.error("--features and --input need --output")
    if args.smiles is not None and not args.protein:
        parser.error("--smiles needs --protein")

    def body() -> None:
        params = load_params(args.params)
        batch_rows = params.resources.batch_rows
        if args.features:
            submission = predict_file(
                args.features,
                args.rejects,
                args.models,
                batch_rows,
                params.resources.engine,
                workers(params),
                params.resources.worker_wait,
            )
        elif args.input:
            submission, _ = score_rows(read_molecules(args.input), args.models, batch_rows, workers(params))
        else:
            raw = molecule_rows(pl.Series([args.smiles]), pl.Series([args.protein]), pl.Series([0]))
            submission, rejected = score_rows(raw, args.models, batch_rows)
            if len(rejected):
                raise InputError(f"--smiles {args.smiles!r}: {rejected['reason'][0]}")
            print(repr(float(submission["binds"][0])), file=sys.stdout)
            return
        write_csv(submission, args.output)
        log.info("wrote %d predictions to %s", len(submission), args.output)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
