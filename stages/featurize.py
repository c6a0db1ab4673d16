"""Featurize BELKA rows: clean the SMILES, compute RDKit features once per unique molecule, on every core.

Output (a directory, written atomically):

- ``rows/part-NNNNN.parquet``: one row per valid input row: id, molecule_key, protein_name, binds (null for test),
  and keys of the three building blocks. No SMILES.
- ``molecules/part-NNNNN.parquet``: one row per unique molecule, in order of first appearance (part N holds the
  molecules first seen in input batch N): molecule_key, mw, hbd, hba and the bit-packed Morgan fingerprint ``fp``.
- ``manifest.json``: counts and the feature configuration.

Rejected rows (invalid SMILES and the like) go to a separate CSV with the reason; the stage fails only when they
exceed ``featurize.max_reject_fraction``.

The input is streamed in batches of ``featurize.batch_rows``; memory is bounded by the batch size and the worker
count, plus 8 bytes per unique molecule for the set of molecules already seen. Molecules computed before (by an
earlier run, a killed run, or a run on fewer rows) are read from the feature cache (``resources.feature_cache``),
keyed by the cleaned SMILES, the feature configuration, RDKit's version and this code, so only new molecules are
computed. The output does not depend on what the cache held: a rerun is byte-identical to a run from scratch.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import polars as pl
import rdkit

from stages import chem
from stages.dataset import BB_KEYS, KEY, PartCache, PartIndex
from stages.io import (
    BB_COLUMNS,
    BINDS,
    ID,
    PROTEIN,
    SMILES,
    InputError,
    Progress,
    atomic_dir,
    iter_raw_batches,
    raw_columns,
    raw_row_count,
    run_main,
    setup_logging,
    shard_name,
    write_csv,
    write_json,
    write_parquet,
)
from stages.params import Params, load_params, workers

log = logging.getLogger("stages.featurize")

ROW_SCHEMA = {
    ID: pl.Int64,
    KEY: pl.Int64,
    PROTEIN: pl.String,
    BINDS: pl.Int8,
    **dict.fromkeys(BB_KEYS, pl.Int64),
}
REJECT_SCHEMA = {ID: pl.Int64, PROTEIN: pl.String, SMILES: pl.String, "reason": pl.String}
FEATURES_VERSION = 1


def feature_config(params: Params) -> chem.FeatureConfig:
    fp = params.featurize.fingerprint
    return chem.FeatureConfig(fingerprint=fp.enabled, radius=fp.radius, n_bits=fp.n_bits)


def molecule_schema(config: chem.FeatureConfig) -> dict[str, pl.DataType]:
    schema = {KEY: pl.Int64, "mw": pl.Float64, "hbd": pl.Int16, "hba": pl.Int16}
    if config.fingerprint:
        schema["fp"] = pl.Binary
    return schema


# ---------------------------------------------------------------------------------------------- pure logic


class KeySet:
    """A growing set of int64 keys in sorted numpy arrays: 8 bytes a key, vectorised membership tests."""

    def __init__(self) -> None:
        self.main = np.empty(0, dtype=np.int64)
        self.recent: list[np.ndarray] = []
        self.recent_size = 0

    def __len__(self) -> int:
        return len(self.main) + self.recent_size

    def contains(self, keys: np.ndarray) -> np.ndarray:
        found = _isin_sorted(keys, self.main)
        for block in self.recent:
            found |= _isin_sorted(keys, block)
        return found

    def add(self, keys: np.ndarray) -> None:
        """Add keys that are not in the set yet (callers filter with ``contains`` first): no deduplication, so a
        merge costs one sorted copy, not the three temporaries of ``np.union1d``."""
        if len(keys) == 0:
            return
        self.recent.append(np.sort(keys))
        self.recent_size += len(keys)
        if len(self.recent) > 16 or self.recent_size > max(1 << 20, len(self.main) // 4):
            self.main = np.concatenate([self.main, *self.recent])  # the old arrays go before the sort
            self.recent, self.recent_size = [], 0
            self.main.sort()


def _isin_sorted(keys: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    if len(sorted_keys) == 0:
        return np.zeros(len(keys), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    return sorted_keys[pos] == keys


def check_batch(batch: pl.DataFrame, source: str, needs_binds: bool) -> None:
    """Errors that make a whole file unusable (rather than one row): they name the file, column and rows."""
    bad_protein = batch.filter(pl.col(PROTEIN).is_null() | (pl.col(PROTEIN).str.strip_chars() == ""))
    if len(bad_protein):
        raise InputError(f"{source}: column 'protein_name' is empty for id(s) {_ids(bad_protein)}")
    if batch[ID].null_count():
        raise InputError(f"{source}: column 'id' has {batch[ID].null_count()} null value(s)")
    if needs_binds:
        bad = batch.filter(pl.col(BINDS).is_null() | ~pl.col(BINDS).is_in([0, 1]))
        if len(bad):
            values = sorted({str(v) for v in bad[BINDS].to_list()})
            raise InputError(
                f"{source}: column 'binds' must be 0 or 1, found {', '.join(values)} for id(s) {_ids(bad)}"
            )


def _ids(frame: pl.DataFrame, limit: int = 5) -> str:
    ids = frame[ID].head(limit).to_list()
    more = f" and {len(frame) - limit} more" if len(frame) > limit else ""
    return ", ".join(map(str, ids)) + more


class DuplicateIds:
    """Detects duplicate ids in O(1) memory while ids increase (Kaggle's do), with a KeySet otherwise."""

    def __init__(self, source: str) -> None:
        self.source, self.last, self.keys = source, None, None

    def check(self, ids: np.ndarray) -> None:
        if self.keys is None and (self.last is None or ids[0] > self.last) and np.all(np.diff(ids) > 0):
            self.last = int(ids[-1])
            return
        if self.keys is None:
            log.debug("%s: ids are not increasing; keeping a set of ids to find duplicates", self.source)
            self.keys = KeySet()
            if self.last is not None:
                raise InputError(
                    f"{self.source}: ids are not in increasing order after id {self.last}; "
                    "sort the file by id (duplicate ids are not allowed)"
                )
        uniq, counts = np.unique(ids, return_counts=True)
        dup = uniq[counts > 1]
        if len(dup) == 0:
            dup = uniq[self.keys.contains(uniq)]
        if len(dup):
            raise InputError(f"{self.source}: duplicate id(s) {', '.join(map(str, dup[:5].tolist()))}")
        self.keys.add(uniq)


def clean_batch(batch: pl.DataFrame, max_length: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a raw batch into (valid rows with ``cleaned`` SMILES and keys, rejected rows with a reason)."""
    cleaned, reason = chem.clean_smiles_expr(pl.col(SMILES), max_length)
    batch = batch.with_columns(cleaned.alias("cleaned"), reason.alias("reason"))
    rejects = batch.filter(pl.col("reason").is_not_null()).select(list(REJECT_SCHEMA))
    valid = batch.filter(pl.col("reason").is_null()).drop("reason")
    valid = valid.with_columns(
        chem.keys_of(valid["cleaned"]).alias(KEY),
        *(chem.keys_of(valid[bb]).alias(k) for bb, k in zip(BB_COLUMNS, BB_KEYS, strict=True)),
    )
    return valid, rejects


def row_frame(valid: pl.DataFrame) -> pl.DataFrame:
    binds = pl.col(BINDS) if BINDS in valid.columns else pl.lit(None)
    return valid.select(pl.col(ID), pl.col(KEY), pl.col(PROTEIN), binds.alias(BINDS), *BB_KEYS).cast(
        ROW_SCHEMA
    )


def feature_frame(keys: np.ndarray, batch: chem.FeatureBatch, config: chem.FeatureConfig) -> pl.DataFrame:
    columns = {KEY: keys, "mw": batch.mw, "hbd": batch.hbd, "hba": batch.hba}
    if config.fingerprint:
        columns["fp"] = [row.tobytes() for row in batch.fp]
    frame = pl.DataFrame(columns, schema=molecule_schema(config))
    return frame.with_columns(pl.Series("reason", batch.reasons, dtype=pl.String))


# ---------------------------------------------------------------------------------------------- the cache


def cache_namespace(config: chem.FeatureConfig, max_length: int) -> str:
    """Features depend on the configuration, RDKit's version and the chemistry code: all go in the key."""
    digest = hashlib.sha256()
    digest.update(json.dumps([FEATURES_VERSION, config.__dict__, max_length, rdkit.__version__]).encode())
    digest.update(Path(chem.__file__).read_bytes())
    return digest.hexdigest()[:16]


class FeatureCache:
    """Immutable parquet parts of computed molecule features (key, features, reason), content-addressed.

    What the cache held at start is indexed (16 bytes a molecule); a part is read when one of its molecules is
    needed, and the last few read are kept. A damaged part is ignored: its molecules are computed again.
    """

    def __init__(self, directory: Path, schema: dict[str, pl.DataType], keep_parts: int = 4) -> None:
        self.directory = directory
        self.schema = {**schema, "reason": pl.String}
        self.parts = sorted(directory.glob("part-*.parquet")) if directory.is_dir() else []
        self.index = PartIndex(self.parts, skip_unreadable=True)
        self.cache = PartCache(
            lambda number: pl.read_parquet(self.parts[number]).cast(self.schema), keep_parts
        )

    def __len__(self) -> int:
        return len(self.index)

    def lookup(self, keys: np.ndarray) -> tuple[pl.DataFrame, np.ndarray]:
        """Features of the cached ones among ``keys`` (grouped by part) and a mask of which were cached."""
        found, owner, row = self.index.locate(keys)
        frames = [
            self.cache.get(int(number))[row[found & (owner == number)]] for number in np.unique(owner[found])
        ]
        frame = pl.concat(frames) if frames else pl.DataFrame(schema=self.schema)
        return frame, found

    def add(self, frame: pl.DataFrame) -> None:
        if len(frame) == 0:
            return
        digest = hashlib.sha256(frame[KEY].to_numpy().tobytes()).hexdigest()[:24]
        path = self.directory / f"part-{digest}.parquet"
        if not path.exists():
            write_parquet(frame, path)


# ---------------------------------------------------------------------------------------------- workers


class FeatureWorkers:
    """RDKit work on a process pool; small jobs run in-process, where starting processes would cost more."""

    SMALL = 2_000

    def __init__(self, n_workers: int, config: chem.FeatureConfig) -> None:
        self.n_workers, self.config = n_workers, config
        self.executor: ProcessPoolExecutor | None = None

    def submit(self, cleaned: list[str]) -> Callable[[], chem.FeatureBatch]:
        """Start computing; returns a function that waits for the result. The pool works on what was submitted
        while the caller prepares or writes other batches, so it does not idle at batch boundaries."""
        if self.n_workers <= 1 or len(cleaned) < self.SMALL:
            return lambda: chem.featurize_smiles(cleaned, self.config)
        if self.executor is None:
            self.executor = ProcessPoolExecutor(self.n_workers, mp_context=get_context("spawn"))
        size = max(250, math.ceil(len(cleaned) / (self.n_workers * 8)))
        futures = [
            self.executor.submit(chem.featurize_smiles, cleaned[i : i + size], self.config)
            for i in range(0, len(cleaned), size)
        ]

        def result() -> chem.FeatureBatch:
            parts = [future.result() for future in futures]
            return chem.FeatureBatch(
                mw=np.concatenate([p.mw for p in parts]),
                hbd=np.concatenate([p.hbd for p in parts]),
                hba=np.concatenate([p.hba for p in parts]),
                fp=np.concatenate([p.fp for p in parts]),
                reasons=[r for p in parts for r in p.reasons],
            )

        return result

    def close(self) -> None:
        if self.executor is not None:
            self.executor.shutdown(cancel_futures=True)


# ---------------------------------------------------------------------------------------------- the run


def featurize_file(
    source: Path,
    output: Path,
    rejects_path: Path,
    params: Params,
    needs_binds: bool,
    cache_dir: Path | None = None,
) -> dict:
    settings = params.featurize
    config = feature_config(params)
    schema = molecule_schema(config)
    namespace = cache_namespace(config, settings.max_smiles_length)
    cache = FeatureCache(Path(cache_dir or params.resources.feature_cache) / namespace, schema)
    pool = FeatureWorkers(workers(params), config)
    seen = KeySet()
    duplicates = DuplicateIds(str(source))
    counts = {"rows": 0, "molecules": 0, "rejected_rows": 0, "reused": 0, "computed": 0}
    all_rejects: list[pl.DataFrame] = []
    progress = Progress(f"featurize {source}", raw_row_count(source))
    try:
        with atomic_dir(output) as tmp:
            (tmp / "rows").mkdir()
            (tmp / "molecules").mkdir()
            pending = None  # the batch whose molecules the pool is computing

            def finish(number: int, n_rows: int, valid: pl.DataFrame, rejects: pl.DataFrame, job) -> None:
                molecules, chem_rejects = _finish_molecules(job, cache, config, counts)
                if chem_rejects is not None:
                    bad = valid.join(chem_rejects, on=KEY, how="semi")
                    rejects = pl.concat([rejects, _reject_rows(bad, chem_rejects)])
                    valid = valid.join(chem_rejects, on=KEY, how="anti")
                if len(rejects):
                    all_rejects.append(rejects.sort(ID))
                write_parquet(row_frame(valid), tmp / "rows" / shard_name(number))
                write_parquet(molecules, tmp / "molecules" / shard_name(number))
                counts["rows"] += n_rows
                counts["rejected_rows"] += len(rejects)
                counts["molecules"] += len(molecules)
                progress.update(n_rows)

            for number, batch in enumerate(iter_raw_batches(source, settings.batch_rows, needs_binds)):
                check_batch(batch, str(source), needs_binds)
                duplicates.check(batch[ID].to_numpy())
                valid, rejects = clean_batch(batch, settings.max_smiles_length)
                job = _start_molecules(valid, seen, cache, pool)
                if pending is not None:
                    finish(*pending)  # while the pool computes this batch's molecules
                pending = (number, len(batch), valid, rejects, job)
            if pending is not None:
                finish(*pending)
            rejected = pl.concat(all_rejects).sort(ID) if all_rejects else pl.DataFrame(schema=REJECT_SCHEMA)
            write_csv(rejected, rejects_path)
            fraction = counts["rejected_rows"] / max(counts["rows"], 1)
            if fraction > settings.max_reject_fraction:
                reasons = rejected.group_by("reason").len().sort("len", descending=True).head(3)
                summary = "; ".join(f"{r} ({n})" for r, n in reasons.iter_rows())
                raise InputError(
                    f"{source}: {counts['rejected_rows']} of {counts['rows']} rows rejected ({fraction:.2%}), more "
                    f"than featurize.max_reject_fraction={settings.max_reject_fraction}; see {rejects_path} "
                    f"(most common: {summary})"
                )
            manifest = {
                "source": str(source),
                "rows": counts["rows"] - counts["rejected_rows"],
                "rejected_rows": counts["rejected_rows"],
                "molecules": counts["molecules"],
                "fingerprint": config.__dict__,
                "descriptors": list(chem.DESCRIPTORS),
                "labelled": needs_binds,
            }
            write_json(tmp / "manifest.json", manifest)
    finally:
        pool.close()
    progress.finish()
    log.info(
        "%s: %d rows, %d unique molecules: %d reused from the feature cache, %d computed; %d rows rejected",
        source,
        counts["rows"],
        counts["molecules"],
        counts["reused"],
        counts["computed"],
        counts["rejected_rows"],
    )
    return counts


def _start_molecules(valid: pl.DataFrame, seen: KeySet, cache: FeatureCache, pool: FeatureWorkers) -> tuple:
    """Find the molecules first seen in a batch, look them up in the cache, submit the rest to the pool."""
    unique = valid.select(KEY, "cleaned").unique(KEY, keep="first", maintain_order=True)
    unique = unique.filter(~pl.Series(seen.contains(unique[KEY].to_numpy())))
    keys = unique[KEY].to_numpy()
    seen.add(keys)
    cached, found = cache.lookup(keys)
    todo = unique.filter(pl.Series(~found)).select(KEY, "cleaned")
    return unique.select(KEY), cached, found, todo[KEY].to_numpy(), pool.submit(todo["cleaned"].to_list())


def _finish_molecules(
    job: tuple, cache: FeatureCache, config: chem.FeatureConfig, counts: dict[str, int]
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """Features of the molecules first seen in a batch, in order of first appearance; the rejected ones."""
    unique, cached, found, todo_keys, result = job
    computed = feature_frame(todo_keys, result(), config)
    cache.add(computed)
    counts["reused"] += int(found.sum())
    counts["computed"] += len(todo_keys)
    merged = unique.join(pl.concat([cached, computed]), on=KEY, how="left", maintain_order="left")
    failed = merged.filter(pl.col("reason").is_not_null()).select(KEY, "reason")
    molecules = merged.filter(pl.col("reason").is_null()).drop("reason")
    return molecules, (failed if len(failed) else None)


def _reject_rows(rows: pl.DataFrame, reasons: pl.DataFrame) -> pl.DataFrame:
    return rows.join(reasons, on=KEY, how="left").select(list(REJECT_SCHEMA))


def default_paths(split: str, params: Params) -> tuple[Path, Path, Path]:
    source = Path(getattr(params.inputs, split))
    return source, Path("data/features") / split, Path("data/features") / f"{split}-rejects.csv"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.featurize",
        description="Featurize a BELKA-format file: clean SMILES, RDKit features once per unique molecule.",
    )
    parser.add_argument(
        "--split", choices=("train", "test"), help="use inputs.<split> and data/features/<split>"
    )
    parser.add_argument(
        "--input", type=Path, help="a BELKA-format parquet file, directory of parquet, or csv"
    )
    parser.add_argument("--output", type=Path, help="the output directory (written atomically)")
    parser.add_argument("--rejects", type=Path, help="CSV of rejected rows (default: <output>-rejects.csv)")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--cache", type=Path, help="feature cache directory (default: resources.feature_cache)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.split is None and (args.input is None or args.output is None):
        parser.error("give --split, or both --input and --output")

    def body() -> None:
        params = load_params(args.params)
        source, output, rejects = default_paths(args.split, params) if args.split else (None, None, None)
        source = args.input or source
        output = args.output or output
        rejects = args.rejects or rejects or output.with_name(output.name + "-rejects.csv")
        needs_binds = args.split == "train" if args.split else BINDS in raw_columns(source)
        featurize_file(source, output, rejects, params, needs_binds, args.cache)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
