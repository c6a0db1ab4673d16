"""Fit the half model: the split model's settings and rounds on a seeded half of the split's train part.

``evaluate`` scores the split model on the valid part, but the submission comes from the final model, fit on every
labelled row (several times the split's train part). A model trained on more rows scores higher, so the split
model's ``score`` says too little of the leaderboard. This stage fits a second point of the learning curve: the
same model form, params and rounds as the split model (like the final fit, no early stopping), on the molecules of
the split's train part that a seeded hash puts in one half (every row of a molecule together). ``evaluate`` scores
both models on the same valid molecules and projects each pair's average precision to the final fit's rows, linear
in log(rows) through the two points: the leaderboard estimate.

``train.final_fit: false`` (the submission is the split model itself) needs no projection: the stage writes a
manifest that says so and no booster, and ``evaluate`` projects nothing.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from stages.atomic import atomic_dir, scratch_dir
from stages.cli import Command
from stages.dataset import KEY, iter_row_batches
from stages.fitting import FitPlan, split_model_rounds, train_model
from stages.io import shard_name, write_json, write_parquet
from stages.model import MANIFEST, load_model
from stages.params import Params
from stages.split import uniform_hash

log = logging.getLogger("stages.learning_curve")

HALF = 0.5  # the share of the split's train part's molecules the half model sees
HALF_STREAM = 0x4A1F_C0DE  # the half's draw: another stream than the split's and early stopping's
READ_ROWS = 1_000_000  # rows copied at a time (memory only)
HALF_ROWS = "a seeded half of the molecules of the split's train part"


def in_half(keys: np.ndarray, seed: int) -> np.ndarray:
    """Whether each molecule key is in the half: a fixed draw per molecule, so all its rows go together."""
    return uniform_hash(keys, seed ^ HALF_STREAM) < HALF


def write_half_rows(rows_dir: Path, out_dir: Path, seed: int) -> int:
    """The rows of ``rows_dir`` whose molecule is in the half, as shards in ``out_dir``; how many."""
    written = 0
    for index, batch in enumerate(iter_row_batches(rows_dir, READ_ROWS)):
        kept = batch.filter(pl.Series(in_half(batch[KEY].to_numpy(), seed)))
        if len(kept):
            write_parquet(kept, out_dir / shard_name(index))
            written += len(kept)
    return written


def half_plan(split_manifest: dict) -> FitPlan:
    """The half fit: each booster boosted for the rounds the split model kept, as the final fit is."""
    return FitPlan("half", HALF_ROWS, ("train",), split_model_rounds(split_manifest))


def fit_half(params: Params, rows_dir: Path, features_dir: Path, split_dir: Path, model_dir: Path) -> dict:
    """The half model in ``model_dir`` (or, with ``train.final_fit: false``, a manifest saying none is needed);
    its fit record."""
    if not params.train.final_fit:
        record = {"model": "half", "skipped": "train.final_fit is false: the submission is the split model"}
        with atomic_dir(model_dir) as target:
            write_json(target / MANIFEST, {"fit": record})
        return record
    split_model = load_model(split_dir)
    scratch = scratch_dir(model_dir.with_name(model_dir.name + "-rows"))
    try:
        rows = write_half_rows(rows_dir, scratch, params.train.seed)
        log.info("half of the split's train part: %d rows", rows)
        return train_model(params, scratch, features_dir, model_dir, None, half_plan(split_model.manifest))[
            "fit"
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, params: Params) -> None:
    fit_half(params, args.rows, args.features, args.split_model, args.models)


def main(argv: list[str] | None = None) -> int:
    return (
        Command("learning_curve", __doc__)
        .paths(
            rows="the split's train part",
            features="featurize output of the train data",
            split_model="the split model (train's output)",
            models="where the half model's JSON artifacts go",
        )
        .main(argv, run)
    )


if __name__ == "__main__":
    raise SystemExit(main())
