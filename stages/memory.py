"""Train's memory, estimated before any row is read: refuse a fit that cannot fit, say what would.

The split fit (``stages.train``) and the final fit (``stages.final``) know before they start how many rows they
will keep after negative sampling: the split's summary holds each side's rows and positives by protein, and the
rates follow from the params as :func:`stages.train.negative_rates` sets them (the final fit's rows are the train
and valid parts). With the features' spec (from the featurize manifest) that gives the quantised matrix's size and
the process's peak memory per ``train.data_mode``:

- ``in_memory``: every matrix of a booster (the fit part and the early-stopping parts) as a ``QuantileDMatrix``:
  quantised, one byte a value at ``xgb.max_bin`` <= 256 (two up to 65,536), about 2.5 in memory as measured (with
  the column-major copy hist training builds), plus per-row buffers (labels, weights, row pointers, gradients,
  predictions, row partitions, the metric's sort), the expanded float32 batch while a matrix is built (at most a
  shard of the rows: the shards are listed, not read), the boosting histograms, the molecule store's index (12 bytes
  a molecule) and cached parts, and the process's own baseline (its RSS when the estimate is made);
- ``external``: the quantised pages on disk under ``resources.external_memory_dir``; in memory the per-row buffers
  and the batch, and the pages XGBoost maps back from disk (they count in the RSS, about a byte a value as measured,
  but the kernel can drop them: for external the figure is an upper bound);
- ``per_protein`` builds one protein's matrices at a time: the largest protein's sets the peak.

With ``in_memory`` a fit whose estimate exceeds the memory available is refused in one line naming
``train.negatives_per_positive``, ``train.negative_sample_rate`` and ``train.data_mode: external`` and what each
would need; otherwise the estimate is logged. The available memory is ``$BELKA_MEMORY_LIMIT_GB`` when set, else
``resources.memory_limit_gb``, else what the machine has available (``MemAvailable``, bounded by a cgroup limit)
plus this process's own RSS. None of this shapes an output: no stage lists this module as a dep.

The coefficients are calibrated against measured peaks (``bench/estimate.py`` prints the comparison).
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from stages import features
from stages.dataset import read_rows
from stages.errors import InputError
from stages.io import BINDS, PROTEIN, list_shards
from stages.molecules import read_manifest
from stages.params import Params, Train, external_memory_dir

log = logging.getLogger("stages.memory")

MEMORY_LIMIT_VARIABLE = "BELKA_MEMORY_LIMIT_GB"
GB = 1e9

# Calibrated against measured peak RSS (bench/estimate.py, its table in the README): the process's own working
# memory past its baseline (XGBoost's threads and buffers, parquet reading), bytes a value of a matrix in memory (the
# quantised index is one byte a value; the column-major copy hist training builds, and what building them leaves,
# take the rest), bytes a kept row holds besides (label and weight, row pointer, gradient pair, prediction caches,
# row partition, the metric's sort), bytes a value of the expanded batch takes while a matrix is built (the float32
# design matrix, the copies np.hstack and the one-hot columns make, the unpacked fingerprint bits).
FIXED_BYTES = 100_000_000
VALUE_BYTES = 2.5
ROW_BYTES = 64
BATCH_VALUE_BYTES = 7.4
STORE_KEY_BYTES = 12  # the molecule store's index: key and position of each molecule
STORE_PARTS = 8  # molecule parts the store keeps decoded (MoleculeStore's keep_parts)
# external: XGBoost reads its pages back through mmap, and the mapped pages count in the RSS (measured: about a
# byte a value at these sizes); the kernel can drop them under pressure, so for external this is an upper bound
EXTERNAL_VALUE_BYTES = 1.0
HIST_BYTES = 16  # a histogram bin: gradient and hessian sums, float64


@dataclass(frozen=True)
class Counts:
    """Rows and positives by protein of the rows a fit reads."""

    rows: dict[str, int]
    positives: dict[str, int]
    shards: int = 0  # rows shards the fit reads, batch by batch (0: unknown, batches of train.batch_rows)

    @classmethod
    def of_summary(cls, summary: dict, sides: tuple[str, ...], source: str) -> Counts:
        """The summed counts of ``sides`` (``train``, ``valid``) of the split's summary."""
        rows: dict[str, int] = {}
        positives: dict[str, int] = {}
        for side in sides:
            by_protein = summary.get(side, {}).get("by_protein") if isinstance(summary, dict) else None
            if not isinstance(by_protein, dict):
                raise InputError(
                    f"{source}: no rows by protein for the {side} part (made by an older split: dvc repro)"
                )
            for protein, counts in by_protein.items():
                rows[protein] = rows.get(protein, 0) + int(counts["rows"])
                positives[protein] = positives.get(protein, 0) + int(counts["positives"])
        return cls(rows, positives)


def read_summary(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found (the split's summary: dvc repro split)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({exc}); dvc checkout or dvc repro split") from None


def kept_by_protein(counts: Counts, settings: Train) -> dict[str, float]:
    """The expected rows kept after negative sampling, by protein: every positive and the protein's rate of its
    negatives (:meth:`Train.negative_rate`, as train sets it from the fit part's counts: the same ratio in
    expectation)."""
    kept = {}
    for protein, rows in counts.rows.items():
        positives = counts.positives.get(protein, 0)
        kept[protein] = positives + settings.negative_rate(positives, rows - positives) * (rows - positives)
    return kept


@dataclass(frozen=True)
class FeatureShape:
    """What the featurize output says before its molecules are read: the design matrix's columns, the molecules
    the store indexes, and how many a part holds."""

    descriptors: int
    n_bits: int
    molecules: int
    molecules_per_part: int

    @classmethod
    def of(cls, features_dir: Path) -> FeatureShape:
        manifest = read_manifest(features_dir)
        spec = manifest.get("features") or {}
        try:
            n_bits = features.FingerprintConfig.from_spec(spec["fingerprint"]).bits
            descriptors = len(spec["descriptors"])
        except (KeyError, TypeError, AttributeError):
            raise InputError(
                f"{features_dir}: manifest.json has no feature spec (made by an older version: dvc repro)"
            ) from None
        molecules = int(manifest.get("molecules") or 0)
        parts = max(1, len(list_shards(Path(features_dir) / "molecules")))
        return cls(descriptors, n_bits, molecules, math.ceil(molecules / parts))


@dataclass(frozen=True)
class Estimate:
    """A fit's rows, matrix and memory, in bytes: ``peak`` in memory, ``disk`` for external pages."""

    mode: str
    rows: int  # rows kept after sampling, every booster together
    booster_rows: int  # the largest booster's rows: the matrices held at once
    features: int
    batch: int  # rows of the largest expanded batch
    matrix: int  # the quantised matrices of every booster (on disk when external)
    peak: int
    disk: int

    def describe(self) -> str:
        where = f", {self.disk / GB:.2f} GB of pages on disk" if self.disk else ""
        return (
            f"{self.rows:,} rows kept x {self.features:,} features ({self.matrix / GB:.2f} GB quantised); "
            f"{self.mode} needs about {self.peak / GB:.2f} GB in memory{where}"
        )


def bin_bytes(max_bin: int) -> int:
    return 1 if max_bin <= 256 else 2 if max_bin <= 65_536 else 4


def estimate(params: Params, counts: Counts, shape: FeatureShape, baseline: int, **train_changes) -> Estimate:
    """The fit's memory (see the module's docstring): every part of a booster (fit and early stopping) is built,
    so the split fit and the final fit of the same rows need the same. ``train_changes`` override ``train.*`` keys
    (``data_mode``, ``negatives_per_positive``, ``negative_sample_rate``: what-ifs)."""
    settings = params.train.model_copy(update=train_changes)
    mode = settings.data_mode
    kept = kept_by_protein(counts, settings)
    joint = settings.model == "joint"
    n_features = (len(counts.rows) if joint else 0) + shape.descriptors + shape.n_bits
    all_rows = sum(counts.rows.values())
    boosters = [sum(kept.values())] if joint else list(kept.values())
    booster_rows = max(boosters, default=0.0)
    per_value = bin_bytes(params.xgb.max_bin)
    matrix = sum(boosters) * n_features * per_value
    # the expanded batch: train.batch_rows rows read (at most a shard's), the booster's share of them kept
    read = min(settings.batch_rows, math.ceil(all_rows / counts.shards) if counts.shards else all_rows)
    batch = read * (booster_rows / all_rows if all_rows else 0.0)
    batch_bytes = batch * (n_features * BATCH_VALUE_BYTES)
    # histograms of one tree (binary columns have two bins), per thread and cached per node
    bins = shape.n_bits * 2 + (len(counts.rows) * 2 if joint else 0) + shape.descriptors * params.xgb.max_bin
    nodes = 2 ** min(params.xgb.max_depth or 6, 16)
    hist = bins * HIST_BYTES * nodes
    store = shape.molecules * STORE_KEY_BYTES + min(
        shape.molecules, STORE_PARTS * shape.molecules_per_part
    ) * (shape.descriptors * 8 + shape.n_bits // 8)
    fixed = baseline + FIXED_BYTES + store + hist + batch_bytes + booster_rows * ROW_BYTES
    if mode == "external":
        peak, disk = fixed + booster_rows * n_features * EXTERNAL_VALUE_BYTES * per_value, matrix
    else:
        peak, disk = fixed + booster_rows * n_features * VALUE_BYTES * per_value, 0
    return Estimate(
        mode, round(sum(boosters)), round(booster_rows), n_features, round(batch), round(matrix), round(peak),
        round(disk),
    )  # fmt: skip


def current_rss() -> int:
    """This process's resident memory now (its peak where /proc is not there)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # pragma: no cover - not Linux


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def machine_available() -> int | None:
    """Memory this process could still take: ``MemAvailable``, bounded by the cgroup's limit less its usage."""
    available = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                available = int(line.split()[1]) * 1024
    except OSError:
        return None
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),  # v1
    ):
        limit, usage = _read_int(Path(limit_file)), _read_int(Path(usage_file))
        if limit is not None and usage is not None and limit < 1 << 60:
            left = max(0, limit - usage)
            available = left if available is None else min(available, left)
            break
    return available


def memory_available(params: Params) -> tuple[int | None, str]:
    """(bytes the fit may use at its peak, where that figure comes from); None when unknown."""
    configured = os.environ.get(MEMORY_LIMIT_VARIABLE)
    if configured:
        try:
            value = float(configured)
        except ValueError:
            value = -1.0
        if not value > 0:
            raise InputError(f"${MEMORY_LIMIT_VARIABLE}={configured!r}: expected a positive number of GB")
        return round(value * GB), f"${MEMORY_LIMIT_VARIABLE}"
    if params.resources.memory_limit_gb is not None:
        return round(params.resources.memory_limit_gb * GB), "resources.memory_limit_gb"
    available = machine_available()
    if available is None:
        return None, "unknown"
    return available + current_rss(), "the machine's available memory (resources.memory_limit_gb: null)"


def largest_fitting(peak_of, low: float, high: float, limit: int) -> float | None:
    """The largest x in [low, high] whose ``peak_of(x)`` is within ``limit`` (peak grows with x); None if none."""
    if peak_of(low) > limit:
        return None
    if peak_of(high) <= limit:
        return high
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if peak_of(middle) <= limit else (low, middle)
    return low


def _figure(x: float) -> str:
    """A value rounded down to 2 significant digits: one that still fits."""
    if x <= 0:
        return "0"
    digits = 1 - math.floor(math.log10(x))
    step = 10.0**-digits
    return f"{math.floor(x / step) * step:.{max(digits, 0)}f}"


def refusal(
    params: Params, counts: Counts, shape: FeatureShape, baseline: int, est: Estimate, limit: int, source: str,
    what: str,
) -> str:  # fmt: skip
    """The one line that refuses an in-memory fit over ``limit``, with what each way out would need."""

    def peak(**change) -> int:
        return estimate(params, counts, shape, baseline, **change).peak

    biggest_k = max(
        (counts.rows[p] - counts.positives.get(p, 0)) / max(1, counts.positives.get(p, 0))
        for p in counts.rows
    )
    k = largest_fitting(lambda x: peak(negatives_per_positive=x), 0.0, max(biggest_k, 1.0), limit)
    rate = largest_fitting(
        lambda x: peak(negatives_per_positive=None, negative_sample_rate=x), 0.0, 1.0, limit
    )
    external = estimate(params, counts, shape, baseline, data_mode="external")
    settings = params.train
    unset_k = (
        " (with train.negatives_per_positive: null)" if settings.negatives_per_positive is not None else ""
    )
    unset_rate = " (with train.negative_sample_rate: 1.0)" if settings.negative_sample_rate != 1.0 else ""
    ways = [
        f"train.negatives_per_positive: {_figure(k)} or less{unset_rate}"
        if k
        else "no train.negatives_per_positive fits",
        f"train.negative_sample_rate: {_figure(rate)} or less{unset_k}"
        if rate
        else "no train.negative_sample_rate fits",
        f"train.data_mode: external (at most about {external.peak / GB:.2f} GB in memory, with the pages it maps, "
        f"and {external.disk / GB:.2f} GB of pages under {external_memory_dir(params)})",
    ]
    return (
        f"{what}: {est.describe()}, more than the {limit / GB:.2f} GB available ({source}); set "
        + ", or ".join(ways)
    )


def check_memory(params: Params, counts: Counts, shape: FeatureShape, what: str) -> Estimate:
    """The fit's estimate, logged; an :class:`InputError` (one line) when an in-memory fit would exceed the memory
    available. Distributed training builds its matrices on the Dask workers: the estimate is logged, per rank."""
    baseline = current_rss()
    est = estimate(params, counts, shape, baseline)
    limit, source = memory_available(params)
    ranks = params.train.distributed_workers
    if ranks:
        log.info("%s: %s (all ranks together; each of %d ranks holds about 1/%d of the rows: not checked here)",
                 what, est.describe(), ranks, ranks)  # fmt: skip
        return est
    if est.mode == "in_memory" and limit is not None and est.peak > limit:
        raise InputError(refusal(params, counts, shape, baseline, est, limit, source, what))
    shown = f"{limit / GB:.2f} GB available ({source})" if limit is not None else "memory available unknown"
    log.info("%s: %s; %s", what, est.describe(), shown)
    return est


def counts_of_rows(rows_dir: Path) -> Counts:
    """Rows and positives by protein of a rows directory, from its label columns (when no split summary is
    given: the summary's counts need no row read); a damaged shard is named as train would name it."""
    shards = list_shards(rows_dir)
    rows: dict[str, int] = {}
    positives: dict[str, int] = {}
    for shard in shards:
        labels = read_rows(shard, [PROTEIN, BINDS])
        for protein, n, bound in labels.group_by(PROTEIN).agg(pl.len(), pl.col(BINDS).sum()).iter_rows():
            rows[str(protein)] = rows.get(str(protein), 0) + int(n)
            positives[str(protein)] = positives.get(str(protein), 0) + int(bound or 0)
    return Counts(rows, positives, len(shards))


def fit_inputs(
    summary: Path | None, sides: tuple[str, ...], rows_dir: Path, features_dir: Path
) -> tuple[Counts, FeatureShape]:
    """What the estimate of a fit reads: the rows by protein of the split's ``summary`` (the ``sides`` it fits on;
    without a summary, the rows' labels) with the number of shards listed in ``rows_dir``, and the featurize
    manifest's shape. ``estimate(params, *fit_inputs(...), baseline)`` is a fit's estimate, without the check."""
    if summary is not None:
        counts = Counts.of_summary(read_summary(summary), sides, str(summary))
        if rows_dir.is_dir():  # the batches are at most a shard: how many there are, from the listing alone
            counts = replace(counts, shards=len(list_shards(rows_dir)))
    else:
        counts = counts_of_rows(rows_dir)
    return counts, FeatureShape.of(features_dir)


def check_fit(
    params: Params,
    summary: Path | None,
    sides: tuple[str, ...],
    rows_dir: Path,
    features_dir: Path,
    what: str,
) -> Estimate:
    """What a fit needs (:func:`fit_inputs`): logged, or refused (:func:`check_memory`)."""
    return check_memory(params, *fit_inputs(summary, sides, rows_dir, features_dir), what)
