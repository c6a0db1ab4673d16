"""Molecule features, stored once per molecule in parquet parts, and how to find them by key.

Two stores share one index of parts (:class:`PartIndex`) and one cache of parts read (:class:`PartCache`):

- the feature cache (:class:`FeatureCache`, ``resources.feature_cache``): every molecule ever featurized with one
  feature spec, shared across runs, clones and DVC experiments, so only new molecules are computed;
- a featurize output's ``molecules/`` (:class:`MoleculeStore`): the features of one data set's molecules, looked up
  by the rows' ``molecule_key`` when a batch of rows becomes a design matrix.

Memory holds the key index (16 bytes a molecule) and a few parts, never the whole table.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
import pyarrow as pa

from stages import features
from stages.dataset import KEY, find_sorted
from stages.io import InputError, list_shards, manifest_version, write_parquet

log = logging.getLogger("stages.molecules")
T = TypeVar("T")

RESTORE = "restore it (dvc checkout) or featurize again"  # what to do about a damaged part of an output
CHECK = "check"  # 32 more bits of the molecule's hash, to detect two molecules with one key


def read_manifest(features_dir: Path) -> dict:
    path = Path(features_dir) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found (featurize first: dvc repro)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc})") from None


def spec_is_complete(spec: object) -> bool:
    """Whether ``spec`` is a whole feature spec (``features.FeatureConfig.spec``), as this code writes it."""
    try:
        config = features.FeatureConfig.from_spec(spec)  # type: ignore[arg-type]
    except (KeyError, TypeError, AttributeError):
        return False
    return (
        isinstance(spec, dict) and "version" in spec and all(isinstance(d, str) for d in config.descriptors)
    )


def feature_spec(manifest: dict, source: Path) -> dict:
    """The spec of the features (``features.FeatureConfig.spec``) a featurize output was made with."""
    spec = manifest.get("features") if isinstance(manifest, dict) else None
    if not spec_is_complete(spec):
        raise InputError(f"{source}: manifest.json has no feature spec (made by an older version: dvc repro)")
    return spec


def unpack_fingerprints(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Bit-packed fingerprints (n, n_bits / 8) to a 0/1 float32 matrix (n, n_bits)."""
    return np.unpackbits(packed, axis=1, count=n_bits).astype(np.float32)


def molecule_schema(config: features.FeatureConfig) -> dict[str, pl.DataType]:
    schema: dict[str, pl.DataType] = {KEY: pl.Int64}
    schema.update(dict.fromkeys(config.descriptors, pl.Float64))
    if config.n_bits:
        schema["fp"] = pl.Binary
    return schema


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


def read_part(path: Path, schema: dict[str, pl.DataType], columns: list[str] | None = None) -> pl.DataFrame:
    """``columns`` (default: all of ``schema``) of a molecules part, which must have ``schema``'s columns and
    types (read from its footer first); an unreadable or foreign part raises :class:`InputError` naming it."""
    try:
        found = pl.read_parquet_schema(path)
        wrong = [name for name, dtype in schema.items() if found.get(name) != dtype]
        if wrong:
            have = ", ".join(f"{name} {found[name]}" if name in found else f"no {name}" for name in wrong)
            raise InputError(f"{path}: not a part of this feature spec ({have})")
        return pl.read_parquet(path, columns=columns or list(schema))
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputError(f"{path}: not a readable parquet part ({exc})") from None


class PartIndex:
    """Where each key lives among parquet parts: sorted keys with their part and row, 16 bytes a key.

    A part that cannot be read, or lacks a column of ``schema``, raises, unless ``skip_unreadable`` (then its keys
    are simply not indexed).
    """

    def __init__(
        self, paths: list[Path], schema: dict[str, pl.DataType], skip_unreadable: bool = False
    ) -> None:
        keys, owners, rows = [np.empty(0, np.int64)], [np.empty(0, np.int32)], [np.empty(0, np.int32)]
        for number, path in enumerate(paths):
            try:
                part_keys = read_part(path, schema, [KEY])[KEY].to_numpy()
            except InputError as exc:
                if not skip_unreadable:
                    raise
                log.warning("ignoring %s", exc)
                continue
            keys.append(part_keys)
            owners.append(np.full(len(part_keys), number, dtype=np.int32))
            rows.append(np.arange(len(part_keys), dtype=np.int32))
        all_keys = np.concatenate(keys)
        order = np.argsort(all_keys, kind="stable")
        self.keys = all_keys[order]
        self.owner = np.concatenate(owners)[order]
        self.row = np.concatenate(rows)[order]

    def __len__(self) -> int:
        return len(self.keys)

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, part number, row in part) for each key; part and row are meaningless where not found."""
        found, pos = find_sorted(keys, self.keys)
        if len(self.keys) == 0:
            return found, pos, pos
        return found, self.owner[pos], self.row[pos]


class PartCache:
    """The last few parts read, by number (least recently used goes first)."""

    def __init__(self, load: Callable[[int], T], keep: int) -> None:
        self.load, self.keep = load, keep
        self.loaded: OrderedDict[int, T] = OrderedDict()

    def get(self, number: int) -> T:
        if number in self.loaded:
            self.loaded.move_to_end(number)
            return self.loaded[number]
        value = self.loaded[number] = self.load(number)
        if len(self.loaded) > self.keep:
            self.loaded.popitem(last=False)
        return value


@dataclass
class MoleculePart:
    descriptors: np.ndarray  # float64 (m, number of descriptors)
    fingerprints: np.ndarray  # uint8 (m, n_bits / 8)


class MoleculeStore:
    """Look up molecule features by key across the parts of a featurize output."""

    def __init__(self, features_dir: Path, keep_parts: int = 8) -> None:
        self.directory = Path(features_dir)
        self.manifest = read_manifest(self.directory)
        self.spec = feature_spec(self.manifest, self.directory)
        self.descriptors = list(self.spec["descriptors"])
        self.n_bits = features.FingerprintConfig.from_spec(self.spec["fingerprint"]).bits
        self.schema = molecule_schema(features.FeatureConfig.from_spec(self.spec))
        self.parts = list_shards(self.directory / "molecules")
        try:
            self.index = PartIndex(self.parts, self.schema)
        except InputError as exc:
            raise InputError(f"{exc}; {RESTORE}") from None
        self.cache = PartCache(self._load, keep_parts)

    def _load(self, number: int) -> MoleculePart:
        try:
            frame = read_part(self.parts[number], self.schema)
        except InputError as exc:
            raise InputError(f"{exc}; {RESTORE}") from None
        return MoleculePart(
            descriptors=frame.select(self.descriptors).to_numpy().astype(np.float64),
            fingerprints=binary_matrix(frame["fp"], self.n_bits // 8)
            if self.n_bits
            else np.zeros((len(frame), 0)),
        )

    def lookup(self, keys: np.ndarray) -> MoleculePart:
        """Descriptors and packed fingerprints for ``keys``, in the same order; every key must be known."""
        found, owner, row = self.index.locate(keys)
        if not found.all():
            raise InputError(
                f"{self.directory}: {int((~found).sum())} row(s) refer to molecules missing from molecules/"
            )
        descriptors = np.empty((len(keys), len(self.descriptors)), dtype=np.float64)
        fingerprints = np.empty((len(keys), self.n_bits // 8), dtype=np.uint8)
        for number in np.unique(owner):
            mask = owner == number
            part = self.cache.get(int(number))
            descriptors[mask] = part.descriptors[row[mask]]
            fingerprints[mask] = part.fingerprints[row[mask]]
        return MoleculePart(descriptors, fingerprints)

    def unpack(self, packed: np.ndarray) -> np.ndarray:
        return unpack_fingerprints(packed, self.n_bits)


@functools.lru_cache(maxsize=2)
def _store(directory: Path, _version: int) -> MoleculeStore:
    return MoleculeStore(directory)


def cached_store(directory: Path) -> MoleculeStore:
    """The store of a featurize output, built once per process while its manifest is unchanged: a Dask worker
    serves many partitions or shards from one index."""
    return _store(Path(directory), manifest_version(directory))


def feature_frame(
    molecules: pl.DataFrame, batch: features.FeatureBatch, config: features.FeatureConfig
) -> pl.DataFrame:
    """Computed features of ``molecules`` (key, check) as a table: key, check, descriptors, fp, reason."""
    columns: dict[str, object] = {KEY: molecules[KEY], CHECK: molecules[CHECK]}
    for i, name in enumerate(config.descriptors):
        columns[name] = batch.descriptors[:, i]
    if config.n_bits:
        columns["fp"] = [row.tobytes() for row in batch.fp]
    frame = pl.DataFrame(columns, schema={**molecule_schema(config), CHECK: pl.Int64})
    return frame.with_columns(pl.Series("reason", batch.reasons, dtype=pl.String))


def cache_namespace(config: features.FeatureConfig) -> str:
    """Features depend on the configuration, RDKit's version and the feature version (which covers this module's
    stored format): the spec holds all three."""
    spec = json.dumps(config.spec(), sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


class FeatureCache:
    """Immutable parquet parts of computed molecule features (key, check, features, reason), content-addressed.

    What the cache held at start is indexed (16 bytes a molecule); a part is read when one of its molecules is
    needed, and the last few read are kept. A damaged part is ignored: its molecules are computed again. Parts are
    written atomically under unique temporary names, so runs sharing the cache never see or remove each other's
    unfinished files.
    """

    def __init__(self, directory: Path | None, schema: dict[str, pl.DataType], keep_parts: int = 4) -> None:
        self.directory = directory
        if directory is not None:
            existing = next((p for p in (directory, *directory.parents) if p.exists()), directory)
            if existing.exists() and not existing.is_dir():
                raise InputError(
                    f"{existing}: is a file, where the feature cache's directory is expected (set by --cache, "
                    "$BELKA_FEATURE_CACHE or resources.feature_cache)"
                )
        self.schema = {**schema, CHECK: pl.Int64, "reason": pl.String}
        self.parts = sorted(directory.glob("part-*.parquet")) if directory and directory.is_dir() else []
        self.index = PartIndex(self.parts, self.schema, skip_unreadable=True)
        self.cache = PartCache(lambda number: read_part(self.parts[number], self.schema), keep_parts)
        self.broken: set[int] = set()  # parts that failed to load: their molecules are computed again

    def _part(self, number: int) -> pl.DataFrame | None:
        if number in self.broken:
            return None
        try:
            return self.cache.get(number)
        except InputError as exc:
            log.warning("ignoring %s: its molecules are computed again", exc)
            self.broken.add(number)
            return None

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, molecules: pl.DataFrame) -> tuple[pl.DataFrame, np.ndarray]:
        """Features of the cached ones among ``molecules`` (key, check) and a mask of which were cached. A cached
        entry whose check differs is another molecule with the same key: not used."""
        found, owner, row = self.index.locate(molecules[KEY].to_numpy())
        frames = []
        for number in np.unique(owner[found]):
            in_part = found & (owner == number)
            part = self._part(int(number))
            if part is None:
                found &= ~in_part
            else:
                frames.append(part[row[in_part]])
        frame = pl.concat(frames) if frames else pl.DataFrame(schema=self.schema)
        if len(frame):
            wanted = molecules.filter(pl.Series(found)).select(KEY, CHECK)
            same = frame.join(wanted, on=[KEY, CHECK], how="semi")
            if len(same) < len(frame):
                log.warning(
                    "%d cached molecule(s) share a key with another molecule; computing them",
                    len(frame) - len(same),
                )
                found &= np.isin(molecules[KEY].to_numpy(), same[KEY].to_numpy())
            frame = same
        return frame, found

    def add(self, frame: pl.DataFrame) -> None:
        if len(frame) == 0 or self.directory is None:
            return
        digest = hashlib.sha256(frame[KEY].to_numpy().tobytes()).hexdigest()[:24]
        path = self.directory / f"part-{digest}.parquet"
        if not path.exists():
            write_parquet(frame, path)
