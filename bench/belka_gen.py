"""A fast BELKA-format generator for benchmarks: millions of distinct molecules, no RDKit per molecule.

It reuses ``stages.generate``'s building-block libraries and its triazine template, and extends the amine library
combinatorially (di-substituted anilines and benzylamines), so positions 2 and 3 draw from about a thousand amines
each. ``molecule_smiles`` is built by string templating, not canonicalised: every string is valid SMILES that RDKit
parses, and distinct combinations give distinct strings. Each molecule is written as 3 adjacent rows (BRD4, HSA,
sEH) with consecutive ids, as in BELKA. Molecule ``m`` is a fixed bijective scramble of the combination space, so a
file of ``n`` rows is a prefix of every larger file: "append 10%" is the larger file.

Written with pyarrow in row groups of ``CHUNK_MOLECULES`` molecules; memory is bounded by one row group.
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.generate import _SUBSTITUENTS, RAW_SCHEMA, TRIAZINE, build_libraries
from stages.params import PROTEINS, Generate, load_params
from stages.split import uniform_hash

CHUNK_MOLECULES = 100_000  # one parquet row group = 300,000 rows
POSITIVE_RATE = 0.0054  # BELKA's overall rate
_DI_TEMPLATES = (
    "Nc1cc({})cc({})c1",  # 3,5-anilines
    "Nc1ccc({})c({})c1",  # 3,4-anilines
    "Nc1ccc({})cc1{}",  # 2,4-anilines
    "Nc1cc({})ccc1{}",  # 2,5-anilines
    "NCc1ccc({})c({})c1",  # 3,4-benzylamines
    "NCc1cc({})cc({})c1",  # 3,5-benzylamines
)


@cache
def libraries(
    params_file: str = "params.yaml",
) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """(bb1 listed, bb1 fragment, amines for position 2, amines for position 3) as plain string lists.

    The amines are generate.py's position-2/3 pools plus the di-substituted ones; positions 2 and 3 get disjoint
    halves, so the symmetric triazine never makes the same molecule twice.
    """
    bb1, bb2, bb3 = build_libraries(load_params(params_file).generate if params_file else Generate())
    amines = list(dict.fromkeys([*bb2.listed, *bb3.listed]))
    amines += [t.format(x, y) for t in _DI_TEMPLATES for x in _SUBSTITUENTS for y in _SUBSTITUENTS]
    amines = list(dict.fromkeys(amines))
    return bb1.listed, bb1.fragment, amines[0::2], amines[1::2]


def combination_count(params_file: str = "params.yaml") -> int:
    _, frag1, am2, am3 = libraries(params_file)
    return len(frag1) * len(am2) * len(am3)


def combinations(first: int, n: int, params_file: str = "params.yaml") -> np.ndarray:
    """Building-block indices (n, 3) of molecules ``first .. first + n``: a bijection of the combination space."""
    _, frag1, am2, am3 = libraries(params_file)
    total = len(frag1) * len(am2) * len(am3)
    if first + n > total:
        raise ValueError(f"only {total} distinct molecules available, asked for {first + n}")
    step = int(total * 0.6180339887) | 1  # golden-ratio stride: neighbours land far apart
    while math.gcd(step, total) != 1:
        step += 2
    flat = (np.arange(first, first + n, dtype=np.int64) * step + 12345) % total  # < 2**63 for 1e8 x 1e8
    a, rest = np.divmod(flat, len(am2) * len(am3))
    b, c = np.divmod(rest, len(am3))
    return np.stack([a, b, c], axis=1)


def molecule_table(first: int, n: int, first_id: int, params_file: str = "params.yaml") -> pa.Table:
    """Rows of molecules ``first .. first + n``, three per molecule, ids from ``first_id``."""
    listed1, frag1, am2, am3 = libraries(params_file)
    combos = combinations(first, n, params_file)
    smiles = [TRIAZINE.format(frag1[a], am2[b], am3[c]) for a, b, c in combos.tolist()]
    rows = np.repeat(np.arange(n), 3)
    n_rows = 3 * n
    ids = np.arange(first_id, first_id + n_rows, dtype=np.int64)
    proteins = pa.array(np.tile(np.array(PROTEINS, dtype=object), n), pa.string())
    # A learnable rule (building blocks 2 and 3 by index) plus noise: about POSITIVE_RATE positives.
    signal = ((combos[:, 1] % 7 == 0) & (combos[:, 2] % 5 == 0))[rows]
    draw = uniform_hash(ids, 2024)
    binds = ((draw < POSITIVE_RATE * 0.3) | (signal & (draw < 0.2))).astype(np.int64)
    columns = {
        "id": pa.array(ids),
        "buildingblock1_smiles": pa.array([listed1[i] for i in combos[rows, 0].tolist()], pa.string()),
        "buildingblock2_smiles": pa.array([am2[i] for i in combos[rows, 1].tolist()], pa.string()),
        "buildingblock3_smiles": pa.array([am3[i] for i in combos[rows, 2].tolist()], pa.string()),
        "molecule_smiles": pa.array(smiles, pa.string()).take(pa.array(rows)),
        "protein_name": proteins,
        "binds": pa.array(binds),
    }
    return pa.Table.from_pydict(columns, schema=RAW_SCHEMA)


def write_belka(path: Path, n_rows: int, params_file: str = "params.yaml") -> dict:
    """Write ``n_rows`` rows (rounded down to whole molecules) to ``path``; return counts."""
    n_molecules = n_rows // 3
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with pq.ParquetWriter(tmp, RAW_SCHEMA, compression="zstd") as writer:
        for start in range(0, n_molecules, CHUNK_MOLECULES):
            n = min(CHUNK_MOLECULES, n_molecules - start)
            writer.write_table(molecule_table(start, n, 3 * start, params_file), row_group_size=3 * n)
    tmp.rename(path)
    return {"rows": 3 * n_molecules, "molecules": n_molecules}
