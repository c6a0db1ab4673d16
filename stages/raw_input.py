"""Raw BELKA input, featurize's alone: the file forms it reads (parquet file or directory, CSV), the checks of a
whole input before any work (schemas, values, unique ids), and reading a checked input in fixed-size batches.

Only featurize (and on-demand scoring through it) imports this module; the stages after featurize read its
outputs, so a change here reruns featurize, and nothing after it when featurize's outputs stay the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from stages.errors import InputError
from stages.io import BB_COLUMNS, BINDS, ID, PROTEIN, SMILES

log = logging.getLogger("stages")

RAW_STRING_COLUMNS = (*BB_COLUMNS, SMILES, PROTEIN)
RAW_COLUMNS = (ID, *RAW_STRING_COLUMNS, BINDS)
_STRING_TYPES = (pa.string(), pa.large_string(), pa.string_view())
CSV_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.zst")  # compressed CSVs are decompressed while read
CHECK_BATCH_ROWS = 1 << 20  # rows per batch of the checks before any work


def _is_string(dtype: pa.DataType) -> bool:
    """A string column, or a dictionary of strings (pandas' ``category`` columns are written so)."""
    return dtype in _STRING_TYPES or (pa.types.is_dictionary(dtype) and dtype.value_type in _STRING_TYPES)


class RawInput:
    """A raw BELKA input: a parquet file, a directory of parquet files (read in sorted path order, hidden and
    ``_``-prefixed names skipped, as Spark and pyarrow write them), or a CSV file (``.csv``, or ``.csv.gz``,
    ``.csv.bz2``, ``.csv.zst``). Read with ``pyarrow.parquet`` and ``pyarrow.csv`` streaming readers
    (``pyarrow.dataset`` would import pandas, a second of start-up).

    A CSV is read as text: an empty field is a null, and ``id`` and ``binds`` become integers only after
    :func:`check_raw_input` has checked that every value is one, so a bad value is named with its row."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(
                f"{self.path}: input not found (check inputs in params.yaml, or run dvc repro / dvc pull)"
            )
        self.csv = self.path.is_file() and self.path.name.lower().endswith(CSV_SUFFIXES)
        if self.csv:
            self.files = [self.path]
            return
        if self.path.is_dir():
            self.files = sorted(
                p for p in self.path.rglob("*")
                if p.is_file() and not any(part.startswith((".", "_")) for part in p.relative_to(self.path).parts)
            )  # fmt: skip
            if not self.files:
                raise InputError(f"{self.path}: a directory without parquet files")
        else:
            self.files = [self.path]
        self.parquet = [self._parquet(file) for file in self.files]  # fails early on a truncated file

    def _parquet(self, file: Path) -> pq.ParquetFile:
        try:
            return pq.ParquetFile(file)
        except (pa.ArrowInvalid, OSError) as exc:
            hint = (
                ""
                if file == self.path
                else "; an input directory holds BELKA parquet files only (names starting with . or _ are skipped)"
            )
            raise InputError(f"{file}: not a readable parquet file ({exc}){hint}") from None

    def _csv_reader(self, columns: list[str] | None = None) -> pacsv.CSVStreamingReader:
        convert = pacsv.ConvertOptions(
            column_types=dict.fromkeys(RAW_COLUMNS, pa.string()),
            include_columns=columns,
            strings_can_be_null=True,
            null_values=[""],
        )
        try:
            return pacsv.open_csv(self.path, convert_options=convert)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{self.path}: not a readable csv file ({exc})") from None

    def schemas(self) -> list[tuple[str, pa.Schema]]:
        """(the file's name for messages, its schema) for each file."""
        if self.csv:
            return [(str(self.path), self._csv_reader().schema)]
        return [
            (str(file), parquet.schema_arrow) for file, parquet in zip(self.files, self.parquet, strict=True)
        ]

    @property
    def schema(self) -> pa.Schema:
        return self.schemas()[0][1]

    def row_count(self) -> int | None:
        """Rows in the input, from the parquet footers; None for a CSV (it would take a pass to count)."""
        return None if self.csv else sum(file.metadata.num_rows for file in self.parquet)

    def file_batches(self, index: int, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        if self.csv:
            yield from self._csv_reader(columns)
        else:
            yield from self.parquet[index].iter_batches(batch_size=batch_size, columns=columns)

    def batches(self, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        for index in range(len(self.files)):
            yield from self.file_batches(index, columns, batch_size)

    def columns_to_check(self, index: int, columns: list[str]) -> list[str]:
        """The columns of a file whose values must be read to check them: id, protein_name and binds always;
        a building block only where the parquet footer counts nulls in it or does not say (a CSV: every one).
        molecule_smiles never: an empty one is a rejected row, not a broken file."""
        always = (ID, PROTEIN, BINDS)
        if self.csv:
            return [name for name in columns if name != SMILES]
        metadata = self.parquet[index].metadata
        maybe_null = set()
        for group in range(metadata.num_row_groups):
            for chunk in map(metadata.row_group(group).column, range(metadata.num_columns)):
                stats = chunk.statistics
                if stats is None or not stats.has_null_count or stats.null_count:
                    maybe_null.add(chunk.path_in_schema)
        return [name for name in columns if name in always or (name in BB_COLUMNS and name in maybe_null)]


def check_raw_schema(schema: pa.Schema, source: str, needs_binds: bool, text: bool = False) -> list[str]:
    """Check a raw BELKA schema; return the columns to read. Unknown extra columns are a warning. ``text``: a CSV,
    whose id and binds are checked value by value instead (:func:`check_raw_input`)."""
    required = [ID, *RAW_STRING_COLUMNS] + ([BINDS] if needs_binds else [])
    for name in required:
        if name not in schema.names:
            raise InputError(
                f"{source}: missing column {name!r} (a BELKA file has {', '.join(RAW_COLUMNS)}; "
                f"found {', '.join(schema.names) or 'no columns'})"
            )
    if not text and not pa.types.is_integer(schema.field(ID).type):
        raise InputError(f"{source}: column 'id' must be integer, found {schema.field(ID).type}")
    for name in RAW_STRING_COLUMNS:
        if not _is_string(schema.field(name).type):
            raise InputError(f"{source}: column {name!r} must be string, found {schema.field(name).type}")
    if (
        not text
        and BINDS in schema.names
        and not (
            pa.types.is_integer(schema.field(BINDS).type) or pa.types.is_boolean(schema.field(BINDS).type)
        )
    ):
        raise InputError(f"{source}: column 'binds' must be integer 0/1, found {schema.field(BINDS).type}")
    extra = [name for name in schema.names if name not in RAW_COLUMNS]
    if extra:
        log.warning("%s: ignoring unknown column(s) %s", source, ", ".join(extra))
    return [name for name in RAW_COLUMNS if name in schema.names and (name != BINDS or needs_binds)]


def as_int(column: str) -> pl.Expr:
    """A column as 64-bit integers; null where a value is not one (text, or an unsigned value past 2^63 - 1)."""
    return pl.col(column).cast(pl.Int64, strict=False)


@dataclass(frozen=True)
class ColumnRule:
    """What every value of a column must be; ``broken`` is true on the rows that are not."""

    column: str
    expected: str
    broken: pl.Expr


def id_rule() -> ColumnRule:
    return ColumnRule(ID, "a 64-bit integer", pl.col(ID).is_null() | as_int(ID).is_null())


def protein_rule() -> ColumnRule:
    protein = pl.col(PROTEIN)
    return ColumnRule(
        PROTEIN,
        "a protein name without surrounding spaces",
        protein.is_null() | (protein == "") | (protein.str.strip_chars() != protein),
    )


def raw_rules(columns: list[str]) -> list[ColumnRule]:
    """The file-level rules of a BELKA file, in the order they are reported, for the columns read."""
    rules = [id_rule()]
    rules += [ColumnRule(bb, "a building block's SMILES", pl.col(bb).is_null()) for bb in BB_COLUMNS]
    rules.append(protein_rule())
    rules.append(ColumnRule(BINDS, "0 or 1", as_int(BINDS).is_null() | ~as_int(BINDS).is_in([0, 1])))
    return [rule for rule in rules if rule.column in columns]


@dataclass
class Breaches:
    """The rows of one file that break one rule: how many, and the first of them in file order."""

    rule: ColumnRule
    count: int = 0
    first_row: int = 0
    first_id: int | None = None
    first_value: Any = None

    def add(self, frame: pl.DataFrame, offset: int) -> None:
        broken = frame.select(self.rule.broken.fill_null(True)).to_series()
        found = int(broken.sum())
        if found and not self.count:
            row = int(broken.arg_true()[0])
            self.first_row, self.first_value = offset + row, frame[self.rule.column][row]
            self.first_id = frame.select(as_int(ID))[ID][row] if ID in frame.columns else None
        self.count += found

    def message(self, source: str) -> str:
        found = "an empty value" if self.first_value is None else repr(self.first_value)
        where = f"id {self.first_id}" if self.first_id is not None else f"row {self.first_row + 1}"
        rows = f"{self.count} row{'s' if self.count > 1 else ''} in all"
        return f"{source}: column {self.rule.column!r} must be {self.rule.expected} on every row, found {found} at {where} ({rows})"


def first_breach(frames: Iterator[pl.DataFrame], rules: list[ColumnRule]) -> Breaches | None:
    """The first rule (in ``rules`` order) that rows of ``frames`` (one file, in order) break, with its count."""
    tallies = [Breaches(rule) for rule in rules]
    offset = 0
    for frame in frames:
        for tally in tallies:
            tally.add(frame, offset)
        offset += len(frame)
    return next((tally for tally in tallies if tally.count), None)


@dataclass
class IdOrder:
    """Whether the ids seen so far strictly increase (then they are unique): O(1) memory, the usual case (Kaggle's
    files, and Spark's parts of a file sorted by id)."""

    last: int | None = None
    increasing: bool = True
    rows: int = 0

    def add(self, ids: np.ndarray) -> None:
        self.rows += len(ids)
        if not self.increasing or not len(ids):
            return
        if (self.last is not None and ids[0] <= self.last) or bool(np.any(ids[1:] <= ids[:-1])):
            self.increasing = False
        self.last = int(ids[-1])


def repeated_ids(chunks: Iterator[np.ndarray], rows: int) -> np.ndarray:
    """The ids that appear on more than one row, sorted: every id in one array, sorted in place (8 bytes an id,
    plus one byte an id while comparing neighbours)."""
    ids = np.empty(rows, dtype=np.int64)
    filled = 0
    for chunk in chunks:
        ids[filled : filled + len(chunk)] = chunk
        filled += len(chunk)
    ids = ids[:filled]
    ids.sort()
    return np.unique(ids[1:][ids[1:] == ids[:-1]])


def check_raw_input(raw: RawInput, needs_binds: bool) -> list[str]:
    """Check a whole raw input before any work; return the columns to read. Every file's schema (columns and
    types); then each file's values, file by file: ids, building blocks, protein names and labels must be present
    and well-formed (a parquet footer's null counts spare reading a building block that has none). The first
    problem found is one error naming the file, the column, the first offending id (or row) and how many rows
    have it. Last, ids must be unique across the files: a check in O(1) memory while they increase, else one
    sort of all ids."""
    schemas = raw.schemas()
    columns: list[str] = []
    for source, schema in schemas:
        columns = check_raw_schema(schema, source, needs_binds, text=raw.csv)
    order = IdOrder()

    def frames(index: int, to_read: list[str]) -> Iterator[pl.DataFrame]:
        for batch in raw.file_batches(index, to_read, CHECK_BATCH_ROWS):
            frame = _text_frame(batch)
            ids = frame.select(as_int(ID))[ID]
            if order.increasing and not ids.null_count():  # a null or non-integer id fails the file anyway
                order.add(ids.to_numpy())
            else:
                order.rows += len(frame)
            yield frame

    for index, (source, _) in enumerate(schemas):
        to_read = raw.columns_to_check(index, columns)
        breach = first_breach(frames(index, to_read), raw_rules(to_read))
        if breach is not None:
            raise InputError(breach.message(source))
    if order.rows == 0:
        raise InputError(f"{raw.path}: has no rows (expected BELKA rows with {', '.join(RAW_COLUMNS)})")
    if not order.increasing:
        id_chunks = (
            _text_frame(batch).select(as_int(ID))[ID].to_numpy()
            for index in range(len(raw.files))
            for batch in raw.file_batches(index, [ID], CHECK_BATCH_ROWS)
        )
        check_unique_ids(id_chunks, order.rows, str(raw.path), len(raw.files))
    return columns


def check_unique_ids(chunks: Iterator[np.ndarray], rows: int, source: str, files: int = 1) -> None:
    repeated = repeated_ids(chunks, rows)
    if len(repeated):
        across = f" across its {files} files" if files > 1 else ""
        raise InputError(
            f"{source}: column 'id' must be unique{across}, found {len(repeated)} id(s) on more than one row "
            f"(first: {', '.join(map(str, repeated[:5].tolist()))})"
        )


def raw_columns(path: str | os.PathLike[str]) -> list[str]:
    return RawInput(path).schema.names


def checked_input(path: str | os.PathLike[str], needs_binds: bool) -> tuple[RawInput, list[str]]:
    """A raw input whose whole content was checked (:func:`check_raw_input`), and the columns to read."""
    raw = RawInput(path)
    return raw, check_raw_input(raw, needs_binds)


def iter_raw_batches(
    path: str | os.PathLike[str], batch_rows: int, needs_binds: bool
) -> Iterator[pl.DataFrame]:
    """Stream a raw BELKA file (parquet file, directory of parquet files, or csv) in batches of exactly
    ``batch_rows`` rows (the last may be shorter), so shard boundaries depend on the data only. The whole input is
    checked first (:func:`check_raw_input`), so what is accepted never depends on ``batch_rows``."""
    raw, columns = checked_input(path, needs_binds)
    yield from read_batches(raw, columns, batch_rows)


def read_batches(raw: RawInput, columns: list[str], batch_rows: int) -> Iterator[pl.DataFrame]:
    """The ``columns`` of a checked input (:func:`checked_input`) in batches of exactly ``batch_rows`` rows (the
    last may be shorter). Memory holds one batch and one read-ahead of at most 65,536 rows."""
    pending: list[pl.DataFrame] = []
    pending_rows = 0
    total = 0
    try:
        for batch in raw.batches(columns, min(batch_rows, 1 << 16)):
            pending.append(_raw_frame(batch))
            pending_rows += batch.num_rows
            while pending_rows >= batch_rows:
                frame = pl.concat(pending, rechunk=True)
                yield frame.slice(0, batch_rows)
                pending = [frame.slice(batch_rows)]
                pending_rows -= batch_rows
                total += batch_rows
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, pl.exceptions.PolarsError) as exc:
        raise InputError(f"{raw.path}: cannot be read after {total} rows ({exc})") from None
    if pending_rows:
        yield pl.concat(pending, rechunk=True)


def _text_frame(batch: pa.RecordBatch) -> pl.DataFrame:
    """A batch as polars, string columns (a dictionary of strings too) as String, id and binds as they are."""
    frame = pl.from_arrow(batch)
    assert isinstance(frame, pl.DataFrame)
    return frame.cast({name: pl.String for name in RAW_STRING_COLUMNS if name in frame.columns})


def _raw_frame(batch: pa.RecordBatch) -> pl.DataFrame:
    """A checked batch in the types the stages use (the casts cannot fail: :func:`check_raw_input` ran)."""
    frame = _text_frame(batch)
    return frame.cast({name: pl.Int64 for name in (ID, BINDS) if name in frame.columns})
