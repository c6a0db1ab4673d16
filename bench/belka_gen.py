"""A fast BELKA-format generator for benchmarks: millions of distinct molecules, no RDKit per molecule.

It reuses ``stages.generate``'s building-block libraries and its triazine template, and extends the amine library
combinatorially (di-substituted anilines and benzylamines), so positions 2 and 3 draw from about a thousand amines
each. ``molecule_smiles`` is built by string templating, not canonicalised: every string is valid SMILES that RDKit
parses, and distinct combinations give distinct strings. Each molecule is written as 3 adjacent rows (BRD4, HSA,
sEH) with consecutive ids, as in BELKA. Molecule ``m`` is a fixed bijective scramble of the combination space, so a
file of ``n`` rows is a prefix of every larger file: "append 10%" is the larger file.

Written with pyarrow in row groups of ``CHUNK_MOLECULES`` molecules; memory is bounded by one row group.

``belka_libraries()`` and ``write_shaped`` give BELKA's own shape (``bench/scale.py``): 271 / 693 / 872 building
blocks in positions 1 / 2 / 3 for training, 965 more that only the test set uses, about 0.5% positives, and a test
file like Kaggle's: "share" molecules (training blocks only, not in training, 3 rows each) and "non-share" ones
(test-only blocks only, one row each), without ``binds``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.generate import (
    _SUBSTITUENTS,
    RAW_SCHEMA,
    TRIAZINE,
    amine_library,
    amino_acid_library,
    build_libraries,
    dna_linked_fragment,
    fmoc_protected,
)
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
_MORE_DI_TEMPLATES = (  # BELKA's shape needs more amines than the six templates give
    "NCc1ccc({})cc1{}",  # 2,4-benzylamines
    "NCCc1ccc({})c({})c1",  # 3,4-phenethylamines
)
BELKA_TRAIN_BLOCKS = (271, 693, 872)  # distinct building blocks in training, positions 1 / 2 / 3
BELKA_TEST_ONLY_BLOCKS = (
    70,
    447,
    448,
)  # 965 blocks that only the test set uses (Kaggle's count; split assumed)


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


@dataclass(frozen=True)
class Library:
    """Building blocks by position: position 1 as listed (Fmoc) and as in the molecule, positions 2 and 3."""

    listed1: list[str]
    frag1: list[str]
    pos2: list[str]
    pos3: list[str]

    @property
    def sizes(self) -> tuple[int, int, int]:
        return len(self.frag1), len(self.pos2), len(self.pos3)


@cache
def belka_libraries() -> tuple[Library, Library]:
    """(training blocks, test-only blocks) in BELKA's numbers (``BELKA_TRAIN_BLOCKS``, ``BELKA_TEST_ONLY_BLOCKS``).

    Position 1 is generate.py's amino acids plus di-substituted phenylalanines; positions 2 and 3 take disjoint runs
    of the amines (generate.py's and the templated ones), so no two combinations make the same molecule.
    """
    di_phenylalanines = [f"N[C@@H](Cc1ccc({x})c({y})c1)C(=O)O" for x in _SUBSTITUENTS for y in _SUBSTITUENTS]
    acids = list(dict.fromkeys([*amino_acid_library(), *di_phenylalanines]))
    amines = list(dict.fromkeys(amine_library()))
    amines += [
        t.format(x, y)
        for t in _DI_TEMPLATES + _MORE_DI_TEMPLATES
        for x in _SUBSTITUENTS
        for y in _SUBSTITUENTS
    ]
    amines = list(dict.fromkeys(amines))
    (n1, n2, n3), (t1, t2, t3) = BELKA_TRAIN_BLOCKS, BELKA_TEST_ONLY_BLOCKS
    if len(acids) < n1 + t1 or len(amines) < n2 + n3 + t2 + t3:
        raise ValueError(f"{len(acids)} acids and {len(amines)} amines are too few for BELKA's shape")

    def library(first_acid: int, n_acids: int, first_amine: int, n_pos2: int, n_pos3: int) -> Library:
        chosen = acids[first_acid : first_acid + n_acids]
        return Library(
            [fmoc_protected(a) for a in chosen],
            [dna_linked_fragment(a) for a in chosen],
            amines[first_amine : first_amine + n_pos2],
            amines[first_amine + n_pos2 : first_amine + n_pos2 + n_pos3],
        )

    return library(0, n1, 0, n2, n3), library(n1, t1, n2 + n3, t2, t3)


def combination_count(params_file: str = "params.yaml") -> int:
    _, frag1, am2, am3 = libraries(params_file)
    return len(frag1) * len(am2) * len(am3)


def scrambled(first: int, n: int, sizes: tuple[int, int, int]) -> np.ndarray:
    """Building-block indices (n, 3) of molecules ``first .. first + n`` of a combination space of ``sizes``: a
    bijection, so distinct molecules get distinct combinations."""
    total = math.prod(sizes)
    if first + n > total:
        raise ValueError(f"only {total} distinct molecules available, asked for {first + n}")
    step = int(total * 0.6180339887) | 1  # golden-ratio stride: neighbours land far apart
    while math.gcd(step, total) != 1:
        step += 2
    flat = (np.arange(first, first + n, dtype=np.int64) * step + 12345) % total  # < 2**63 for 1e8 x 1e8
    a, rest = np.divmod(flat, sizes[1] * sizes[2])
    b, c = np.divmod(rest, sizes[2])
    return np.stack([a, b, c], axis=1)


def combinations(first: int, n: int, params_file: str = "params.yaml") -> np.ndarray:
    """Building-block indices (n, 3) of molecules ``first .. first + n``: a bijection of the combination space."""
    _, frag1, am2, am3 = libraries(params_file)
    return scrambled(first, n, (len(frag1), len(am2), len(am3)))


def rows_table(
    library: Library,
    combos: np.ndarray,
    first_id: int,
    rows_per_molecule: int = 3,
    signal_rate: float | None = 0.2,
) -> pa.Table:
    """Rows of the molecules ``combos`` (building-block indices into ``library``), ids from ``first_id``: 3 rows a
    molecule (BRD4, HSA, sEH), or 1 (the proteins in turn). Without ``signal_rate``: no ``binds`` (a test file)."""
    n = len(combos)
    smiles = [
        TRIAZINE.format(library.frag1[a], library.pos2[b], library.pos3[c]) for a, b, c in combos.tolist()
    ]
    rows = np.repeat(np.arange(n), rows_per_molecule)
    ids = np.arange(first_id, first_id + len(rows), dtype=np.int64)
    protein_index = np.arange(len(rows)) % len(PROTEINS) if rows_per_molecule == 3 else rows % len(PROTEINS)
    columns = {
        "id": pa.array(ids),
        "buildingblock1_smiles": pa.array(
            [library.listed1[i] for i in combos[rows, 0].tolist()], pa.string()
        ),
        "buildingblock2_smiles": pa.array([library.pos2[i] for i in combos[rows, 1].tolist()], pa.string()),
        "buildingblock3_smiles": pa.array([library.pos3[i] for i in combos[rows, 2].tolist()], pa.string()),
        "molecule_smiles": pa.array(smiles, pa.string()).take(pa.array(rows)),
        "protein_name": pa.array(np.array(PROTEINS, dtype=object)[protein_index], pa.string()),
    }
    schema = RAW_SCHEMA
    if signal_rate is None:
        schema = RAW_SCHEMA.remove(RAW_SCHEMA.get_field_index("binds"))
    else:
        # A learnable rule (building blocks 2 and 3 by index) plus noise: about POSITIVE_RATE positives.
        signal = ((combos[:, 1] % 7 == 0) & (combos[:, 2] % 5 == 0))[rows]
        draw = uniform_hash(ids, 2024)
        binds = (draw < POSITIVE_RATE * 0.3) | (signal & (draw < signal_rate))
        columns["binds"] = pa.array(binds.astype(np.int64))
    return pa.Table.from_pydict(columns, schema=schema)


def molecule_table(first: int, n: int, first_id: int, params_file: str = "params.yaml") -> pa.Table:
    """Rows of molecules ``first .. first + n``, three per molecule, ids from ``first_id``."""
    listed1, frag1, am2, am3 = libraries(params_file)
    return rows_table(Library(listed1, frag1, am2, am3), combinations(first, n, params_file), first_id)


def write_tables(path: Path, tables: Iterable[pa.Table]) -> None:
    """Write ``tables`` as the row groups of one parquet file (zstd), through a temporary name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = None
    try:
        for table in tables:
            writer = writer or pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table, row_group_size=table.num_rows)
    finally:
        if writer:
            writer.close()
    if writer is None:
        raise ValueError(f"{path}: no rows to write")
    tmp.rename(path)


def write_belka(path: Path, n_rows: int, params_file: str = "params.yaml") -> dict:
    """Write ``n_rows`` rows (rounded down to whole molecules) to ``path``; return counts."""
    n_molecules = n_rows // 3
    starts = range(0, n_molecules, CHUNK_MOLECULES)
    write_tables(
        path, (molecule_table(s, min(CHUNK_MOLECULES, n_molecules - s), 3 * s, params_file) for s in starts)
    )
    return {"rows": 3 * n_molecules, "molecules": n_molecules}


# BELKA's signal keeps about 0.5% positives with the rule above: 1/35 of the combinations x 0.13, plus the noise.
BELKA_SIGNAL_RATE = 0.13
KAGGLE_TEST_SHARE = 369_039 / 98_415_610  # test "share" molecules per training molecule
KAGGLE_TEST_NON_SHARE = 508_983 / 98_415_610  # test "non-share" molecules per training molecule
FIRST_TEST_ID = 295_246_830  # Kaggle's test ids follow the training rows


def write_shaped_train(path: Path, n_rows: int) -> dict:
    """BELKA-shaped training rows: molecules ``0 .. n_rows // 3`` of the training blocks' space, 3 rows each (a
    prefix of every larger file, so appending rows is writing a larger one)."""
    train, _ = belka_libraries()
    n_molecules = n_rows // 3

    def chunks() -> Iterator[pa.Table]:
        for first in range(0, n_molecules, CHUNK_MOLECULES):
            combos = scrambled(first, min(CHUNK_MOLECULES, n_molecules - first), train.sizes)
            yield rows_table(train, combos, 3 * first, signal_rate=BELKA_SIGNAL_RATE)

    write_tables(path, chunks())
    return {"rows": 3 * n_molecules, "molecules": n_molecules}


def write_shaped_test(path: Path, train_molecules: int, version: int = 0) -> dict:
    """A test file like Kaggle's for a training set of ``train_molecules``: share molecules (training blocks, drawn
    from the far end of their space, never in training) x 3 proteins, then non-share molecules (test-only blocks)
    one row each, in Kaggle's proportions. Another ``version`` draws other molecules of both kinds (new test data)."""
    train, test_only = belka_libraries()
    share = max(1, round(train_molecules * KAGGLE_TEST_SHARE))
    non_share = max(1, round(train_molecules * KAGGLE_TEST_NON_SHARE))
    share_first = math.prod(train.sizes) - (version + 1) * share
    if share_first < train_molecules * 2:  # room for the training molecules and appends to them
        raise ValueError(f"{train_molecules} training molecules leave no room for test version {version}")
    tables = [
        rows_table(train, scrambled(share_first, share, train.sizes), FIRST_TEST_ID, signal_rate=None),
        rows_table(test_only, scrambled(version * non_share, non_share, test_only.sizes), FIRST_TEST_ID + 3 * share,
                   rows_per_molecule=1, signal_rate=None),
    ]  # fmt: skip
    write_tables(path, tables)
    return {"rows": 3 * share + non_share, "share_molecules": share, "non_share_molecules": non_share}
