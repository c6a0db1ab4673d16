"""Fit the final model: the split model's settings on every labelled row, for the submission.

``train`` fits the split model on the split's train part, and ``evaluate`` scores it on the valid part: its
``score`` is the estimate. The submission should come from the best model the pipeline can make, so this stage fits
the same model form, negative sampling, XGBoost params, data mode and distributed setup on every labelled row (the
train part, the valid part and the mixed molecules: featurize's rows), and ``predict`` and on-demand scoring use it.

Rounds: each booster is boosted for the rounds the split model kept (its best iteration + 1), without early
stopping: the final fit has no rows left out to stop on, and the split model's best iteration is the one the
inner part chose (without early stopping, that is ``xgb.n_estimators``).

``train.final_fit: false`` skips the fit for quick experiments: the split model is copied as the final model, its
manifest says so, and so does ``predict``'s log.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from stages.atomic import atomic_dir
from stages.cli import Command
from stages.fitting import FitPlan, split_model_rounds, train_model
from stages.io import read_json, write_json
from stages.model import MANIFEST, load_model
from stages.params import Params

log = logging.getLogger("stages.final")

FINAL_ROWS = "every labelled row (the split's train and valid parts and the mixed molecules)"


def final_plan(split_manifest: dict) -> FitPlan:
    """The final fit: every labelled row, each booster boosted for the rounds the split model kept."""
    return FitPlan("final", FINAL_ROWS, ("train", "valid"), split_model_rounds(split_manifest))


def copy_split_model(split_dir: Path, model_dir: Path) -> dict:
    """``train.final_fit: false``: the split model's files as the final model, its manifest saying so; the
    manifest's fit record."""
    with atomic_dir(model_dir) as target:
        shutil.copytree(split_dir, target, dirs_exist_ok=True)
        manifest = read_json(target / MANIFEST, "model manifest")
        manifest["fit"] = {
            **manifest["fit"],
            "final_fit": False,
            "note": "train.final_fit is false: the split model, not fit on the valid part or the mixed molecules",
        }
        write_json(target / MANIFEST, manifest)
    return manifest["fit"]


def fit_final(
    params: Params,
    rows_dir: Path,
    features_dir: Path,
    split_dir: Path,
    model_dir: Path,
    summary: Path | None = None,
) -> dict:
    """The final model in ``model_dir``, from featurize's rows and features and the split model's manifest; its
    memory is estimated from the split's ``summary`` (train and valid parts) before any row is read."""
    split_model = load_model(split_dir)
    if not params.train.final_fit:
        return copy_split_model(split_dir, model_dir)
    plan = final_plan(split_model.manifest)
    return train_model(params, rows_dir, features_dir, model_dir, None, plan, summary)["fit"]


def run(args: argparse.Namespace, params: Params) -> None:
    fit = fit_final(params, args.rows, args.features, args.split_model, args.models, args.split_summary)
    if params.train.final_fit:
        log.info("final model on %d labelled rows (%s)", fit["labelled_rows"], fit["rows"])
    else:
        log.warning("train.final_fit is false: the final model is the split model (%s)", fit["rows"])


def main(argv: list[str] | None = None) -> int:
    return (
        Command("final", __doc__)
        .fit(rows="every labelled row: featurize's rows", models="where the final model's JSON artifacts go")
        .paths(split_model="the split model (train's output)")
        .main(argv, run)
    )


if __name__ == "__main__":
    raise SystemExit(main())
