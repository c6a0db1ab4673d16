"""Which training rows each matrix holds, and the batches XGBoost reads: the parts of the training rows (fit, and
the early-stopping parts drawn by the split's rule), negative sampling, the label counts, the fitted
preprocessing (one-hot protein, scaler) and the DataIter that expands rows into design-matrix batches.

The same on one machine (:mod:`stages.fit_local`) and on every rank of the Dask collective
(:mod:`stages.fit_dask`), so both fit the same rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import polars as pl
import xgboost as xgb
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from stages.dataset import BB_KEYS, KEY, iter_row_batches
from stages.errors import InputError
from stages.io import BINDS, ID, PROTEIN
from stages.model import design_matrix
from stages.molecules import MoleculeStore
from stages.params import Params
from stages.split import HoldOutRule, assign, uniform_hash

log = logging.getLogger("stages.train")

FIT, STOP_SHARE, STOP_UNSEEN = "fit", "stop_share", "stop_unseen"  # the parts of the training rows
LABEL_COLUMNS = [ID, KEY, PROTEIN, BINDS, *BB_KEYS]
EARLY_STOPPING_STREAM = 0xE5_1D_0F_F5  # the early-stopping draw's own stream: independent of the split's draw


def sample_negatives(rows: pl.DataFrame, rates: dict[str, float], seed: int) -> pl.DataFrame:
    """Keep every positive and a seeded fraction of negatives (``rates`` by protein, 1 for one not named: a fixed
    draw per row id); add ``weight`` (1/rate for kept negatives), so weighted counts are the unsampled ones."""
    rate = rows[PROTEIN].replace_strict(rates, default=1.0, return_dtype=pl.Float64).to_numpy()
    keep = (rows[BINDS].to_numpy() == 1) | (uniform_hash(rows[ID].to_numpy(), seed) < rate)
    weight = np.where(rows[BINDS].to_numpy() == 1, 1.0, 1.0 / rate).astype(np.float32)
    return rows.with_columns(pl.Series("weight", weight)).filter(pl.Series(keep))


def inner_rule(params: Params) -> HoldOutRule | None:
    """The rule that draws the early-stopping part from the training rows (None: no early stopping)."""
    stopping = params.train.early_stopping
    if stopping.rounds == 0:
        return None
    return HoldOutRule(
        stopping.held_out_building_blocks, stopping.valid_fraction, params.train.seed, EARLY_STOPPING_STREAM
    )


def part_of(rows: pl.DataFrame, rule: HoldOutRule | None) -> np.ndarray:
    """Which part of the training rows each row is in: fit, or the unseen-like / share-like early-stopping part."""
    if rule is None:
        return np.full(len(rows), FIT)
    where = assign(rows, rule)
    return np.where(~where.held, FIT, np.where(where.unseen > 0, STOP_UNSEEN, STOP_SHARE))


@dataclass
class LabelCounts:
    """Rows and positives of the training rows by (part, protein): every part gives the base rates, the fit part
    the negative rates, and a part without both classes is not built into a matrix."""

    rows: dict[tuple[str, str], int] = field(default_factory=dict)
    positives: dict[tuple[str, str], int] = field(default_factory=dict)

    def add(self, rows: pl.DataFrame, parts: np.ndarray) -> None:
        grouped = rows.with_columns(pl.Series("part", parts)).group_by("part", PROTEIN)
        for part, protein, n, positives in grouped.agg(pl.len(), pl.col(BINDS).sum()).iter_rows():
            self.rows[part, protein] = self.rows.get((part, protein), 0) + n
            self.positives[part, protein] = self.positives.get((part, protein), 0) + positives

    @property
    def proteins(self) -> list[str]:
        return sorted({protein for _, protein in self.rows})

    def of(self, part: str | None = None, protein: str | None = None) -> tuple[int, int]:
        """(rows, positives) of a part (None: all) and a protein (None: all)."""
        chosen = [k for k in self.rows if part in (None, k[0]) and protein in (None, k[1])]
        return sum(self.rows[k] for k in chosen), sum(self.positives[k] for k in chosen)

    def base_rate(self) -> dict[str, float]:
        return {p: self.of(protein=p)[1] / self.of(protein=p)[0] for p in self.proteins}


def negative_rates(params: Params, counts: LabelCounts) -> dict[str, float]:
    """The fraction of negatives kept for each protein."""
    rates = {}
    for protein in counts.proteins:
        rows, positives = counts.of(FIT, protein)
        rates[protein] = params.train.negative_rate(positives, rows - positives)
    return rates


@dataclass(frozen=True)
class RowSelection:
    """The training rows one matrix holds: one part (fit, or an early-stopping part drawn by ``rule``), every
    protein's or only ``protein``'s, negatives kept at each protein's rate (seeded by the row id, see
    :func:`sample_negatives`). The same on one machine and on a Dask worker, which reads its partitions with it."""

    rule: HoldOutRule | None
    part: str
    protein: str | None
    rates: tuple[tuple[str, float], ...]
    seed: int

    def apply(self, rows: pl.DataFrame) -> pl.DataFrame:
        chosen = part_of(rows, self.rule) == self.part
        if self.protein is not None:
            chosen &= rows[PROTEIN].to_numpy() == self.protein
        return sample_negatives(rows.filter(pl.Series(chosen)), dict(self.rates), self.seed)


@dataclass(frozen=True)
class RowSource:
    """Every batch of a rows directory, as a selection keeps it: what one machine's matrices read, again for each
    pass XGBoost makes."""

    rows_dir: Path
    batch_rows: int
    selection: RowSelection

    def batches(self) -> Iterator[pl.DataFrame]:
        for rows in iter_row_batches(self.rows_dir, self.batch_rows):
            selected = self.selection.apply(rows)
            if len(selected):
                yield selected


class BatchSource(Protocol):
    """Where a matrix's rows come from: every batch of a rows directory (:class:`RowSource`), or a rank's
    partitions (:class:`stages.fit_dask.PartitionSource`)."""

    def batches(self) -> Iterator[pl.DataFrame]: ...


class RowBatches(xgb.DataIter):
    """Feeds XGBoost one expanded batch at a time from ``source`` (anything with ``batches()``: a
    :class:`RowSource`, or a rank's :class:`stages.fit_dask.PartitionSource`); XGBoost calls reset() for each pass it needs."""

    def __init__(
        self,
        source: BatchSource,
        store: MoleculeStore,
        encoder: OneHotEncoder | None,
        scaler: StandardScaler,
        cache_prefix: str | None = None,
    ) -> None:
        self.source, self.store, self.encoder, self.scaler = source, store, encoder, scaler
        self.iterator: Iterator[pl.DataFrame] | None = None
        super().__init__(cache_prefix=cache_prefix)

    def next(self, input_data: Callable) -> bool:
        if self.iterator is None:
            self.iterator = self.source.batches()
        rows = next(self.iterator, None)
        if rows is None:
            return False
        matrix = design_matrix(rows, self.store, self.encoder, self.scaler)
        input_data(
            data=matrix, label=rows[BINDS].to_numpy().astype(np.float32), weight=rows["weight"].to_numpy()
        )
        return True

    def reset(self) -> None:
        self.iterator = None


@dataclass
class Preprocessing:
    encoder: OneHotEncoder
    scaler: StandardScaler
    counts: LabelCounts  # every training row
    kept: LabelCounts  # the rows negative sampling keeps: what each matrix will hold
    rates: dict[str, float]


def fit_preprocessing(params: Params, rows_dir: Path, store: MoleculeStore) -> Preprocessing:
    """Two streaming passes over the training rows: the labels (base rates before any sampling, and the fit part's
    counts that set the negative rates), then what sampling keeps, with the scaler fitted on the sampled fit rows
    the model trains on."""
    rule, seed = inner_rule(params), params.train.seed
    counts = LabelCounts()
    for rows in iter_row_batches(rows_dir, params.train.batch_rows, columns=LABEL_COLUMNS):
        counts.add(rows, part_of(rows, rule))
    if not counts.rows:
        raise InputError("train: no training rows (check the split and the input data)")
    if not counts.of(FIT)[0]:
        raise InputError(
            "train: the early-stopping part takes every training row; lower train.early_stopping's fractions"
        )
    rates = negative_rates(params, counts)
    kept = LabelCounts()
    scaler = StandardScaler()
    for rows in iter_row_batches(rows_dir, params.train.batch_rows, columns=LABEL_COLUMNS):
        sampled = sample_negatives(rows, rates, seed)
        parts = part_of(sampled, rule)
        kept.add(sampled, parts)
        # the rows the fit matrix holds (RowSelection(rule, FIT, ...)), in order: what the scaler is fitted on
        fit_keys = sampled[KEY].to_numpy()[parts == FIT]
        if store.descriptors and len(fit_keys):
            scaler.partial_fit(store.lookup(fit_keys).descriptors)
    if not store.descriptors:  # fingerprint only: nothing to scale
        scaler.mean_ = scaler.scale_ = scaler.var_ = np.empty(0)
        scaler.n_samples_seen_ = 0
    categories = counts.proteins
    encoder = OneHotEncoder(categories=[categories], sparse_output=False, dtype=np.float32)
    encoder.fit(np.array(categories, dtype=object).reshape(-1, 1))
    return Preprocessing(encoder, scaler, counts, kept, rates)


def part_selections(params: Params, prep: Preprocessing, protein: str | None) -> dict[str, RowSelection]:
    """The matrices one booster trains with: the fit part, and the early-stopping parts that hold both classes
    after sampling (a metric like aucpr needs both); the same plan on one machine and on the cluster."""
    rule, rates = inner_rule(params), tuple(sorted(prep.rates.items()))
    what = f"train {protein}" if protein else "train"
    if prep.kept.of(FIT, protein)[0] == 0:
        raise InputError(
            f"{what}: no rows to train on (protein {protein})" if protein else f"{what}: no rows"
        )
    selections = {FIT: RowSelection(rule, FIT, protein, rates, params.train.seed)}
    if rule is not None:
        for part in (STOP_SHARE, STOP_UNSEEN):
            rows, positives = prep.kept.of(part, protein)
            if 0 < positives < rows:
                selections[part] = RowSelection(rule, part, protein, rates, params.train.seed)
            else:
                log.warning("%s: the early-stopping part %s has %d rows, %d positive: not used", what, part,
                            rows, positives)  # fmt: skip
    return selections
