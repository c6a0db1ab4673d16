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
from stages.cli import MODELS, Command
from stages.errors import InputError
from stages.features import FeatureConfig
from stages.io import BB_COLUMNS, ID, PROTEIN, SMILES, write_csv, write_parquet
from stages.params import Params, workers
from stages.raw_input import CSV_SUFFIXES, check_unique_ids, first_breach, id_rule, protein_rule
from stages.scoring import cached_model, predict_file

log = logging.getLogger("stages.serve")


def read_molecules(source: Path) -> pl.DataFrame:
    """A parquet or CSV file of molecules to score, as BELKA-format rows (ids 0, 1, ... when it has none). Every row
    needs a protein name and, when the file has ids, a unique integer id; an empty molecule_smiles is a rejected
    row (scored at its protein's base rate). A CSV is read as text: an empty field is a null."""
    is_csv = source.name.lower().endswith(CSV_SUFFIXES)
    try:
        frame = pl.read_csv(source, infer_schema=False) if is_csv else pl.read_parquet(source)
    except FileNotFoundError:
        raise InputError(f"{source}: not found") from None
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{source}: not a readable {'csv' if is_csv else 'parquet'} file ({exc})") from None
    for column in (SMILES, PROTEIN):
        if column not in frame.columns:
            raise InputError(
                f"{source}: missing column {column!r} (found {', '.join(frame.columns) or 'none'})"
            )
    if len(frame) == 0:
        raise InputError(f"{source}: has no rows (expected {SMILES}, {PROTEIN}[, {ID}])")
    for column in (ID, SMILES, PROTEIN):
        dtype = frame[column].dtype if column in frame.columns else None
        if dtype is None or dtype == pl.String:  # a CSV's columns are text; a text id is checked row by row
            continue
        if column == ID and not dtype.is_integer():
            raise InputError(f"{source}: column 'id' must be integer, found {dtype}")
        if column != ID and not isinstance(dtype, (pl.Categorical, pl.Enum)):
            raise InputError(f"{source}: column {column!r} must be string, found {dtype}")
    frame = frame.with_columns(pl.col(SMILES, PROTEIN).cast(pl.String))
    breach = first_breach(
        iter([frame]), [id_rule(), protein_rule()] if ID in frame.columns else [protein_rule()]
    )
    if breach is not None:
        raise InputError(breach.message(str(source)))
    ids = (
        frame[ID].cast(pl.Int64) if ID in frame.columns else pl.Series(ID, range(len(frame)), dtype=pl.Int64)
    )
    check_unique_ids(iter([ids.to_numpy()]), len(ids), str(source))
    return belka_rows(frame[SMILES], frame[PROTEIN], ids)


def belka_rows(smiles: pl.Series, proteins: pl.Series, ids: pl.Series) -> pl.DataFrame:
    """BELKA-format rows; the building blocks are unknown and not needed to score."""
    return pl.DataFrame(
        {ID: ids, **{bb: [""] * len(ids) for bb in BB_COLUMNS}, SMILES: smiles, PROTEIN: proteins},
        schema={ID: pl.Int64, **dict.fromkeys(BB_COLUMNS, pl.String), SMILES: pl.String, PROTEIN: pl.String},
    )


def score_rows(
    raw: pl.DataFrame, model_dir: Path, batch_rows: int, n_workers: int = 1, source: str = "input"
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(``id,binds`` for every row, the rejected rows with their reason): featurized by the featurize stage's code
    with the model's feature settings, scored by :func:`predict_file`. ``source`` names the rows in errors."""
    model = cached_model(model_dir)
    model.check_proteins(raw[PROTEIN], source)  # before featurizing, naming the user's input
    options = featurize.Options(
        config=FeatureConfig.from_spec(model.feature_spec),
        batch_rows=batch_rows,
        workers=n_workers,
        cache_dir=None,
    )
    with tempfile.TemporaryDirectory(prefix="belka-score-") as tmp:
        raw_file, features, rejects = (
            Path(tmp) / "raw.parquet",
            Path(tmp) / "features",
            Path(tmp) / "rejects.csv",
        )
        write_parquet(raw, raw_file)
        featurize.featurize(raw_file, features, rejects, options, needs_binds=False)
        rejected = pl.read_csv(
            rejects, schema_overrides={ID: pl.Int64, PROTEIN: pl.String, SMILES: pl.String}
        )
        return predict_file(features, rejects, model_dir, batch_rows), rejected


def run(args: argparse.Namespace, params: Params) -> None:
    batch_rows = params.resources.batch_rows
    if args.input:
        molecules = read_molecules(args.input)
        submission, _ = score_rows(molecules, args.models, batch_rows, workers(params), str(args.input))
        write_csv(submission, args.output)
        log.info("wrote %d predictions to %s", len(submission), args.output)
        return
    raw = belka_rows(pl.Series([args.smiles]), pl.Series([args.protein]), pl.Series([0]))
    submission, rejected = score_rows(raw, args.models, batch_rows, source="--protein")
    if len(rejected):
        raise InputError(f"--smiles {args.smiles!r}: {rejected['reason'][0]}")
    print(repr(float(submission["binds"][0])), file=sys.stdout)


def usage_problem(args: argparse.Namespace) -> str | None:
    if (args.smiles is None) == (args.input is None):
        return "give one of --smiles with --protein, or --input with --output"
    if args.input and not args.output:
        return "--input needs --output"
    if args.smiles is not None and not args.protein:
        return "--smiles needs --protein"
    return None


def main(argv: list[str] | None = None) -> int:
    return (
        Command("serve", __doc__)
        .paths(models=MODELS)
        .option("--smiles", help="one molecule_smiles as BELKA writes it (with [Dy])")
        .option("--protein", help="the protein to score --smiles against (BRD4, HSA or sEH)")
        .option("--input", type=Path, help="parquet or CSV with molecule_smiles, protein_name[, id]")
        .option("--output", type=Path, help="the submission-format CSV to write (id,binds)")
        .main(argv, run, check=usage_problem)
    )


if __name__ == "__main__":
    raise SystemExit(main())
