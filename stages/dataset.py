"""Featurized rows joined with their molecule features, one batch at a time.

Features are stored once per unique molecule (``data/features/<split>/molecules``); rows refer to them by
``molecule_key``. A batch of rows is expanded to a design matrix only when it is used, so memory holds one batch of
rows, the key index (12 bytes a molecule) and a few molecule parts, never the whole table.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa

from stages.chem import DESCRIPTORS, unpack_fingerprints
from stages.io import InputError, list_shards

KEY = "molecule_key"
BB_KEYS = ("bb1_key", "bb2_key", "bb3_key")


def read_manifest(features_dir: Path) -> dict:
    path = Path(features_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found (featurize first: dvc repro)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def fingerprint_bits(manifest: dict) -> int:
    fp = manifest["fingerprint"]
    return fp["n_bits"] if fp["fingerprint"] else 0


def binary_matrix(column: pl.Series, width: int) -> np.ndarray:
    """A Binary column of equal-length values to a uint8 matrix (n, width), without a Python loop."""
    if width == 0 or len(column) == 0:
        return np.zeros((len(column), width), dtype=np.uint8)
    array = column.to_arrow()
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    array = array.cast(pa.large_binary())
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)
    offsets = offsets[array.offset : array.offset + len(array) + 1]
    data = np.frombuffer(array.buffers()[2], dtype=np.uint8)
    if not np.all(np.diff(offsets) == width):
        raise InputError(f"fingerprint column: expected {width} bytes a molecule")
    return data[offsets[0] : offsets[-1]].reshape(len(array), width)


@dataclass
class MoleculePart:
    descriptors: np.ndarray  # float64 (m, len(DESCRIPTORS))
    fingerprints: np.ndarray  # uint8 (m, n_bits / 8)


class MoleculeStore:
    """Look up molecule features by key across the parts of a featurize output."""

    def __init__(self, features_dir: Path, keep_parts: int = 8) -> None:
        self.directory = Path(features_dir)
        self.manifest = read_manifest(self.directory)
        self.n_bits = fingerprint_bits(self.manifest)
        self.parts = list_shards(self.directory / "molecules")
        keys, owners, rows = [], [], []
        for number, path in enumerate(self.parts):
            part_keys = pl.read_parquet(path, columns=[KEY])[KEY].to_numpy()
            keys.append(part_keys)
            owners.append(np.full(len(part_keys), number, dtype=np.int32))
            rows.append(np.arange(len(part_keys), dtype=np.int32))
        order = np.argsort(np.concatenate(keys), kind="stable") if keys else np.empty(0, np.int64)
        self.keys = np.concatenate(keys)[order] if keys else np.empty(0, np.int64)
        self.owner = np.concatenate(owners)[order] if keys else np.empty(0, np.int32)
        self.row = np.concatenate(rows)[order] if keys else np.empty(0, np.int32)
        self.loaded: OrderedDict[int, MoleculePart] = OrderedDict()
        self.keep_parts = keep_parts

    def _part(self, number: int) -> MoleculePart:
        if number in self.loaded:
            self.loaded.move_to_end(number)
            return self.loaded[number]
        frame = pl.read_parquet(self.parts[number])
        part = MoleculePart(
            descriptors=frame.select(DESCRIPTORS).to_numpy().astype(np.float64),
            fingerprints=binary_matrix(frame["fp"], self.n_bits // 8) if self.n_bits else np.zeros((len(frame), 0)),
        )
        self.loaded[number] = part
        if len(self.loaded) > self.keep_parts:
            self.loaded.popitem(last=False)
        return part

    def lookup(self, keys: np.ndarray) -> MoleculePart:
        """Descriptors and packed fingerprints for ``keys``, in the same order; every key must be known."""
        pos = np.minimum(np.searchsorted(self.keys, keys), max(len(self.keys) - 1, 0))
        if len(self.keys) == 0 or not np.all(self.keys[pos] == keys):
            missing = len(keys) if len(self.keys) == 0 else int((self.keys[pos] != keys).sum())
            raise InputError(f"{self.directory}: {missing} row(s) refer to molecules missing from molecules/")
        descriptors = np.empty((len(keys), len(DESCRIPTORS)), dtype=np.float64)
        fingerprints = np.empty((len(keys), self.n_bits // 8), dtype=np.uint8)
        owner, row = self.owner[pos], self.row[pos]
        for number in np.unique(owner):
            mask = owner == number
            part = self._part(int(number))
            descriptors[mask] = part.descriptors[row[mask]]
            fingerprints[mask] = part.fingerprints[row[mask]]
        return MoleculePart(descriptors, fingerprints)

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        return unpack_fingerprints(packed, self.n_bits)


def iter_row_batches(rows_dir: Path, batch_rows: int, columns: list[str] | None = None) -> Iterator[pl.DataFrame]:
    """Rows from the shards of ``rows_dir`` in order, in batches of at most ``batch_rows``."""
    for path in list_shards(rows_dir):
        frame = pl.read_parquet(path, columns=columns)
        for start in range(0, len(frame), batch_rows):
            yield frame.slice(start, batch_rows)


def count_rows(rows_dir: Path) -> int:
    return sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in list_shards(rows_dir))
