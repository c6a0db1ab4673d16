"""Score the test set: ``data/submission.csv`` with ``id,binds`` (probability of binding), one row per test id.

Test features stream in batches. Rows that featurize rejected (an unparsable SMILES, say) still get a row, with the
training positive rate of their protein, and a warning says how many; the submission then has exactly one row per
test id, sorted by id like Kaggle's sample submission.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import polars as pl

from stages.dataset import MoleculeStore, count_rows, iter_row_batches
from stages.io import ID, PROTEIN, InputError, Progress, run_main, setup_logging, write_csv
from stages.model import MODEL_DIR, Model, load_model
from stages.params import load_params

log = logging.getLogger("stages.predict")

FEATURES_DIR = Path("data/features/test")
REJECTS_FILE = Path("data/features/test-rejects.csv")


def fallback_predictions(rejects: pl.DataFrame, model: Model) -> pl.DataFrame:
    """Rejected test rows get their protein's training positive rate (the best guess without features)."""
    base_rate = model.manifest["base_rate"]
    model.check_proteins(rejects[PROTEIN], "rejected test rows")
    probs = np.array([base_rate[p] for p in rejects[PROTEIN].to_list()], dtype=np.float64)
    return pl.DataFrame({ID: rejects[ID], "binds": probs})


def predict_file(
    features_dir: Path, rejects_file: Path | None, model_dir: Path, batch_rows: int
) -> pl.DataFrame:
    model = load_model(model_dir)
    store = MoleculeStore(features_dir)
    model.check_features(store)
    rows_dir = features_dir / "rows"
    progress = Progress("predict", count_rows(rows_dir))
    parts = []
    for rows in iter_row_batches(rows_dir, batch_rows, columns=[ID, "molecule_key", PROTEIN]):
        model.check_proteins(rows[PROTEIN], str(rows_dir))
        parts.append(pl.DataFrame({ID: rows[ID], "binds": model.predict(rows, store)}))
        progress.update(len(rows))
    progress.finish()
    if rejects_file is not None and rejects_file.exists():
        rejects = pl.read_csv(rejects_file, schema_overrides={ID: pl.Int64, PROTEIN: pl.String})
        if len(rejects):
            log.warning(
                "%d rejected test rows get their protein's base rate (see %s)", len(rejects), rejects_file
            )
            parts.append(fallback_predictions(rejects, model))
    submission = pl.concat(parts) if parts else pl.DataFrame(schema={ID: pl.Int64, "binds": pl.Float64})
    duplicated = submission.filter(pl.col(ID).is_duplicated())
    if len(duplicated):
        raise InputError(f"{features_dir}: duplicate test id(s) {duplicated[ID].unique().head(5).to_list()}")
    return submission.sort(ID)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--features", type=Path, default=FEATURES_DIR, help="featurize output of the test data"
    )
    parser.add_argument(
        "--rejects", type=Path, default=REJECTS_FILE, help="featurize's rejects of the test data"
    )
    parser.add_argument("--models", type=Path, default=MODEL_DIR)
    parser.add_argument("--output", type=Path, help="submission CSV (default: predict.output)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_params(args.params).predict
        submission = predict_file(args.features, args.rejects, args.models, params.batch_rows)
        output = args.output or Path(params.output)
        write_csv(submission, output)
        log.info("wrote %d predictions to %s", len(submission), output)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
