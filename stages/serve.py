"""Score molecules on demand through the pipeline's own code: featurize's cleaning and features with the settings
the model records, then the model's design matrix, so training and serving cannot drift.

- ``--smiles "<molecule_smiles as in BELKA, with [Dy]>" --protein BRD4`` prints the probability as the last line on
  stdout;
- ``--input FILE --output OUT`` (parquet or CSV with ``molecule_smiles`` and ``protein_name``, optional ``id``)
  writes ``id,binds`` for every input row; for the test file it equals the pipeline's submission byte for byte.

``python -m stages.predict`` with these options runs this module too. It is not a pipeline stage: it depends on the
chemistry code (:mod:`stages.chem`), which the predict stage does not.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import polars as pl

from stages import featurize
from stages.cli import run_main, setup_logging
from stages.features import FeatureConfig
from stages.io import BB_COLUMNS, ID, PROTEIN, SMILES, InputError, write_csv, write_parquet
from stages.params import load_params, workers
from stages.predict import cached_model, predict_file

log = logging.getLogger("stages.serve")


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
    parser = argparse.ArgumentParser(prog="python -m stages.serve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--models", type=Path, required=True, help="the trained model's directory")
    parser.add_argument("--smiles", help="one molecule_smiles as BELKA writes it (with [Dy])")
    parser.add_argument("--protein", help="the protein to score --smiles against (BRD4, HSA or sEH)")
    parser.add_argument("--input", type=Path, help="parquet or CSV with molecule_smiles, protein_name[, id]")
    parser.add_argument("--output", type=Path, help="the submission-format CSV to write (id,binds)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if (args.smiles is None) == (args.input is None):
        parser.error("give one of --smiles with --protein, or --input with --output")
    if args.input and not args.output:
        parser.error("--input needs --output")
    if args.smiles is not None and not args.protein:
        parser.error("--smiles needs --protein")

    def body() -> None:
        params = load_params(args.params)
        batch_rows = params.resources.batch_rows
        if args.input:
            submission, _ = score_rows(read_molecules(args.input), args.models, batch_rows, workers(params))
            write_csv(submission, args.output)
            log.info("wrote %d predictions to %s", len(submission), args.output)
            return
        raw = molecule_rows(pl.Series([args.smiles]), pl.Series([args.protein]), pl.Series([0]))
        submission, rejected = score_rows(raw, args.models, batch_rows)
        if len(rejected):
            raise InputError(f"--smiles {args.smiles!r}: {rejected['reason'][0]}")
        print(repr(float(submission["binds"][0])), file=sys.stdout)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
