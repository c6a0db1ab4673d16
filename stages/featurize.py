"""Featurize BELKA rows: clean the SMILES, compute RDKit features once per unique molecule, on every core.

Output (a directory, written atomically):

- ``rows/part-NNNNN.parquet``: one row per valid input row: id, molecule_key, protein_name, binds (null for test),
  and keys of the three building blocks. No SMILES.
- ``molecules/part-NNNNN.parquet``: one row per unique molecule, in order of first appearance (part N holds the
  molecules first seen in input batch N): molecule_key, one float column per ``featurize.descriptors`` name and
  the bit-packed Morgan fingerprint ``fp``.
- ``manifest.json``: counts and the feature spec (``features.FeatureConfig.spec``).

Rejected rows (invalid SMILES and the like) go to a separate CSV with the reason; the stage fails only when they
exceed ``featurize.max_reject_fraction``. A problem of the file rather than of one row (a missing column, a null id,
building block, protein or label, a label that is not 0 or 1, a repeated id) stops the stage before any work
(``io.check_raw_input``); one molecule and protein labelled both 0 and 1 stops it once the rows are written.

The input is streamed in batches of ``featurize.batch_rows``; memory is bounded by the batch size and the worker
count, plus 16 bytes per unique molecule for the set of molecules already seen (key and check hash, ``KeySet``).
Molecules computed before (by an earlier run, a killed run, or a run on fewer rows) are read from the feature
cache (``resources.feature_cache``), keyed by the cleaned SMILES and the feature spec (settings, RDKit's version,
the feature version), so only new molecules are computed. The output does not depend on what the cache held: a rerun is byte-identical to a run from scratch.
"""

from __future__ import annotations

import argparse
import logging
import math
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from stages import chem, engine, features
from stages.cli import progress, run_main, setup_logging
from stages.dataset import BB_KEYS, KEY, find_sorted
from stages.io import (
    BB_COLUMNS,
    BINDS,
    ID,
    PROTEIN,
    SMILES,
    InputError,
    atomic_dir,
    iter_raw_batches,
    raw_columns,
    raw_row_count,
    shard_name,
    write_csv,
    write_json,
    write_parquet,
)
from stages.molecules import CHECK, FeatureCache, cache_namespace, feature_frame, molecule_schema
from stages.params import Params, feature_cache_dir, load_params, workers

if TYPE_CHECKING:
    from tqdm import tqdm

log = logging.getLogger("stages.featurize")

ROW_SCHEMA = {
    ID: pl.Int64,
    KEY: pl.Int64,
    PROTEIN: pl.String,
    BINDS: pl.Int8,
    **dict.fromkeys(BB_KEYS, pl.Int64),
}
REJECT_SCHEMA = {ID: pl.Int64, PROTEIN: pl.String, SMILES: pl.String, "reason": pl.String}


class KeyCollisionError(InputError):
    """Two different molecules have the same 63-bit key: stop rather than merge their features."""


def feature_config(params: Params) -> features.FeatureConfig:
    settings = params.featurize
    return features.FeatureConfig(
        descriptors=tuple(settings.descriptors),
        fingerprint=features.FingerprintConfig(
            type=settings.fingerprint.type,
            radius=settings.fingerprint.radius,
            n_bits=settings.fingerprint.n_bits,
            chirality=settings.fingerprint.chirality,
        ),
        max_smiles_length=settings.max_smiles_length,
    )


@dataclass(frozen=True)
class Options:
    """How to featurize one file: what shapes the output (``config``, ``batch_rows``) and what does not."""

    config: features.FeatureConfig
    batch_rows: int
    max_reject_fraction: float = 1.0
    workers: int = 1
    cache_dir: Path | None = None  # None: no feature cache
    engine: str = "local"  # local | dask: where RDKit runs (the output is the same)
    worker_wait: float | None = None  # dask: seconds without workers before failing (None: engine's default)


def options(params: Params, cache_dir: Path | None = None) -> Options:
    return Options(
        config=feature_config(params),
        batch_rows=params.featurize.batch_rows,
        max_reject_fraction=params.featurize.max_reject_fraction,
        workers=workers(params),
        cache_dir=Path(cache_dir) if cache_dir else feature_cache_dir(params),
        engine=params.resources.engine,
        worker_wait=params.resources.worker_wait,
    )


# ---------------------------------------------------------------------------------------------- pure logic


def merge_runs(
    older: tuple[np.ndarray, np.ndarray], newer: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Two sorted runs of distinct keys (no key in both), with their values, as one sorted run. numpy's stable
    sort is timsort, which finds the two runs of the concatenation and merges them in one linear pass."""
    keys = np.concatenate([older[0], newer[0]])
    values = np.concatenate([older[1], newer[1]])
    order = np.argsort(keys, kind="stable")
    return keys[order], values[order]


class KeySet:
    """A growing set of int64 keys, each with an int64 value, in sorted numpy arrays: vectorised look-ups,
    16 bytes a key. Featurize keeps each molecule's check hash as its value.

    The keys lie in sorted runs, each more than twice the size of the next (a log-structured merge): adding m
    keys sorts those m into a new run, then merges the newest run into the one before it while that one is at
    most twice as large. So there are at most log2(keys) + 1 runs, each key is merged about log2(keys / batch)
    times, each merge is one linear pass over two runs, n keys added in batches cost O(n log(n / batch)), and
    nothing the set holds is ever sorted again. A look-up sorts its keys once and binary-searches each run."""

    def __init__(self) -> None:
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []  # (keys, values), oldest (largest) first
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, value of each found key; 0 where not found)."""
        order = np.argsort(keys)
        ordered = np.asarray(keys, dtype=np.int64)[order]  # sorted queries: cache-friendly binary searches
        found = np.zeros(len(keys), dtype=bool)
        values = np.zeros(len(keys), dtype=np.int64)
        for run_keys, run_values in self.runs:
            hit, pos = find_sorted(ordered, run_keys)
            found[order[hit]] = True
            values[order[hit]] = run_values[pos[hit]]
        return found, values

    def contains(self, keys: np.ndarray) -> np.ndarray:
        return self.lookup(keys)[0]

    def add(self, keys: np.ndarray, values: np.ndarray | None = None) -> None:
        """Add keys that are not in the set yet (callers filter with ``lookup`` first): no deduplication."""
        if len(keys) == 0:
            return
        values = np.zeros(len(keys), dtype=np.int64) if values is None else np.asarray(values, dtype=np.int64)
        order = np.argsort(keys, kind="stable")
        run = (np.asarray(keys, dtype=np.int64)[order], values[order])
        self.size += len(keys)
        while self.runs and len(self.runs[-1][0]) <= 2 * len(run[0]):
            run = merge_runs(self.runs.pop(), run)
        self.runs.append(run)


def check_labels(rows_dir: Path, source: str) -> None:
    """One molecule (after cleaning) must not be labelled both 0 and 1 for one protein, for instance after rows
    were appended. Read from the rows written so far: the positive (molecule, protein) pairs are held in memory
    (0.54% of BELKA's rows), the negatives streamed against them. The same pair twice with one label is kept
    (each row is a measurement)."""
    rows = pl.scan_parquet(rows_dir / "*.parquet").select(ID, KEY, PROTEIN, BINDS)
    positives = rows.filter(pl.col(BINDS) == 1).select(KEY, PROTEIN).unique()
    conflicts = (
        rows.filter(pl.col(BINDS) == 0)
        .join(positives, on=[KEY, PROTEIN], how="semi")
        .collect(engine="streaming")
    )
    if len(conflicts) == 0:
        return
    first = conflicts.sort(ID).row(0, named=True)
    positive_id = (
        rows.filter((pl.col(KEY) == first[KEY]) & (pl.col(PROTEIN) == first[PROTEIN]) & (pl.col(BINDS) == 1))
        .select(pl.col(ID).min())
        .collect()
        .item()
    )
    pairs = conflicts.select(KEY, PROTEIN).n_unique()
    raise InputError(
        f"{source}: column 'binds' must give one label to a molecule and protein, found 0 at id {first[ID]} and 1 at "
        f"id {positive_id} for the same molecule with {first[PROTEIN]} ({pairs} molecule-protein pair(s) labelled "
        "both ways; remove or reconcile the conflicting rows)"
    )


def clean_batch(batch: pl.DataFrame, max_length: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Split a raw batch into (valid rows with ``cleaned`` SMILES, keys and check hashes, rejected rows with a
    reason)."""
    cleaned, reason = chem.clean_smiles_expr(pl.col(SMILES), max_length)
    batch = batch.with_columns(cleaned.alias("cleaned"), reason.alias("reason"))
    rejects = batch.filter(pl.col("reason").is_not_null()).select(list(REJECT_SCHEMA))
    valid = batch.filter(pl.col("reason").is_null()).drop("reason")
    hashes = chem.keys_of(valid["cleaned"], check=True)
    valid = valid.with_columns(
        hashes["key"].alias(KEY),
        hashes["check"].alias(CHECK),
        *(chem.keys_of(valid[bb])["key"].alias(k) for bb, k in zip(BB_COLUMNS, BB_KEYS, strict=True)),
    )
    return valid, rejects


def new_molecules(valid: pl.DataFrame, seen: KeySet) -> pl.DataFrame:
    """The molecules of a batch not seen in earlier batches (key, check, cleaned), in order of first appearance,
    added to ``seen``. Two different molecules with one key, in this batch or against an earlier one, raise."""
    unique = valid.select(KEY, CHECK, "cleaned").unique("cleaned", keep="first", maintain_order=True)
    clash = unique.filter(pl.col(KEY).is_duplicated())
    if len(clash):
        _collision(clash[KEY][0], clash["cleaned"][0], f"and {clash['cleaned'][1]!r} in the same batch")
    found, checks = seen.lookup(unique[KEY].to_numpy())
    clash_mask = found & (checks != unique[CHECK].to_numpy())
    if clash_mask.any():
        row = unique.filter(pl.Series(clash_mask)).row(0, named=True)
        _collision(row[KEY], row["cleaned"], "and a different molecule seen in an earlier batch")
    unique = unique.filter(pl.Series(~found))
    seen.add(unique[KEY].to_numpy(), unique[CHECK].to_numpy())
    return unique


def _collision(key: int, smiles: str, other: str) -> None:
    raise KeyCollisionError(
        f"molecule_key {key} is the 63-bit hash of {smiles!r} {other}: two molecules cannot share a key, so the "
        "run stops instead of merging their features (a 1-in-2,000 event at full BELKA's size; report it)"
    )


def row_frame(valid: pl.DataFrame) -> pl.DataFrame:
    binds = pl.col(BINDS) if BINDS in valid.columns else pl.lit(None)
    return valid.select(pl.col(ID), pl.col(KEY), pl.col(PROTEIN), binds.alias(BINDS), *BB_KEYS).cast(
        ROW_SCHEMA
    )


# ---------------------------------------------------------------------------------------------- workers


@dataclass
class PendingFeatures:
    """Features of a batch's new molecules, being computed: the pool's futures of its chunks (joined in order),
    or the molecules themselves when they are computed in this process, on demand."""

    config: features.FeatureConfig
    futures: list[Future] = field(default_factory=list)
    in_process: list[str] = field(default_factory=list)

    def result(self) -> features.FeatureBatch:
        if not self.futures:
            return chem.featurize_smiles(self.in_process, self.config)
        return features.FeatureBatch.concat([future.result() for future in self.futures])


class FeatureWorkers:
    """Maps :func:`chem.featurize_smiles` over chunks of a batch's new molecules through an executor (the local
    process pool or Dask's); the chunks' results are joined in submission order. Only strings go out and arrays
    come back. On the local engine, small jobs run in-process, where starting processes would cost more."""

    SMALL = 2_000

    def __init__(
        self, pool: Executor | None, n_workers: int, config: features.FeatureConfig, always: bool
    ) -> None:
        self.pool, self.n_workers, self.config, self.always = pool, n_workers, config, always

    def submit(self, cleaned: list[str]) -> PendingFeatures:
        """Start computing. The pool works on what was submitted while the caller prepares or writes other
        batches, so it does not idle at batch boundaries."""
        if self.pool is None or not cleaned or (not self.always and len(cleaned) < self.SMALL):
            return PendingFeatures(self.config, in_process=cleaned)
        size = max(250, math.ceil(len(cleaned) / (self.n_workers * 8)))
        futures = [
            self.pool.submit(chem.featurize_smiles, cleaned[i : i + size], self.config)
            for i in range(0, len(cleaned), size)
        ]
        return PendingFeatures(self.config, futures=futures)


# ---------------------------------------------------------------------------------------------- the run


class Counts(dict):
    """What a run did. ``unique`` molecules = ``reused`` + ``computed``; of them ``rejected_molecules`` failed in
    RDKit and the rest (``molecules``) are written."""

    def __init__(self) -> None:
        super().__init__(
            rows=0, rejected_rows=0, unique=0, reused=0, computed=0, rejected_molecules=0, molecules=0
        )


def featurize_file(
    source: Path,
    output: Path,
    rejects_path: Path,
    params: Params,
    needs_binds: bool,
    cache_dir: Path | None = None,
) -> dict:
    """Featurize a BELKA-format file with the settings of ``params`` (see :func:`featurize`)."""
    return featurize(source, output, rejects_path, options(params, cache_dir), needs_binds)


def check_paths(source: Path, output: Path, rejects_path: Path) -> None:
    """The outputs replace what is at their paths when complete: neither may be, hold or lie in the input."""
    raw = Path(source).resolve()
    for target in (Path(output), Path(rejects_path)):
        written = target.resolve()
        if written == raw or raw.is_relative_to(written) or written.is_relative_to(raw):
            raise InputError(
                f"{target}: an output path that overlaps the input {source} (it would replace or join the input); "
                "choose an output outside it"
            )


def featurize(source: Path, output: Path, rejects_path: Path, opts: Options, needs_binds: bool) -> dict:
    check_paths(source, output, rejects_path)
    config = opts.config
    cache_dir = opts.cache_dir / cache_namespace(config) if opts.cache_dir else None
    cache = FeatureCache(cache_dir, molecule_schema(config))
    with engine.executor(opts.engine, opts.workers, opts.worker_wait) as pool:
        rows = raw_row_count(source)
        if isinstance(pool, engine.LazyProcessPool) and (rows is None or rows >= 3 * FeatureWorkers.SMALL):
            pool.warm_up(chem.warm_up, config)
        rdkit_work = FeatureWorkers(pool, opts.workers, config, always=opts.engine == "dask")
        return _featurize(source, output, rejects_path, opts, needs_binds, cache, rdkit_work, rows)


def _featurize(
    source: Path,
    output: Path,
    rejects_path: Path,
    opts: Options,
    needs_binds: bool,
    cache: FeatureCache,
    pool: FeatureWorkers,
    total_rows: int | None,
) -> dict:
    config = opts.config
    seen = KeySet()
    bar = progress(f"featurize {source}", total_rows)
    try:
        with atomic_dir(output) as tmp:
            (tmp / "rows").mkdir()
            (tmp / "molecules").mkdir()
            run = RunState(tmp, cache, config, bar)
            pending: PendingBatch | None = None  # the batch whose molecules the pool is computing
            for number, batch in enumerate(iter_raw_batches(source, opts.batch_rows, needs_binds)):
                valid, rejects = clean_batch(batch, config.max_smiles_length)
                job = start_molecules(new_molecules(valid, seen), cache, pool)
                if pending is not None:
                    run.finish(pending)  # while the pool computes this batch's molecules
                pending = PendingBatch(number, len(batch), valid, rejects, job)
            if pending is not None:
                run.finish(pending)
            if needs_binds:
                check_labels(tmp / "rows", str(source))
            counts = run.counts
            rejected = run.all_rejects()
            write_csv(rejected, rejects_path)
            _check_reject_fraction(source, rejects_path, rejected, counts, opts.max_reject_fraction)
            manifest = {
                "source": str(source),
                "rows": counts["rows"] - counts["rejected_rows"],
                "rejected_rows": counts["rejected_rows"],
                "molecules": counts["molecules"],
                "features": config.spec(),
                "labelled": needs_binds,
            }
            write_json(tmp / "manifest.json", manifest)
    finally:
        bar.close()
    log.info(
        "%s: %d rows, %d unique molecules (%d reused from the feature cache, %d computed); "
        "%d molecules and %d rows rejected",
        source,
        counts["rows"],
        counts["unique"],
        counts["reused"],
        counts["computed"],
        counts["rejected_molecules"],
        counts["rejected_rows"],
    )
    return counts


@dataclass
class MoleculeJob:
    """The molecules first seen in one batch, on their way to features: those found in the feature cache, and
    the computation of the others."""

    keys: pl.DataFrame  # molecule_key of every new molecule, in order of first appearance
    cached: pl.DataFrame  # the cache's rows for the ones it holds (key, check, features, reason)
    found: np.ndarray  # bool per new molecule: held by the cache
    computing: pl.DataFrame  # key, check of the others
    features: PendingFeatures  # their features, being computed


@dataclass
class PendingBatch:
    """A batch read and cleaned, waiting for its new molecules' features before its shards are written."""

    number: int
    rows: int  # input rows, rejected ones included
    valid: pl.DataFrame
    rejects: pl.DataFrame
    job: MoleculeJob


@dataclass
class MoleculeShard:
    """A batch's new molecules with features (written), and those RDKit rejected (key, reason)."""

    molecules: pl.DataFrame
    rejected: pl.DataFrame


@dataclass
class RunState:
    """What a run carries from batch to batch while it writes the shards in order: the counts, the rejected rows
    so far, and the molecules RDKit rejected (their rows in later batches are rejected too)."""

    directory: Path  # the output being written (temporary until the run succeeds)
    cache: FeatureCache
    config: features.FeatureConfig
    bar: tqdm  # progress, advanced by each batch's input rows
    counts: Counts = field(default_factory=Counts)
    rejected_molecules: pl.DataFrame = field(
        default_factory=lambda: pl.DataFrame(schema={KEY: pl.Int64, "reason": pl.String})
    )
    rejects: list[pl.DataFrame] = field(default_factory=list)

    def finish(self, batch: PendingBatch) -> None:
        """Wait for a batch's molecules, then write its rows shard and molecules shard."""
        shard = finish_molecules(batch.job, self.cache, self.config, self.counts)
        if len(shard.rejected):
            self.rejected_molecules = pl.concat([self.rejected_molecules, shard.rejected])
        # Every row of a molecule RDKit rejected, in this batch or an earlier one: a molecule's rows can fall on
        # both sides of a batch boundary.
        valid, rejects = batch.valid, batch.rejects
        bad = valid.join(self.rejected_molecules, on=KEY, how="inner")
        if len(bad):
            rejects = pl.concat([rejects, bad.select(list(REJECT_SCHEMA))])
            valid = valid.join(self.rejected_molecules, on=KEY, how="anti")
        if len(rejects):
            self.rejects.append(rejects.sort(ID))
        write_parquet(row_frame(valid), self.directory / "rows" / shard_name(batch.number))
        write_parquet(shard.molecules, self.directory / "molecules" / shard_name(batch.number))
        self.counts["rows"] += batch.rows
        self.counts["rejected_rows"] += len(rejects)
        self.counts["molecules"] += len(shard.molecules)
        self.bar.update(batch.rows)

    def all_rejects(self) -> pl.DataFrame:
        return pl.concat(self.rejects).sort(ID) if self.rejects else pl.DataFrame(schema=REJECT_SCHEMA)


def _check_reject_fraction(
    source: Path, rejects_path: Path, rejected: pl.DataFrame, counts: Counts, limit: float
) -> None:
    fraction = counts["rejected_rows"] / max(counts["rows"], 1)
    if fraction > limit:
        reasons = rejected.group_by("reason").len().sort(["len", "reason"], descending=[True, False]).head(3)
        summary = "; ".join(f"{r} ({n})" for r, n in reasons.iter_rows())
        raise InputError(
            f"{source}: {counts['rejected_rows']} of {counts['rows']} rows rejected ({fraction:.2%}), more "
            f"than featurize.max_reject_fraction={limit}; see {rejects_path} (most common: {summary})"
        )


def start_molecules(unique: pl.DataFrame, cache: FeatureCache, pool: FeatureWorkers) -> MoleculeJob:
    """Look up a batch's new molecules in the cache; submit the rest to the pool."""
    cached, found = cache.lookup(unique)
    todo = unique.filter(pl.Series(~found))
    return MoleculeJob(
        keys=unique.select(KEY),
        cached=cached,
        found=found,
        computing=todo.select(KEY, CHECK),
        features=pool.submit(todo["cleaned"].to_list()),
    )


def finish_molecules(
    job: MoleculeJob, cache: FeatureCache, config: features.FeatureConfig, counts: Counts
) -> MoleculeShard:
    """Features of the molecules first seen in a batch, in order of first appearance, and the rejected ones."""
    computed = feature_frame(job.computing, job.features.result(), config)
    cache.add(computed)
    counts["unique"] += len(job.keys)
    counts["reused"] += int(job.found.sum())
    counts["computed"] += len(job.computing)
    merged = job.keys.join(pl.concat([job.cached, computed]), on=KEY, how="left", maintain_order="left")
    failed = merged.filter(pl.col("reason").is_not_null()).select(KEY, "reason")
    counts["rejected_molecules"] += len(failed)
    return MoleculeShard(
        molecules=merged.filter(pl.col("reason").is_null()).drop("reason", CHECK), rejected=failed
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m stages.featurize",
        description="Featurize a BELKA-format file: clean SMILES, RDKit features once per unique molecule.",
    )
    parser.add_argument(
        "--input", type=Path, required=True, help="a BELKA-format parquet file, directory of parquet, or csv"
    )
    parser.add_argument(
        "--output", type=Path, required=True, help="the output directory (written atomically)"
    )
    parser.add_argument("--rejects", type=Path, help="CSV of rejected rows (default: <output>-rejects.csv)")
    parser.add_argument(
        "--side",
        choices=("train", "test"),
        help="train: the binds column is required; test: it is not read (default: kept when present)",
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument(
        "--cache",
        type=Path,
        help="feature cache directory (default: $BELKA_FEATURE_CACHE, resources.feature_cache, or the user's cache)",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_args(argv)
    setup_logging(args.verbose)

    def body() -> None:
        params = load_params(args.params)
        rejects = args.rejects or args.output.with_name(args.output.name + "-rejects.csv")
        needs_binds = args.side == "train" if args.side else BINDS in raw_columns(args.input)
        featurize_file(args.input, args.output, rejects, params, needs_binds, args.cache)

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
