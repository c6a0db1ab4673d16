"""The feature cache checks every part before use: a damaged or foreign part is reported in one line naming it,
ignored, and replaced by the recomputed part; the output is a run from scratch's, and the next run computes nothing.
Each damage here gave wrong features silently or was recomputed on every run before (bench/cache_corruption.py).

The expected digests are computed here from the layout's definition (sha256 of the keys and of the namespace and
the parquet bytes), not by the code under test."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest

from stages.featurize import feature_config, featurize_file
from stages.io import write_parquet
from tests.conftest import tree_hashes
from tests.test_bad_input import make_params, raw_frame

MOLECULES = 3000  # three batches of 1,000 rows: three parts of 1,000 molecules


@dataclass
class Sound:
    source: Path
    hashes: dict[str, str]  # of the output of a run from scratch
    cache: Path  # the cache that run left


@pytest.fixture(scope="module")
def sound(tmp_path_factory: pytest.TempPathFactory) -> Sound:
    """A run from scratch on 3,000 molecules; tests copy its cache before changing it."""
    tmp = tmp_path_factory.mktemp("sound")
    raw_frame(MOLECULES).write_parquet(tmp / "raw.parquet")
    featurize_file(tmp / "raw.parquet", tmp / "out", tmp / "rejects.csv", make_params(), True, tmp / "cache")
    return Sound(tmp / "raw.parquet", tree_hashes(tmp / "out"), tmp / "cache")


def featurize(sound: Sound, tmp_path: Path, cache: Path, name: str) -> tuple[dict, dict[str, str]]:
    out = tmp_path / name
    counts = featurize_file(sound.source, out, tmp_path / f"{name}-rejects.csv", make_params(), True, cache)
    return counts, tree_hashes(out)


def assert_sound_cache(root: Path) -> int:
    """Every part under ``root`` is whole and matches its name: its sidecar's keys hash to the first digest, the
    namespace and its parquet bytes to the second, its key column is the sidecar; no temporaries are left. The
    number of molecules held."""
    molecules = 0
    for namespace in (p for p in root.iterdir() if p.is_dir()):
        sidecars, parquets = sorted(namespace.glob("part-*.keys")), sorted(namespace.glob("part-*.parquet"))
        assert [p.stem for p in sidecars] == [p.stem for p in parquets]
        for sidecar in sidecars:
            _, keys_digest, content_digest = sidecar.stem.split("-")
            keys, data = sidecar.read_bytes(), sidecar.with_suffix(".parquet").read_bytes()
            assert hashlib.sha256(keys).hexdigest()[:24] == keys_digest
            assert hashlib.sha256(namespace.name.encode() + b"\n" + data).hexdigest() == content_digest
            column = pl.read_parquet(io.BytesIO(data))["molecule_key"].to_numpy()
            assert np.array_equal(column, np.frombuffer(keys, dtype="<i8"))
            molecules += len(column)
    assert not [p for p in root.rglob("*") if ".tmp-" in p.name]
    return molecules


def readable_flip(path: Path) -> bytes:
    """The part's bytes with one bit flipped in the column chunk of a descriptor: the last position of the chunk
    where polars and pyarrow both read the whole file without error, and other values."""
    data = path.read_bytes()
    metadata = pq.ParquetFile(path).metadata
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    chunk = metadata.row_group(0).column(names.index("MolWt"))
    start = chunk.dictionary_page_offset if chunk.has_dictionary_page else chunk.data_page_offset
    sound = pl.read_parquet(path)
    for position in range(start + chunk.total_compressed_size - 1, start, -1):
        damaged = bytearray(data)
        damaged[position] ^= 0x01
        try:
            frame = pl.read_parquet(io.BytesIO(damaged))
            pq.read_table(io.BytesIO(damaged))
        except Exception:  # the search moves on to the next position
            continue
        if not frame.equals(sound):
            return bytes(damaged)
    raise AssertionError(f"no readable one-bit flip in {path}")


def flip(part: Path, other: Path) -> None:
    before = pl.read_parquet(part)
    part.write_bytes(readable_flip(part))
    after = pl.read_parquet(part)  # without error, by both readers, and other values
    assert pq.read_table(part).num_rows == len(after) == len(before) and not after.equals(before)


def truncate(part: Path, other: Path) -> None:
    part.write_bytes(part.read_bytes()[: part.stat().st_size // 2])


def foreign(part: Path, other: Path) -> None:
    shutil.copyfile(other, part)


def flip_keys(part: Path, other: Path) -> None:
    sidecar = part.with_suffix(".keys")
    keys = bytearray(sidecar.read_bytes())
    keys[8 * 500] ^= 0x01
    sidecar.write_bytes(bytes(keys))


@pytest.mark.parametrize("damage", [flip, truncate, foreign, flip_keys], ids=lambda d: d.__name__)
def test_a_damaged_part_is_reported_once_replaced_and_never_used(
    sound: Sound, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: Callable[[Path, Path], None]
) -> None:
    cache = tmp_path / "cache"
    shutil.copytree(sound.cache, cache)
    other, part = sorted(cache.rglob("part-*.parquet"))[:2]
    damage(part, other)
    with caplog.at_level(logging.WARNING, logger="stages"):
        counts, hashes = featurize(sound, tmp_path, cache, "damaged")
    assert hashes == sound.hashes
    lines = caplog.text.splitlines()
    assert len(lines) == 1 and part.stem in lines[0], caplog.text  # the part named, once
    assert "Traceback" not in caplog.text and all(r.exc_info is None for r in caplog.records)
    assert (counts["computed"], counts["reused"]) == (1000, 2000)
    assert assert_sound_cache(cache) == MOLECULES
    assert part.exists()  # the same molecules, written again: the same name
    caplog.clear()
    counts, hashes = featurize(sound, tmp_path, cache, "next")
    assert (counts["computed"], counts["reused"]) == (0, MOLECULES) and hashes == sound.hashes
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text  # nothing to report


def test_a_cache_of_the_old_layout_is_never_read(sound: Sound, tmp_path: Path) -> None:
    """Layout 1's parts (named by their keys alone, no sidecar) in its namespace, and one in the new namespace,
    hold wrong features: none is read."""
    config = feature_config(make_params())
    old_namespace = hashlib.sha256(json.dumps(config.spec(), sort_keys=True).encode()).hexdigest()[:16]
    cache = tmp_path / "cache"
    (new_namespace,) = [p.name for p in sound.cache.iterdir()]
    for namespace in (old_namespace, new_namespace):
        for part in sorted(sound.cache.rglob("part-*.parquet")):
            wrong = pl.read_parquet(part).with_columns(pl.col("MolWt") + 1)
            digest = hashlib.sha256(wrong["molecule_key"].to_numpy().tobytes()).hexdigest()[:24]
            write_parquet(wrong, cache / namespace / f"part-{digest}.parquet")
    old = tree_hashes(cache)
    counts, hashes = featurize(sound, tmp_path, cache, "out")
    assert (counts["computed"], counts["reused"]) == (MOLECULES, 0) and hashes == sound.hashes
    assert old.items() <= tree_hashes(cache).items()  # left as they were
    assert sorted(p.name for p in (cache / new_namespace).glob("part-*.keys")) == sorted(
        p.name for p in sound.cache.rglob("part-*.keys")
    )


def test_part_index_finds_each_key_s_part_and_row():
    """Keys laid out by hand over three parts (one empty, a key in two parts: the first part's row wins), looked
    up in an order of their own with keys that are in no part; the index takes the list's arrays."""
    from stages.molecules import PartIndex

    parts = [np.array([40, 10, 30], np.int64), np.array([], np.int64), np.array([20, 10, 2**62], np.int64)]
    index = PartIndex(parts)
    assert parts == [] and len(index) == 6
    wanted = np.array([2**62, 10, 5, 30, 20, 41, 40], np.int64)
    found, part, row = index.locate(wanted)
    assert found.tolist() == [True, True, False, True, True, False, True]
    assert [(int(p), int(r)) for p, r, f in zip(part, row, found, strict=True) if f] == [
        (2, 2),
        (0, 1),
        (0, 2),
        (2, 0),
        (0, 0),
    ]
    empty = PartIndex([])
    assert not empty.locate(np.array([1], np.int64))[0].any()
