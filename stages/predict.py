"""Score the featurized test set into a submission.

Pipeline (``dvc.yaml``): ``--features`` (featurize's output for the test data), ``--rejects`` and ``--output``:
``id,binds`` (probability of binding), one row per test id, sorted by id like Kaggle's sample submission. Rows that
featurize rejected (an unparsable SMILES, say) still get a row, with their protein's positive rate in the training
data, and a warning says how many.

On demand, ``--smiles``/``--protein`` or ``--input``/``--output`` score raw molecules: that is
:mod:`stages.serve` (``python -m stages.serve``, the same options), loaded only in that mode, so the pipeline's
predict stage depends on the model and the features, never on the chemistry code that made them.
"""

from __future__ import annotations

import argparse
import importlib
import logging
from pathlib import Path

from stages.cli import MODELS, Command
from stages.io import write_csv
from stages.params import Params, workers
from stages.scoring import cached_model, predict_file

log = logging.getLogger("stages.predict")


def run(args: argparse.Namespace, params: Params) -> None:
    submission = predict_file(
        args.features,
        args.rejects,
        args.models,
        params.resources.batch_rows,
        params.resources.engine,
        workers(params),
        params.resources.worker_wait,
    )
    write_csv(submission, args.output)
    log.info(
        "wrote %d predictions to %s with %s",
        len(submission),
        args.output,
        cached_model(args.models).description,
    )


def main(argv: list[str] | None = None) -> int:
    command = (
        Command(
            "predict",
            __doc__,
            epilog="On demand (--smiles S --protein P, or --input FILE --output CSV): the options of "
            "python -m stages.serve, which this command runs when --features is not given.",
        )
        .paths(models=MODELS)
        .option("--features", type=Path, help="featurize output of the test data")
        .option("--rejects", type=Path, help="featurize's rejects of the test data")
        .option("--output", type=Path, help="the submission CSV to write (id,binds)")
    )
    args, on_demand = command.parser.parse_known_args(argv)
    if (
        args.features is None
    ):  # on demand: stages.serve, imported only here (the pipeline stage never needs it)
        return importlib.import_module("stages.serve").main(argv)
    if on_demand:
        command.parser.error(f"unrecognized arguments with --features: {' '.join(on_demand)}")
    if not args.output:
        command.parser.error("--features needs --output")
    return command.run(args, run)


if __name__ == "__main__":
    raise SystemExit(main())
