"""Featurized rows, read one batch at a time.

A featurize output's ``rows/`` holds one row per input row: id, ``molecule_key``, protein, label and the keys of
the three building blocks; the features themselves are stored once per molecule (:mod:`stages.molecules`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from stages.errors import InputError, first_line
from stages.io import list_shards

KEY = "molecule_key"
BB_KEYS = ("bb1_key", "bb2_key", "bb3_key")
UNSEEN = "unseen_blocks"  # written by split: how many of a molecule's building blocks are held out (0 to 3)
# Kaggle's groups by unseen blocks: share (all seen), non-share (none seen); mixed molecules are not in its test.
GROUP_OF_UNSEEN = {0: "share", 1: "mixed", 2: "mixed", 3: "non_share"}


def find_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(True where a value is one of ``sorted_keys``, its position there); positions are meaningless (but valid
    indices, or 0 when there are no keys) where not found."""
    if len(sorted_keys) == 0:
        return np.zeros(len(values), dtype=bool), np.zeros(len(values), dtype=np.intp)
    pos = np.minimum(np.searchsorted(sorted_keys, values), len(sorted_keys) - 1)
    return sorted_keys[pos] == values, pos


def in_sorted(values: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """True where a value is one of ``sorted_keys``."""
    return find_sorted(values, sorted_keys)[0]


def read_rows(path: Path, columns: list[str] | None = None) -> pl.DataFrame:
    """One rows shard; a damaged or foreign one is an error naming it (restore it, or rerun the stage)."""
    try:
        return pl.read_parquet(path, columns=columns)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise unreadable_shard(path, exc) from None


def unreadable_shard(path: Path, exc: Exception) -> InputError:
    return InputError(f"{path}: not a readable rows shard ({first_line(exc)}); dvc checkout or dvc repro")


def iter_row_batches(
    rows_dir: Path, batch_rows: int, columns: list[str] | None = None
) -> Iterator[pl.DataFrame]:
    """Rows from the shards of ``rows_dir`` in order, in batches of at most ``batch_rows``."""
    for path in list_shards(rows_dir):
        frame = read_rows(path, columns)
        for start in range(0, len(frame), batch_rows):
            yield frame.slice(start, batch_rows)


def count_rows(rows_dir: Path) -> int:
    """Rows in the shards of ``rows_dir``, from their footers."""
    total = 0
    for path in list_shards(rows_dir):
        try:
            total += pl.scan_parquet(path).select(pl.len()).collect().item()
        except (pl.exceptions.PolarsError, OSError) as exc:
            raise unreadable_shard(path, exc) from None
    return total
