"""Featurize BELKA rows: clean the SMILES, compute RDKit features once per unique molecule, on every core.

Output (a directory, written atomically):

- ``rows/part-NNNNN.parquet``: one row per valid input row: id, molecule_key, protein_name, binds (null for test),
  and keys of the three building blocks. No SMILES.
- ``molecules/part-NNNNN.parquet``: one row per unique molecule, in order of first appearance (part N holds the
  molecules first seen in input batch N): molecule_key, one float column per ``featurize.descriptors`` name and
  the bit-packed fingerprint ``fp`` of ``featurize.fingerprint.type`` (Morgan/ECFP, feature Morgan/FCFP, atom
  pairs or topological torsions; no ``fp`` column for ``none``).
- ``manifest.json``: counts and the feature spec (``features.FeatureConfig.spec``).

Rejected rows (invalid SMILES and the like) go to a separate CSV with the reason. Past
``featurize.max_reject_fraction`` of the rows, labelled (training) data fails and writes nothing, neither output nor
rejects CSV; unlabelled (test) data is featurized anyway, with a warning, since a submission needs every id (predict
scores the rejected rows with a fallback). A problem of the file rather than of one row (a missing column, a null
id, building block, protein or label, a label that is not 0 or 1, a repeated id) stops the stage before any work
(``raw_input.check_raw_input``). One molecule (after cleaning) and protein labelled both 0 and 1 follows
``featurize.conflicting_labels``, from passes over the raw rows before any RDKit work (:func:`check_input`):
``error`` refuses the input, ``any`` labels every row of the pair 1, ``drop`` leaves its rows out; the count is
logged and kept in the manifest.

The input is streamed in batches of ``featurize.batch_rows``; memory is bounded by the batch size and the worker
count, plus 16 bytes per unique molecule for the set of molecules already seen (key and check hash, ``KeySet``)
and, for labelled data, the molecule-protein pairs labelled 1 (0.54% of BELKA's rows).
Molecules computed before (by an earlier run, a killed run, or a run on fewer rows) are read from the feature
cache (``resources.feature_cache``), keyed by the cleaned SMILES and the feature spec (settings, RDKit's version,
the feature version), so only new molecules are computed. Every cache part is checked against the digests in its
name before its keys are indexed or its values used; a damaged or foreign one is reported in one line, and its
molecules are computed again and written back (``molecules.FeatureCache``). The output does not depend on what the
cache held: a rerun is byte-identical to a run from scratch.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from stages import chem, engine, features
from stages.atomic import atomic_dir, atomic_file
from stages.cli import Command, progress
from stages.dataset import BB_KEYS, KEY, find_sorted, in_sorted
from stages.errors import InputError
from stages.io import BB_COLUMNS, BINDS, ID, PROTEIN, SMILES, shard_name, write_json, write_parquet
from stages.molecules import CHECK, FeatureCache, cache_namespace, feature_frame, molecule_schema
from stages.params import Params, feature_cache_dir, workers
from stages.raw_input import CHECK_BATCH_ROWS, RawInput, checked_input, raw_columns, read_batches

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
    conflicting_labels: str = "any"  # error | any | drop: a molecule and protein labelled both 0 and 1
    workers: int = 1
    cache_dir: Path | None = None  # None: no feature cache
    engine: str = "local"  # local | dask: where RDKit runs (the output is the same)
    worker_wait: float | None = None  # dask: seconds without workers before failing (None: engine's default)


def options(params: Params, cache_dir: Path | None = None) -> Options:
    return Options(
        config=feature_config(params),
        batch_rows=params.featurize.batch_rows,
        max_reject_fraction=params.featurize.max_reject_fraction,
        conflicting_labels=params.featurize.conflicting_labels,
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


PAIR = ("cleaned", PROTEIN)  # a molecule (its cleaned SMILES) and a protein: what one label is about


def pair_counts(frame: pl.DataFrame, max_length: int, within: pl.DataFrame | None = None) -> pl.DataFrame:
    """Raw rows (id, molecule_smiles, protein_name, binds) by molecule-protein pair and label: the pair's
    ``cleaned`` SMILES (``chem.clean_smiles_expr``, the string cleaning of every row, no RDKit), protein, binds,
    the first id and the number of rows; only the pairs of ``within`` when given. Rows whose SMILES the cleaning
    rejects are left out (they are rejects)."""
    cleaned, _ = chem.clean_smiles_expr(pl.col(SMILES), max_length)
    pairs = frame.select(pl.col(ID), cleaned.alias("cleaned"), pl.col(PROTEIN), pl.col(BINDS)).drop_nulls(
        "cleaned"
    )
    if within is not None:
        pairs = pairs.join(within, on=PAIR, how="semi")
    return pairs.group_by(*PAIR, BINDS).agg(pl.col(ID).min().alias("first"), pl.len().alias("rows"))


def combine_counts(parts: Iterator[pl.DataFrame]) -> pl.DataFrame:
    """Per-batch :func:`pair_counts` as one table over the whole input: first ids and rows summed up."""
    empty = pl.DataFrame(
        schema={
            "cleaned": pl.String,
            PROTEIN: pl.String,
            BINDS: pl.Int64,
            "first": pl.Int64,
            "rows": pl.UInt32,
        }
    )
    return (
        pl.concat([empty, *(part.cast(empty.schema) for part in parts)])
        .group_by(*PAIR, BINDS)
        .agg(pl.col("first").min(), pl.col("rows").sum())
    )


def label_counts(
    batches: Callable[[], Iterator[pl.DataFrame]],
    max_length: int,
    label: int,
    within: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """:func:`pair_counts` of the rows labelled ``label`` in a whole labelled input (one pass over ``batches()``):
    ``cleaned``, ``protein_name``, ``first`` id and ``rows``. Whatever the row order, the batches or the files the
    rows come in, the result is the same."""
    parts = (pair_counts(batch.filter(pl.col(BINDS) == label), max_length, within) for batch in batches())
    return combine_counts(parts).drop(BINDS)


def label_conflicts(
    batches: Callable[[], Iterator[pl.DataFrame]], positives: pl.DataFrame, max_length: int
) -> pl.DataFrame:
    """The pairs labelled both 0 and 1, from the positive pairs (:func:`label_counts` of 1) and a pass over the
    negatives: ``cleaned``, ``protein_name``, the first id and the number of rows of each label (``first_0``,
    ``rows_0``, ``first_1``, ``rows_1``), sorted by ``first_0``."""
    negatives = (
        label_counts(batches, max_length, 0, positives.select(*PAIR)) if len(positives) else positives.clear()
    )
    return (
        negatives.join(positives, on=PAIR, suffix="_1")
        .rename({"first": "first_0", "rows": "rows_0"})
        .sort("first_0")
    )


def conflict_error(conflicts: pl.DataFrame, source: str) -> InputError:
    """The refusal of ``featurize.conflicting_labels: error``: the first conflicting negative row by id, the first
    positive row of its pair, and how many pairs there are."""
    first = conflicts.row(0, named=True)
    return InputError(
        f"{source}: column 'binds' must give one label to a molecule and protein, found 0 at id {first['first_0']} "
        f"and 1 at id {first['first_1']} for the same molecule with {first[PROTEIN]} ({len(conflicts)} "
        "molecule-protein pair(s) labelled both ways; reconcile the rows, or set featurize.conflicting_labels to "
        "any (every row of such a pair binds) or drop (its rows are left out))"
    )


def pairs_by_protein(pairs: pl.DataFrame) -> dict[str, np.ndarray]:
    """protein -> the sorted molecule keys of ``pairs`` (``molecule_key``, ``protein_name``)."""
    grouped = pairs.group_by(PROTEIN).agg(pl.col(KEY))
    return {protein: np.unique(np.asarray(keys, dtype=np.int64)) for protein, keys in grouped.iter_rows()}


def in_pairs(rows: pl.DataFrame, pairs: dict[str, np.ndarray]) -> np.ndarray:
    """True where a row's (``molecule_key``, ``protein_name``) is one of ``pairs`` (:func:`pairs_by_protein`)."""
    found = np.zeros(len(rows), dtype=bool)
    keys = rows[KEY].to_numpy()
    for protein, sorted_keys in pairs.items():
        of_protein = (rows[PROTEIN] == protein).to_numpy()
        found[of_protein] = in_sorted(keys[of_protein], sorted_keys)
    return found


@dataclass
class LabelPolicy:
    """``featurize.conflicting_labels`` in the main pass. ``any``: ``pairs`` are every pair labelled 1 somewhere
    (``molecule_key``, ``protein_name``, ``rows``), and a row of one is labelled 1, so no second pass over the
    negatives is needed; the rows it relabels are the conflicts, counted as they come. ``drop``: ``pairs`` are the
    pairs labelled both ways (:func:`label_conflicts`), whose rows are left out."""

    policy: str
    pairs: pl.DataFrame
    lookup: dict[str, np.ndarray] = field(init=False)
    relabelled: list[pl.DataFrame] = field(default_factory=list)  # any: the pair of each row relabelled

    def __post_init__(self) -> None:
        self.lookup = pairs_by_protein(self.pairs)

    def apply(self, valid: pl.DataFrame) -> pl.DataFrame:
        """A batch's valid rows (cleaned, with keys) under the policy; row order is kept."""
        hit = pl.Series(in_pairs(valid, self.lookup))
        if self.policy == "drop":
            return valid.filter(~hit)
        self.relabelled.append(valid.filter(hit & (valid[BINDS] == 0)).select(KEY, PROTEIN))
        return valid.with_columns(pl.when(hit).then(1).otherwise(pl.col(BINDS)).alias(BINDS))

    def counts(self) -> dict[str, int]:
        """The pairs labelled both ways, their rows, and the rows relabelled 1 (any) or left out (drop)."""
        if self.policy == "drop":
            rows = int(self.pairs["rows_0"].sum() + self.pairs["rows_1"].sum())
            return {"conflict_pairs": len(self.pairs), "conflict_rows": rows, "dropped_rows": rows}
        relabelled = pl.concat([self.pairs.clear().select(KEY, PROTEIN), *self.relabelled])
        pairs = relabelled.unique().join(self.pairs, on=[KEY, PROTEIN])
        return {
            "conflict_pairs": len(pairs),
            "conflict_rows": len(relabelled) + int(pairs["rows"].sum()),
            "relabelled_rows": len(relabelled),
        }


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
    RDKit and the rest (``molecules``) are written. ``conflict_pairs`` molecule-protein pairs were labelled both 0
    and 1 (``conflict_rows`` rows); ``featurize.conflicting_labels`` relabelled ``relabelled_rows`` of them 1 (any)
    or left ``dropped_rows`` out (drop)."""

    def __init__(self) -> None:
        super().__init__(
            rows=0, rejected_rows=0, unique=0, reused=0, computed=0, rejected_molecules=0, molecules=0,
            conflict_pairs=0, conflict_rows=0, relabelled_rows=0, dropped_rows=0,
        )  # fmt: skip


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


@dataclass
class CheckedInput:
    """A raw input checked before any work: the columns to read, whether it is labelled, and the label policy
    for pairs labelled both 0 and 1 (None when there are none to act on)."""

    raw: RawInput
    columns: list[str]
    labelled: bool
    labels: LabelPolicy | None


def check_input(source: Path, needs_binds: bool, opts: Options) -> CheckedInput:
    """Everything that can refuse an input, before any RDKit work: the raw checks (``raw_input.check_raw_input``), then,
    for labelled data, the pairs labelled 1 (one pass over the raw rows) and, for ``featurize.conflicting_labels``
    error or drop, the pairs labelled both ways (a second pass), refused under error."""
    raw, columns = checked_input(source, needs_binds)
    if not needs_binds:
        return CheckedInput(raw, columns, False, None)
    max_length = opts.config.max_smiles_length
    label_columns = [ID, SMILES, PROTEIN, BINDS]

    def batches() -> Iterator[pl.DataFrame]:
        return read_batches(raw, label_columns, CHECK_BATCH_ROWS)

    positives = label_counts(batches, max_length, 1)
    if opts.conflicting_labels == "any":
        pairs = positives
    else:
        pairs = label_conflicts(batches, positives, max_length)
        if len(pairs) and opts.conflicting_labels == "error":
            raise conflict_error(pairs, str(source))
    if not len(pairs):
        return CheckedInput(raw, columns, True, None)
    keyed = pairs.with_columns(chem.keys_of(pairs["cleaned"])["key"].alias(KEY)).drop("cleaned")
    return CheckedInput(raw, columns, True, LabelPolicy(opts.conflicting_labels, keyed))


def featurize(source: Path, output: Path, rejects_path: Path, opts: Options, needs_binds: bool) -> dict:
    check_paths(source, output, rejects_path)
    checked = check_input(source, needs_binds, opts)
    config = opts.config
    cache_dir = opts.cache_dir / cache_namespace(config) if opts.cache_dir else None
    cache = FeatureCache(cache_dir, molecule_schema(config))
    with engine.executor(opts.engine, opts.workers, opts.worker_wait) as pool:
        rows = checked.raw.row_count()
        if isinstance(pool, engine.LazyProcessPool) and (rows is None or rows >= 3 * FeatureWorkers.SMALL):
            pool.warm_up(chem.warm_up, config)
        rdkit_work = FeatureWorkers(pool, opts.workers, config, always=opts.engine == "dask")
        return _featurize(checked, output, rejects_path, opts, cache, rdkit_work, rows)


def _featurize(
    checked: CheckedInput,
    output: Path,
    rejects_path: Path,
    opts: Options,
    cache: FeatureCache,
    pool: FeatureWorkers,
    total_rows: int | None,
) -> dict:
    config = opts.config
    source = checked.raw.path
    needs_binds = checked.labelled
    seen = KeySet()
    bar = progress(f"featurize {source}", total_rows)
    try:
        # the rejects CSV and the output replace what was there only when the whole run succeeds
        with atomic_file(rejects_path) as rejects_tmp, atomic_dir(output) as tmp:
            (tmp / "rows").mkdir()
            (tmp / "molecules").mkdir()
            run = RunState(tmp, cache, config, bar)
            pending: PendingBatch | None = None  # the batch whose molecules the pool is computing
            for number, batch in enumerate(read_batches(checked.raw, checked.columns, opts.batch_rows)):
                valid, rejects = clean_batch(batch, config.max_smiles_length)
                if checked.labels is not None:
                    valid = checked.labels.apply(valid)
                job = start_molecules(new_molecules(valid, seen), cache, pool)
                if pending is not None:
                    run.finish(pending)  # while the pool computes this batch's molecules
                pending = PendingBatch(number, len(batch), valid, rejects, job)
            if pending is not None:
                run.finish(pending)
            counts = run.counts
            if checked.labels is not None:
                counts.update(checked.labels.counts())
            rejected = run.all_rejects()
            check_reject_fraction(
                source, rejects_path, rejected, counts, opts.max_reject_fraction, needs_binds
            )
            rejected.write_csv(rejects_tmp)
            manifest = {
                "source": str(source),
                "rows": counts["rows"] - counts["rejected_rows"] - counts["dropped_rows"],
                "rejected_rows": counts["rejected_rows"],
                "molecules": counts["molecules"],
                "features": config.spec(),
                "labelled": needs_binds,
            }
            if needs_binds:
                manifest["conflicting_labels"] = {
                    "policy": opts.conflicting_labels,
                    **{
                        key: counts[key]
                        for key in ("conflict_pairs", "conflict_rows", "relabelled_rows", "dropped_rows")
                    },
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
    if counts["conflict_pairs"]:
        done = (
            f"every row of them labelled 1 ({counts['relabelled_rows']} rows relabelled)"
            if opts.conflicting_labels == "any"
            else f"their {counts['dropped_rows']} rows left out"
        )
        log.warning(
            "%s: %d molecule-protein pairs labelled both 0 and 1 (%d rows): featurize.conflicting_labels=%s, %s",
            source, counts["conflict_pairs"], counts["conflict_rows"], opts.conflicting_labels, done,
        )  # fmt: skip
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


def check_reject_fraction(
    source: Path, rejects_path: Path, rejected: pl.DataFrame, counts: Counts, limit: float, labelled: bool
) -> None:
    """More rejected rows than ``featurize.max_reject_fraction``: labelled (training) data fails before anything is
    written, naming the most common reasons and the first ids; unlabelled (test) data is featurized anyway with
    one warning, since a submission needs every id (predict scores the rejected rows with a fallback)."""
    fraction = counts["rejected_rows"] / max(counts["rows"], 1)
    if fraction <= limit:
        return
    share = f"{counts['rejected_rows']} of {counts['rows']} rows rejected ({fraction:.2%})"
    if not labelled:
        log.warning(
            "%s: %s, more than featurize.max_reject_fraction=%s: unlabelled rows are featurized anyway (predict "
            "scores the rejected ones with their protein's base rate; they are listed in %s)",
            source, share, limit, rejects_path,
        )  # fmt: skip
        return
    reasons = rejected.group_by("reason").len().sort(["len", "reason"], descending=[True, False]).head(3)
    summary = "; ".join(f"{r} ({n})" for r, n in reasons.iter_rows())
    first = ", ".join(map(str, rejected[ID].head(5).to_list()))
    raise InputError(
        f"{source}: {share}, more than featurize.max_reject_fraction={limit} (most common: {summary}; first ids: "
        f"{first}); nothing was written: fix those rows, or raise the threshold to featurize the others (the "
        f"rejected ones are then listed in {rejects_path})"
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


def run(args: argparse.Namespace, params: Params) -> None:
    rejects = args.rejects or args.output.with_name(args.output.name + "-rejects.csv")
    needs_binds = args.side == "train" if args.side else BINDS in raw_columns(args.input)
    featurize_file(args.input, args.output, rejects, params, needs_binds, args.cache)


def main(argv: list[str] | None = None) -> int:
    return (
        Command(
            "featurize",
            "Featurize a BELKA-format file: clean SMILES, RDKit features once per unique molecule.",
        )
        .paths(
            input="a BELKA-format parquet file, directory of parquet, or csv",
            output="the output directory (written atomically)",
        )
        .option("--rejects", type=Path, help="CSV of rejected rows (default: <output>-rejects.csv)")
        .option(
            "--side",
            choices=("train", "test"),
            help="train: the binds column is required; test: it is not read (default: kept when present)",
        )
        .option(
            "--cache",
            type=Path,
            help="feature cache directory (default: $BELKA_FEATURE_CACHE, resources.feature_cache, or the user's "
            "cache)",
        )
        .main(argv, run)
    )


if __name__ == "__main__":
    raise SystemExit(main())
