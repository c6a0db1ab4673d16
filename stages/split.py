"""Split featurized training rows into train and valid parts, keeping all rows of a molecule on one side.

Kaggle scores BELKA's test set in two groups: molecules whose three building blocks all occur in training
("share") and molecules with at least one building block never seen in training ("non-share", most of the private
leaderboard). A valid part that estimates that score needs both:

- ``belka`` (the default): in each position, a fraction ``split.held_out_building_blocks`` of the distinct building
  blocks is held out; every molecule using one of them (in any position) goes to valid, and no training molecule
  uses them (non-share). Of the other molecules, a fraction ``split.valid_fraction`` goes to valid at random
  (share).
- ``random``: the random fraction only (a share-only valid part).
- ``building_blocks``: the held-out building blocks only (a non-share-only valid part).

Every draw is a seeded hash of a key (the molecule's, or the building block's), and the held-out blocks are the
lowest-ranked by that hash among the distinct blocks of a position, so the split is the same whatever the row
order or batch size.

Output: ``<output>/{train,valid}/part-NNNNN.parquet`` (rows only; features stay once per molecule in the featurize
output) and ``<output>/summary.json``. Split reads only the featurized rows, so a change of molecule features
(fingerprint size, descriptors) does not rerun it.
"""

from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path

import numpy as np
import polars as pl

from stages.cli import run_main, setup_logging
from stages.dataset import BB_KEYS, KEY, in_sorted, iter_row_batches
from stages.io import BINDS, InputError, atomic_dir, shard_name, write_json, write_parquet
from stages.params import Split, load_params

log = logging.getLogger("stages.split")

READ_ROWS = 1_000_000  # rows read at a time (memory only: the split does not depend on it)


def uniform_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (key, seed) mapped to [0, 1): a fixed, platform-independent draw per key."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def held_out_blocks(blocks_by_position: list[np.ndarray], fraction: float, seed: int) -> np.ndarray:
    """Sorted keys of the held-out building blocks: in each position, the ``ceil(fraction * n)`` distinct blocks
    with the lowest seeded hash (so at least one a position, and the same blocks whatever the row order)."""
    held = []
    for keys in blocks_by_position:
        keys = np.unique(keys)
        count = math.ceil(fraction * len(keys))
        order = np.lexsort((keys, uniform_hash(keys, seed)))  # ties by key: fully determined
        held.append(keys[order[:count]])
    return np.unique(np.concatenate(held)) if held else np.empty(0, dtype=np.int64)


def uses_any(rows: pl.DataFrame, blocks: np.ndarray) -> np.ndarray:
    """True for rows whose molecule uses one of ``blocks`` (sorted keys) in any position."""
    hit = np.zeros(len(rows), dtype=bool)
    for column in BB_KEYS:
        hit |= in_sorted(rows[column].to_numpy(), blocks)
    return hit


def assign_valid(rows: pl.DataFrame, params: Split, held: np.ndarray) -> np.ndarray:
    """True for rows that go to the valid part."""
    non_share = uses_any(rows, held) if params.method != "random" else np.zeros(len(rows), dtype=bool)
    if params.method == "building_blocks":
        return non_share
    share = uniform_hash(rows[KEY].to_numpy(), params.seed) < params.valid_fraction
    return non_share | share


def distinct_blocks(rows_dir: Path) -> list[np.ndarray]:
    """The distinct building-block keys of each position."""
    seen: list[set[int]] = [set() for _ in BB_KEYS]
    for rows in iter_row_batches(rows_dir, READ_ROWS, columns=list(BB_KEYS)):
        for blocks, column in zip(seen, BB_KEYS, strict=True):
            blocks.update(rows[column].unique().to_list())
    return [np.array(sorted(blocks), dtype=np.int64) for blocks in seen]


def split_rows(rows_dir: Path, out_dir: Path, params: Split) -> dict:
    blocks = distinct_blocks(rows_dir) if params.method != "random" else []
    held = held_out_blocks(blocks, params.held_out_building_blocks, params.seed)
    summary: dict = {
        "method": params.method,
        "building_blocks": [len(b) for b in blocks],
        "held_out_building_blocks": len(held),
        "train": {"rows": 0, "positives": 0},
        "valid": {"rows": 0, "positives": 0},
    }
    with atomic_dir(out_dir) as tmp:
        for side in ("train", "valid"):
            (tmp / side).mkdir()
        for number, rows in enumerate(iter_row_batches(rows_dir, READ_ROWS)):
            valid = pl.Series(assign_valid(rows, params, held))
            for side, part in (("train", rows.filter(~valid)), ("valid", rows.filter(valid))):
                write_parquet(part, tmp / side / shard_name(number))
                summary[side]["rows"] += len(part)
                summary[side]["positives"] += int(part[BINDS].sum() or 0)
        for side in ("train", "valid"):
            if summary[side]["rows"] == 0:
                raise InputError(
                    f"split: the {side} part is empty; change split.valid_fraction, "
                    "split.held_out_building_blocks or the data"
                )
        write_json(tmp / "summary.json", summary)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stages.split", description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument(
        "--rows", type=Path, required=True, help="the rows/ of the train data's featurize output"
    )
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        summary = split_rows(args.rows, args.output, load_params(args.params).split)
        log.info("%s split: %s", summary["method"], {k: summary[k] for k in ("train", "valid")})

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
