"""Molecule features, stored once per molecule in parquet parts, and how to find them by key.

Two stores share one index of parts (:class:`PartIndex`) and one cache of parts read (:class:`PartCache`):

- the feature cache (:class:`FeatureCache`, ``resources.feature_cache``): every molecule ever featurized with one
  feature spec, shared across runs, clones and DVC experiments, so only new molecules are computed. Each part
  carries digests of its keys and of its bytes in its name, checked before its keys are indexed or its values
  used (:func:`part_keys`, :func:`check_content`);
- a featurize output's ``molecules/`` (:class:`MoleculeStore`): the features of one data set's molecules, looked up
  by the rows' ``molecule_key`` when a batch of rows becomes a design matrix.

Memory holds the key index (12 bytes a molecule) and a few parts, never the whole table.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import json
import logging
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from stages import features
from stages.atomic import atomic_file
from stages.dataset import KEY, find_sorted
from stages.errors import InputError, first_line
from stages.io import PARQUET_OPTIONS, list_shards, manifest_version

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


def read_part(
    path: Path, schema: dict[str, pl.DataType], columns: list[str] | None = None, data: bytes | None = None
) -> pl.DataFrame:
    """``columns`` (default: all of ``schema``) of a molecules part (its bytes ``data`` when given, else the file),
    which must have ``schema``'s columns and types (read from its footer first); an unreadable or foreign part
    raises :class:`InputError` naming ``path``."""

    def source() -> io.BytesIO | Path:
        return io.BytesIO(data) if data is not None else path

    try:
        found = pl.read_parquet_schema(source())
        wrong = [name for name, dtype in schema.items() if found.get(name) != dtype]
        if wrong:
            have = ", ".join(f"{name} {found[name]}" if name in found else f"no {name}" for name in wrong)
            raise InputError(f"{path}: not a part of this feature spec ({have})")
        return pl.read_parquet(source(), columns=columns or list(schema))
    except (pl.exceptions.PolarsError, OSError, pl.exceptions.PanicException) as exc:
        raise InputError(f"{path}: not a readable parquet part ({first_line(exc)})") from None


class PartIndex:
    """Where each key lives among parts: the keys sorted, each with its position in the parts' keys laid end to end
    (12 bytes a key; 24 while it is built). A position's part and row come from the parts' starts at look-up.
    ``part_keys`` holds each part's keys in row order; the index takes its arrays and empties the list, so that
    they are not held twice while they are sorted."""

    def __init__(self, part_keys: list[np.ndarray]) -> None:
        sizes = [len(found) for found in part_keys]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])  # each part's first position
        all_keys = np.concatenate(part_keys) if part_keys else np.empty(0, np.int64)
        part_keys.clear()
        order = np.argsort(all_keys, kind="stable")  # a key in several parts: the first part's row is found
        self.keys = all_keys[order]
        del all_keys
        self.position = order.astype(np.uint32 if len(order) < 2**32 else np.int64)

    @classmethod
    def of_parts(cls, paths: list[Path], schema: dict[str, pl.DataType]) -> PartIndex:
        """The index of parquet parts, read from their key columns; a part that cannot be read, or lacks a column
        of ``schema``, raises :class:`InputError` naming it."""
        return cls([read_part(path, schema, [KEY])[KEY].to_numpy() for path in paths])

    def __len__(self) -> int:
        return len(self.keys)

    def locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(found mask, part number, row in part) for each key; part and row are meaningless where not found."""
        found, pos = find_sorted(keys, self.keys)
        if len(self.keys) == 0:
            return found, pos, pos
        position = self.position[pos].astype(np.int64)
        owner = np.searchsorted(self.starts, position, side="right") - 1
        return found, owner, position - self.starts[owner]


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
            self.index = PartIndex.of_parts(self.parts, self.schema)
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


# The feature cache's stored form. 1: parts named by their keys, never checked; 2: digests of the keys and of the
# bytes in the names, the keys in a sidecar.
CACHE_LAYOUT = 2
PART_STEM = re.compile(r"part-(?P<keys>[0-9a-f]{24})-(?P<content>[0-9a-f]{64})")


def cache_namespace(config: features.FeatureConfig) -> str:
    """The feature cache's directory for ``config``: a digest of the feature spec (the settings, RDKit's version
    and the feature version) and of :data:`CACHE_LAYOUT`, so a part is only ever read by code that computes the
    same features and stores them the same way; parts of another layout, such as layout 1's unverified ones, lie
    in other directories and are never read. What else shapes a part's bytes (pyarrow's writer, compression)
    changes them but not the values they decode to, and every part is checked against the digest of its own
    bytes. The code computing the features is covered by the feature version (pinned by tests/test_golden.py), not
    hashed: a change that skips the bump is stopped by review, and only reviewed code writes the protected cache
    (docs/ci.md)."""
    spec = json.dumps({"features": config.spec(), "layout": CACHE_LAYOUT}, sort_keys=True)
    return hashlib.sha256(spec.encode()).hexdigest()[:16]


class DamagedPart(Exception):
    """A feature-cache part whose bytes do not match the digests in its name (damaged, truncated, another part's
    file), or that cannot be read: its molecules are computed again and it is replaced."""


def keys_digest(keys: bytes) -> str:
    """The digest of a part's keys (int64 little-endian, in row order) in its name."""
    return hashlib.sha256(keys).hexdigest()[:24]


def content_digest(namespace: str, data: bytes) -> str:
    """The digest of a part's parquet bytes in its name, bound to the cache's namespace: a part copied from another
    namespace (other features under the same keys) does not match."""
    digest = hashlib.sha256(namespace.encode() + b"\n")
    digest.update(data)
    return digest.hexdigest()


def encode_part(frame: pl.DataFrame, namespace: str) -> tuple[str, bytes, bytes]:
    """A part holding ``frame`` (key, check, features, reason): its stem ``part-<keys digest>-<content digest>``,
    its parquet bytes and its keys sidecar's bytes."""
    keys = frame[KEY].to_numpy().astype("<i8").tobytes()
    buffer = io.BytesIO()
    pq.write_table(frame.to_arrow(), buffer, **PARQUET_OPTIONS)
    data = buffer.getvalue()
    return f"part-{keys_digest(keys)}-{content_digest(namespace, data)}", data, keys


def part_keys(stem: str, data: bytes) -> np.ndarray:
    """The keys of the part ``stem`` from its sidecar's bytes, which must match the keys digest in its name."""
    name = PART_STEM.fullmatch(stem)
    if name is None:
        raise DamagedPart("not named part-<24 hex digits>-<64 hex digits>")
    if len(data) % 8 or keys_digest(data) != name["keys"]:
        raise DamagedPart("its keys do not match the digest in its name (damaged, or another part's file)")
    return np.frombuffer(data, dtype="<i8").astype(np.int64)


def check_content(stem: str, namespace: str, data: bytes) -> None:
    """The parquet bytes of the part ``stem`` must match the content digest in its name."""
    name = PART_STEM.fullmatch(stem)
    if name is None or content_digest(namespace, data) != name["content"]:
        raise DamagedPart(
            "its bytes do not match the digest in its name (damaged, truncated, or another part's file)"
        )


Identity = tuple[int, int, int]  # device, inode and change time of a file


def _identity(stat: os.stat_result) -> Identity:
    return stat.st_dev, stat.st_ino, stat.st_ctime_ns


def read_file(path: Path) -> tuple[bytes, Identity]:
    """A file's bytes, and which file they came from: what is checked is what is parsed, even when another run
    replaces the file meanwhile."""
    with open(path, "rb") as handle:
        return handle.read(), _identity(os.fstat(handle.fileno()))


def identity(path: Path) -> Identity | None:
    """Which file is at ``path`` now (None: none)."""
    try:
        return _identity(path.stat())
    except OSError:
        return None


class FeatureCache:
    """Parquet parts of computed molecule features (key, check, features, reason), each verified before use.

    A part is two files: ``part-K-C.parquet``, the features, and ``part-K-C.keys``, its keys (int64, in row order),
    where K is a digest of the keys and C of the parquet bytes (and the namespace). At start every ``.keys`` sidecar
    is read and checked against K, then indexed (12 bytes a molecule: the parquet files are not read); a part's
    parquet is read when one of its molecules is needed, checked against C before it is parsed, and the last few read
    are kept. A part that fails (damaged, truncated, another part's file, missing) is reported in one line, ignored,
    and removed; its molecules are computed again and written as a new part.

    Runs sharing the cache stay safe: a part is written under unique temporary names and renamed into place, its
    parquet before its sidecar, so a reader never indexes an unfinished part; every read checks the bytes it parses,
    so a part replaced or removed by another run meanwhile is either the same content (one name, one content) or
    reported and computed again, never a wrong answer. A damaged file is removed only while it is still the file
    that was read; at worst a run removes a sound part another run had just written, and its molecules are computed
    once more later.
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
        self.namespace = directory.name if directory is not None else ""
        self.schema = {**schema, CHECK: pl.Int64, "reason": pl.String}
        self.stems: list[str] = []
        self.sidecars: list[Identity] = []  # the sidecar read for each part
        keys = []
        sidecars = sorted(directory.glob("part-*.keys")) if directory and directory.is_dir() else []
        for path in sidecars:
            try:
                data, read = read_file(path)
                keys.append(part_keys(path.stem, data))
            except (OSError, DamagedPart) as exc:
                # what is read is the sidecar; its parquet, never indexed, goes too
                self._discard(
                    path, exc, {".keys": identity(path), ".parquet": identity(path.with_suffix(".parquet"))}
                )
                continue
            self.stems.append(path.stem)
            self.sidecars.append(read)
        self.index = PartIndex(keys)
        self.cache = PartCache(self._load, keep_parts)
        self.broken: set[int] = set()  # parts that failed to load: their molecules are computed again

    def _load(self, number: int) -> pl.DataFrame:
        path = self.directory / f"{self.stems[number]}.parquet"  # type: ignore[operator]
        read: Identity | None = None
        try:
            data, read = read_file(path)
            check_content(path.stem, self.namespace, data)
            return read_part(path, self.schema, data=data)
        except (OSError, DamagedPart, InputError) as exc:
            self._discard(path, exc, {".keys": self.sidecars[number], ".parquet": read})
            raise DamagedPart(str(exc)) from None

    def _discard(self, path: Path, problem: Exception, read: dict[str, Identity | None]) -> None:
        """Report a damaged part in one line and remove its files (``read``: by suffix, the file that was read)
        while they are still those files: the sidecar first, so that no run indexes the part meanwhile."""
        reason = (
            problem.strerror if isinstance(problem, OSError) and problem.strerror else first_line(problem)
        )
        log.warning("feature cache: ignoring %s: %s; its molecules are computed again", path, reason)
        for suffix in (".keys", ".parquet"):
            target = path.with_suffix(suffix)
            if read[suffix] is not None and identity(target) == read[suffix]:
                with contextlib.suppress(OSError):
                    target.unlink()

    def _part(self, number: int) -> pl.DataFrame | None:
        if number in self.broken:
            return None
        try:
            return self.cache.get(number)
        except DamagedPart:
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
        """Write ``frame`` as a part, unless a part with the same keys is there (written by another run, or read
        here and sound)."""
        if len(frame) == 0 or self.directory is None:
            return
        keys = keys_digest(frame[KEY].to_numpy().astype("<i8").tobytes())
        if any(self.directory.glob(f"part-{keys}-*.keys")):
            return
        stem, data, sidecar = encode_part(frame, self.namespace)
        for suffix, content in ((".parquet", data), (".keys", sidecar)):
            with atomic_file(self.directory / f"{stem}{suffix}") as tmp:
                tmp.write_bytes(content)
