"""Split featurized training rows into train and valid parts, keeping all rows of a molecule on one side.

- ``random``: each molecule goes to valid with probability ``split.valid_fraction``, from a seeded hash of its key
  (so the split is the same whatever the row order or batch size).
- ``building_blocks``: whole building blocks are held out, each with probability ``p`` such that a molecule has
  at least one held-out block with probability ``valid_fraction`` (``1 - (1 - p)^3``); those molecules form the
  valid part and no training molecule uses a held-out block. This estimates BELKA's test molecules built from
  building blocks never seen in training.

Output: ``data/split/{train,valid}/part-NNNNN.parquet`` (rows only; features stay once per molecule in
``data/features/train``) and ``data/split/summary.json``.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import polars as pl

from stages.dataset import BB_KEYS, KEY, iter_row_batches
from stages.io import (
    BINDS,
    InputError,
    atomic_dir,
    run_main,
    setup_logging,
    shard_name,
    write_json,
    write_parquet,
)
from stages.params import Split, load_params

log = logging.getLogger("stages.split")

FEATURES_DIR = Path("data/features/train")
SPLIT_DIR = Path("data/split")


def uniform_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (key, seed) mapped to [0, 1): a fixed, platform-independent draw per key."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def held_out_probability(valid_fraction: float) -> float:
    return 1.0 - (1.0 - valid_fraction) ** (1.0 / 3.0)


def assign_valid(rows: pl.DataFrame, params: Split) -> np.ndarray:
    """True for rows that go to the valid part."""
    if params.method == "random":
        return uniform_hash(rows[KEY].to_numpy(), params.seed) < params.valid_fraction
    p = held_out_probability(params.valid_fraction)
    held = np.zeros(len(rows), dtype=bool)
    for column in BB_KEYS:
        held |= uniform_hash(rows[column].to_numpy(), params.seed) < p
    return held


def split_rows(features_dir: Path, out_dir: Path, params: Split, batch_rows: int = 1_000_000) -> dict:
    summary = {
        "method": params.method,
        "train": {"rows": 0, "positives": 0},
        "valid": {"rows": 0, "positives": 0},
    }
    with atomic_dir(out_dir) as tmp:
        for side in ("train", "valid"):
            (tmp / side).mkdir()
        for number, rows in enumerate(iter_row_batches(features_dir / "rows", batch_rows)):
            valid = pl.Series(assign_valid(rows, params))
            for side, part in (("train", rows.filter(~valid)), ("valid", rows.filter(valid))):
                write_parquet(part, tmp / side / shard_name(number))
                summary[side]["rows"] += len(part)
                summary[side]["positives"] += int(part[BINDS].sum() or 0)
        for side in ("train", "valid"):
            if summary[side]["rows"] == 0:
                raise InputError(f"split: the {side} part is empty; change split.valid_fraction or the data")
        write_json(tmp / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--features", type=Path, default=FEATURES_DIR, help="featurize output of the train data"
    )
    parser.add_argument("--output", type=Path, default=SPLIT_DIR)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        summary = split_rows(args.features, args.output, load_params(args.params).split)
        log.info("%s split: %s", summary["method"], {k: summary[k] for k in ("train", "valid")})

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
