"""The one place for I/O that shapes outputs: raw BELKA files, parquet shards, JSON artifacts, atomic writes.

Logging, progress and command-line errors live in :mod:`stages.cli`, which no stage lists as a dep.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

log = logging.getLogger("stages")

ID = "id"
BB_COLUMNS = ("buildingblock1_smiles", "buildingblock2_smiles", "buildingblock3_smiles")
SMILES = "molecule_smiles"
PROTEIN = "protein_name"
BINDS = "binds"
RAW_STRING_COLUMNS = (*BB_COLUMNS, SMILES, PROTEIN)
RAW_COLUMNS = (ID, *RAW_STRING_COLUMNS, BINDS)

PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "write_statistics": True}


class InputError(ValueError):
    """An input file is missing, unreadable or not in the expected format; the message names file and column."""


# ---------------------------------------------------------------------------------------------- atomic writes


_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"
STALE_FOREIGN_SECONDS = 24 * 3600


def _tmp_name(path: Path) -> Path:
    """``.name.tmp-HOST-PID-RANDOM``: unique per writer, so writers sharing a directory (two clones or DVC
    experiment workers sharing the feature cache) never write to, or clean up, each other's temporaries."""
    return path.with_name(f".{path.name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")


def _writer_alive(tmp: Path) -> bool:
    """Whether the process that made ``tmp`` may still be writing it. Only a dead writer's temporaries are
    stale: one of this host whose PID is gone, or one of another host (or unknown form) untouched for a day."""
    host, _, pid = tmp.name.rpartition(".tmp-")[2].rpartition("-")[0].rpartition("-")
    if host != _HOST or not pid.isdigit():
        try:
            return time.time() - tmp.lstat().st_mtime < STALE_FOREIGN_SECONDS
        except FileNotFoundError:
            return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    return True


def remove_stale_tmp(path: Path) -> None:
    """Remove what a killed writer left beside ``path`` (``.name.tmp-HOST-PID-RANDOM``), never a live one's."""
    for stale in path.parent.glob(f".{path.name}.tmp-*"):
        if _writer_alive(stale):
            continue
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def scratch_dir(path: str | os.PathLike[str]) -> Path:
    """A new empty directory beside ``path``, named like an atomic write's temporary (unique to this writer);
    what dead writers left there is removed first. The caller removes it when done."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = _tmp_name(path)
    tmp.mkdir()
    return tmp


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = _tmp_name(path)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory; it replaces ``path`` only when the block succeeds.

    A killed run leaves only ``.name.tmp-HOST-PID-RANDOM`` behind, which DVC does not take for the output and the
    next run removes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(path)
    tmp = _tmp_name(path)
    tmp.mkdir()
    try:
        yield tmp
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_parquet(table: pa.Table | pl.DataFrame, path: str | os.PathLike[str]) -> None:
    if isinstance(table, pl.DataFrame):
        table = table.to_arrow()
    with atomic_file(path) as tmp:
        pq.write_table(table, tmp, **PARQUET_OPTIONS)


def write_csv(frame: pl.DataFrame, path: str | os.PathLike[str]) -> None:
    with atomic_file(path) as tmp:
        frame.write_csv(tmp)


# ---------------------------------------------------------------------------------------------- JSON artifacts


class ArtifactError(ValueError):
    """A model, encoder or scaler artifact is missing, of another schema version, or altered."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def manifest_version(directory: str | os.PathLike[str]) -> int:
    """When ``directory/manifest.json`` last changed (0 if missing): a key for caching what was loaded from it."""
    manifest = Path(directory) / "manifest.json"
    return manifest.stat().st_mtime_ns if manifest.exists() else 0


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(f"{path}: {what} not found (run the stage that writes it: dvc repro)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path}: {what} is not valid JSON ({exc})") from None


# ---------------------------------------------------------------------------------------------- raw BELKA files

_STRING_TYPES = (pa.string(), pa.large_string(), pa.string_view())


class RawInput:
    """A raw BELKA input: a parquet file, a directory of parquet files (read in sorted path order, hidden and
    ``_``-prefixed names skipped, as Spark and pyarrow write them), or a CSV file. Read with ``pyarrow.parquet``
    and ``pyarrow.csv`` streaming readers (``pyarrow.dataset`` would import pandas, a second of start-up)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise InputError(
                f"{self.path}: input not found (check inputs in params.yaml, or run dvc repro / dvc pull)"
            )
        self.csv = self.path.is_file() and self.path.suffix.lower() == ".csv"
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
            where = f" ({file.name})" if file != self.path else ""
            raise InputError(f"{self.path}: not a readable parquet file{where} ({exc})") from None

    def _csv_reader(self, columns: list[str] | None = None) -> pacsv.CSVStreamingReader:
        convert = pacsv.ConvertOptions(
            column_types={ID: pa.int64(), BINDS: pa.int64()}, include_columns=columns
        )
        try:
            return pacsv.open_csv(self.path, convert_options=convert)
        except (pa.ArrowInvalid, OSError) as exc:
            raise InputError(f"{self.path}: not a readable csv file ({exc})") from None

    @property
    def schema(self) -> pa.Schema:
        return self._csv_reader().schema if self.csv else self.parquet[0].schema_arrow

    def row_count(self) -> int | None:
        """Rows in the input, from the parquet footers; None for a CSV (it would take a pass to count)."""
        return None if self.csv else sum(file.metadata.num_rows for file in self.parquet)

    def batches(self, columns: list[str], batch_size: int) -> Iterator[pa.RecordBatch]:
        if self.csv:
            yield from self._csv_reader(columns)
            return
        for file, parquet in zip(self.files, self.parquet, strict=True):
            if file != self.files[0]:
                check_raw_schema(parquet.schema_arrow, f"{self.path} ({file.name})", BINDS in columns)
            yield from parquet.iter_batches(batch_size=batch_size, columns=columns)


def check_raw_schema(schema: pa.Schema, source: str, needs_binds: bool) -> list[str]:
    """Check a raw BELKA schema; return the columns to read. Unknown extra columns are a warning."""
    required = [ID, *RAW_STRING_COLUMNS] + ([BINDS] if needs_binds else [])
    for name in required:
        if name not in schema.names:
            raise InputError(
                f"{source}: missing column {name!r} (a BELKA file has {', '.join(RAW_COLUMNS)}; "
                f"found {', '.join(schema.names) or 'no columns'})"
            )
    if not pa.types.is_integer(schema.field(ID).type):
        raise InputError(f"{source}: column 'id' must be integer, found {schema.field(ID).type}")
    for name in RAW_STRING_COLUMNS:
        if schema.field(name).type not in _STRING_TYPES:
            raise InputError(f"{source}: column {name!r} must be string, found {schema.field(name).type}")
    if BINDS in schema.names and not (
        pa.types.is_integer(schema.field(BINDS).type) or pa.types.is_boolean(schema.field(BINDS).type)
    ):
        raise InputError(f"{source}: column 'binds' must be integer 0/1, found {schema.field(BINDS).type}")
    extra = [name for name in schema.names if name not in RAW_COLUMNS]
    if extra:
        log.warning("%s: ignoring unknown column(s) %s", source, ", ".join(extra))
    return [name for name in RAW_COLUMNS if name in schema.names and (name != BINDS or needs_binds)]


def raw_columns(path: str | os.PathLike[str]) -> list[str]:
    return RawInput(path).schema.names


def raw_row_count(path: str | os.PathLike[str]) -> int | None:
    return RawInput(path).row_count()


def iter_raw_batches(
    path: str | os.PathLike[str], batch_rows: int, needs_binds: bool
) -> Iterator[pl.DataFrame]:
    """Stream a raw BELKA file (parquet file, directory of parquet files, or csv) in batches of exactly
    ``batch_rows`` rows (the last may be shorter), so shard boundaries depend on the data only. Memory holds one
    batch and one read-ahead of at most 65,536 rows."""
    raw = RawInput(path)
    columns = check_raw_schema(raw.schema, str(raw.path), needs_binds)
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    total = 0
    try:
        for batch in raw.batches(columns, min(batch_rows, 1 << 16)):
            pending.append(batch)
            pending_rows += batch.num_rows
            while pending_rows >= batch_rows:
                table = pa.Table.from_batches(pending).combine_chunks()
                yield _raw_frame(table.slice(0, batch_rows))
                rest = table.slice(batch_rows)
                pending, pending_rows = rest.to_batches(), rest.num_rows
                total += batch_rows
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError) as exc:
        raise InputError(f"{raw.path}: cannot be read after {total} rows ({exc})") from None
    if pending_rows:
        yield _raw_frame(pa.Table.from_batches(pending))
        total += pending_rows
    if total == 0:
        raise InputError(f"{raw.path}: has no rows (expected BELKA rows with {', '.join(RAW_COLUMNS)})")


def _raw_frame(table: pa.Table) -> pl.DataFrame:
    frame = pl.from_arrow(table)
    assert isinstance(frame, pl.DataFrame)
    casts = {name: pl.String for name in RAW_STRING_COLUMNS}
    casts[ID] = pl.Int64
    if BINDS in frame.columns:
        casts[BINDS] = pl.Int64
    return frame.cast(casts)


# ---------------------------------------------------------------------------------------------- shards


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def list_shards(directory: str | os.PathLike[str]) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: not found (run the stage that writes it: dvc repro)")
    return sorted(directory.glob("part-*.parquet"))
