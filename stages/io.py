"""What every stage's outputs are made of: BELKA's column names, the parquet, JSON and CSV formats, JSON artifacts
and shard names. A change here can change every output, so every stage lists this module.

Kept small on purpose: atomic writes live in :mod:`stages.atomic`, errors and their messages in
:mod:`stages.errors` (neither shapes an output, and no stage lists them), and the raw-input checks, which only
featurize needs, in :mod:`stages.raw_input`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from stages import errors
from stages.atomic import atomic_file
from stages.errors import ArtifactError, InputError

ID = "id"
BB_COLUMNS = ("buildingblock1_smiles", "buildingblock2_smiles", "buildingblock3_smiles")
SMILES = "molecule_smiles"
PROTEIN = "protein_name"
BINDS = "binds"

PARQUET_OPTIONS = {"compression": "zstd", "compression_level": 3, "write_statistics": True}


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
        raise ArtifactError(errors.missing_output(path, what)) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(errors.not_json(path, what, exc)) from None


def shard_name(index: int) -> str:
    return f"part-{index:05d}.parquet"


def list_shards(directory: str | os.PathLike[str]) -> list[Path]:
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(errors.missing_output(directory))
    return sorted(directory.glob("part-*.parquet"))
