"""Generate a deterministic BELKA-format data set, so a fresh clone runs the pipeline with no download.

The chemistry follows BELKA's DNA-encoded library: a 1,3,5-triazine core carrying three building blocks.
Building block 1 is an amino acid (L and D forms of many), listed Fmoc-protected as Kaggle writes it; in the
molecule its amine sits on the triazine and its acid is the DNA-linked amide ``C(=O)N[Dy]``. Building blocks 2 and 3
are amines drawn from one pool, as in BELKA (the triazine is symmetric, so swapping them is the same molecule).
Every training molecule appears once per protein, in the order BRD4, HSA, sEH.

Labels come from a hidden structure-activity rule: each protein weighs substructures of building block 1 and, with
one weight vector for both, of the two amines (for BRD4 also an aryl amine next to an aryl-halide amine, in either
order), plus noise, and the top ``positive_rate`` (protein-specific, sEH highest as in BELKA) binds. The rule is
symmetric in the two amines, so a label is a function of the molecule, not of the order its amines were drawn in. A
model can learn it from fingerprints, including for building blocks it never saw.

Like BELKA's test set, the test set has molecules made only of building blocks seen in training (all three
proteins each) and molecules made only of test-only building blocks (one protein each): no test molecule mixes
seen and unseen blocks. The test set's labels are written apart (``--test-labels``: id, protein_name, binds and
Kaggle's group, share or non_share), for a leaderboard that the pipeline never reads.

Molecules are drawn in fixed chunks, each from its own seeded generator, and combinations are assigned to train or
test by a hash, so growing ``train_molecules`` appends rows to train and leaves test untouched (scenario A), and
changing the test sizes leaves train untouched (scenario C).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
from rdkit import Chem
from rdkit.Chem import AllChem

from stages import engine
from stages.cli import Command
from stages.io import BB_COLUMNS, BINDS, ID, PROTEIN, SMILES, write_parquet
from stages.params import PROTEINS, Generate, Params, workers

log = logging.getLogger("stages.generate")

FIRST_TEST_ID = 295_246_830  # Kaggle's test ids start after the 295,246,830 training rows
CHUNK = 1_000
SMILES_CHUNK = 5_000  # molecules canonicalised per task of the process pool
# BELKA's positive rates per protein relative to the overall 0.54%: BRD4 0.46%, HSA 0.42%, sEH 0.74%.
RELATIVE_RATE = {"BRD4": 0.46 / 0.54, "HSA": 0.42 / 0.54, "sEH": 0.74 / 0.54}
FMOC = "O=C(OCC1c2ccccc2-c2ccccc21)"
TRIAZINE = "c%98({})nc({})nc({})n%98"

_SUBSTITUENTS = [
    "F", "Cl", "Br", "C", "OC", "C#N", "C(F)(F)F", "C(=O)OC", "S(C)(=O)=O",
    "C(N)=O", "[N+](=O)[O-]", "OC(F)(F)F", "CC", "C(C)C", "O", "I", "N(C)C", "C(C)=O",
]  # fmt: skip
_AMINES_FIXED = [
    "Nc1nccs1", "Nc1ccn(C)n1", "Nc1cnc2ccccc2c1", "Nc1ccc2[nH]ccc2c1", "Nc1ncccn1", "Nc1cc(C)on1",
    "Nc1nc(C)cs1", "Nc1ccc2c(c1)OCO2", "Nc1cccc2ccccc12", "Nc1ccc2ncccc2c1", "Nc1cccnc1", "Nc1ccncc1",
    "NCC1CC1", "NCCc1ccccc1", "NCCN1CCOCC1", "NCC(C)C", "NC1CCCCC1", "NC1CCOCC1", "NCCO", "NCCOC",
    "NCC(F)(F)F", "NCc1ccco1", "NCc1cccs1", "NCc1ccncc1", "NC(C)c1ccccc1", "NCCS(C)(=O)=O", "NC1CC1",
    "NCC#C", "NCCCn1ccnc1", "NCC1CCCO1", "NCCC(=O)OC", "NCc1cn(C)nc1", "NC1CCN(C(=O)OC(C)(C)C)CC1",
    "NCC(=O)N(C)C", "NCc1ccc2c(c1)OCO2", "NC(C)(C)C", "NCC1CCCCC1", "NCCc1ccc(O)cc1", "NCc1nccs1",
]  # fmt: skip
_AMINO_ACIDS_FIXED = [
    "NCC(=O)O", "N[C@@H](C)C(=O)O", "N[C@@H](C(C)C)C(=O)O", "N[C@@H](CC(C)C)C(=O)O", "N[C@@H]([C@@H](C)CC)C(=O)O",
    "N[C@@H](Cc1ccccc1)C(=O)O", "N[C@@H](Cc1ccc(O)cc1)C(=O)O", "N[C@@H](Cc1c[nH]c2ccccc12)C(=O)O",
    "N[C@@H](CO)C(=O)O", "N[C@@H]([C@@H](C)O)C(=O)O", "N[C@@H](CCSC)C(=O)O", "N[C@@H](CC(N)=O)C(=O)O",
    "N[C@@H](CCC(N)=O)C(=O)O", "N[C@@H](CC(=O)O)C(=O)O", "N[C@@H](CCC(=O)O)C(=O)O", "N[C@H](C)C(=O)O",
    "N[C@H](Cc1ccccc1)C(=O)O", "NCCC(=O)O", "NCCCC(=O)O", "Nc1ccc(C(=O)O)cc1", "Nc1cccc(C(=O)O)c1",
    "Nc1cccc(C(=O)O)c1C(=O)O", "NCc1ccc(C(=O)O)cc1", "NC1CCC(C(=O)O)CC1", "NC1(C(=O)O)CCCC1",
    "N[C@@H](c1ccccc1)C(=O)O", "N[C@@H](Cc1cccs1)C(=O)O", "N[C@@H](CC1CCCCC1)C(=O)O", "Nc1ccc(C(=O)O)cn1",
    "Nc1cc(C(=O)O)ccc1Cl", "N[C@@H](Cc1ccncc1)C(=O)O", "N[C@@H](CC#C)C(=O)O",
]  # fmt: skip
# Substructures the hidden rule weighs (on the building blocks as listed).
_SAR_SMARTS = [
    "c[F,Cl,Br,I]", "C(F)(F)F", "[CX3](=O)[OX2H1]", "S(=O)(=O)", "c1ccccc1", "[nX2]", "C#N", "[N+](=O)[O-]",
    "[OX2H]", "[CX3](=O)O[CX4]", "[NX3;H2,H1;!$(NC=O)]C", "s1cccc1", "[CH3]", "[R2]", "C(=O)N", "[OX2]([CX4])c",
]  # fmt: skip


def amine_library() -> list[str]:
    """About 190 amines: substituted anilines, benzyl- and phenethylamines, aminopyridines and -thiazoles, and a
    fixed set of heteroaryl and alkyl amines (BELKA's positions 2 and 3 draw from 693 and 872)."""
    anilines = [t.format(x) for x in _SUBSTITUENTS for t in ("Nc1ccc({})cc1", "Nc1cccc({})c1", "Nc1ccccc1{}")]
    benzyl = [
        t.format(x) for x in _SUBSTITUENTS for t in ("NCc1ccc({})cc1", "NCc1cccc({})c1", "NCc1ccccc1{}")
    ]
    phenethyl = [f"NCCc1ccc({x})cc1" for x in _SUBSTITUENTS]
    pyridyl = [f"Nc1ccc({x})cn1" for x in _SUBSTITUENTS[:10]]
    thiazolyl = [f"Nc1nc({x})cs1" for x in _SUBSTITUENTS[:10]]
    return _canonical_unique(anilines + benzyl + phenethyl + pyridyl + thiazolyl + _AMINES_FIXED)


def amino_acid_library() -> list[str]:
    """About 120 amino acids: a fixed set, substituted phenylalanines and phenylglycines, and the D form of every
    chiral L one listed (BELKA's position 1 has 271 blocks, many of them enantiomer pairs)."""
    phenylalanines = [
        t.format(x)
        for x in _SUBSTITUENTS
        for t in ("N[C@@H](Cc1ccc({})cc1)C(=O)O", "N[C@@H](Cc1cccc({})c1)C(=O)O")
    ]
    phenylglycines = [f"N[C@@H](c1ccc({x})cc1)C(=O)O" for x in _SUBSTITUENTS]
    levo = _AMINO_ACIDS_FIXED + phenylalanines[::2] + phenylglycines[:6]
    dextro = [a.replace("N[C@@H]", "N[C@H]", 1) for a in levo if a.startswith("N[C@@H]")]
    return _canonical_unique(_AMINO_ACIDS_FIXED + phenylalanines + phenylglycines + dextro)


def _canonical_unique(smiles: list[str]) -> list[str]:
    """Canonical SMILES rooted at the attachment nitrogen (atom 0 as listed), duplicates dropped."""
    seen: dict[str, None] = {}
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"building block {s!r} does not parse")
        seen.setdefault(Chem.MolToSmiles(mol, rootedAtAtom=0), None)
    return list(seen)


_ACID_TO_DNA_AMIDE = AllChem.ReactionFromSmarts("[C:1](=[O:2])[OX2H1]>>[C:1](=[O:2])N[Dy]")


def dna_linked_fragment(amino_acid: str) -> str:
    """The amino acid as it sits in a BELKA molecule: its (first) acid made the DNA-linked amide."""
    products = _ACID_TO_DNA_AMIDE.RunReactants((Chem.MolFromSmiles(amino_acid),))
    mol = products[0][0]
    Chem.SanitizeMol(mol)
    # Products renumber atoms; RDKit records each atom's index in the reactant.
    amine = next(
        a.GetIdx()
        for a in mol.GetAtoms()
        if a.HasProp("react_atom_idx") and a.GetIntProp("react_atom_idx") == 0
    )
    return Chem.MolToSmiles(mol, rootedAtAtom=amine)


def fmoc_protected(amino_acid: str) -> str:
    """The amino acid as Kaggle lists building block 1: Fmoc on its amine."""
    return Chem.MolToSmiles(Chem.MolFromSmiles(f"{FMOC}{amino_acid}"))


def sar_profile(smiles: str) -> np.ndarray:
    mol = Chem.MolFromSmiles(smiles)
    return np.array([mol.HasSubstructMatch(Chem.MolFromSmarts(p)) for p in _SAR_SMARTS], dtype=np.float64)


@dataclass
class Library:
    """The building blocks of one position: what Kaggle lists, what goes in the molecule, their profiles."""

    listed: list[str]
    fragment: list[str]
    profile: np.ndarray
    test_only: np.ndarray  # bool per building block

    def indices(self, test_only: bool) -> np.ndarray:
        return np.flatnonzero(self.test_only == test_only)


def build_libraries(params: Generate) -> tuple[Library, Library, Library]:
    rng = np.random.default_rng([params.seed, 0])
    acids, amines = amino_acid_library(), amine_library()

    def held_out(n: int) -> np.ndarray:
        held = np.zeros(n, dtype=bool)
        held[rng.permutation(n)[: max(1, round(params.test_only_building_blocks * n))]] = True
        return held

    acid_held, amine_held = held_out(len(acids)), held_out(len(amines))
    bb1 = Library(
        [fmoc_protected(a) for a in acids],
        [dna_linked_fragment(a) for a in acids],
        np.stack([sar_profile(a) for a in acids]),
        acid_held,
    )
    # Positions 2 and 3 draw from one pool of amines, as in BELKA; an amine held out for the test set is held out in
    # both positions.
    pool = Library(amines, amines, np.stack([sar_profile(a) for a in amines]), amine_held)
    return bb1, pool, pool


@dataclass
class BindingRule:
    """The hidden structure-activity rule, per protein: a weight per substructure of building block 1, one weight per
    substructure shared by both amines, and for BRD4 a synergy of an aryl amine with an aryl-halide amine in either
    position. Swapping the two amines (the same molecule) gives the same score."""

    weights: dict[str, np.ndarray]  # protein -> (2, n_patterns): building block 1, either amine
    thresholds: dict[str, float]
    noise: float = 0.3

    def scores(self, protein: str, profiles: np.ndarray, noise: np.ndarray) -> np.ndarray:
        """profiles: (n, 3, n_patterns) -> score per molecule, symmetric in positions 2 and 3."""
        acid, amine = self.weights[protein]
        # b + c is exact and commutative on 0/1 profiles, so the swapped molecule's score is bit for bit the same.
        additive = profiles[:, 0] @ acid + (profiles[:, 1] + profiles[:, 2]) @ amine
        b, c = profiles[:, 1], profiles[:, 2]
        aryl_with_aryl_halide = np.maximum(b[:, 4] * c[:, 0], c[:, 4] * b[:, 0])
        synergy = 1.5 * aryl_with_aryl_halide * (protein == "BRD4")
        return additive + synergy + self.noise * noise


def make_binding_rule(params: Generate, libraries: tuple[Library, Library, Library]) -> BindingRule:
    rng = np.random.default_rng([params.seed, 1])
    n_patterns = len(_SAR_SMARTS)
    weights = {p: rng.normal(0.0, 1.0, size=(2, n_patterns)) for p in PROTEINS}
    # Calibrate thresholds on a fixed sample of combinations, so labels do not depend on the data set size.
    sample = _draw_combinations(np.random.default_rng([params.seed, 2]), libraries, 20_000, test_only=False)
    profiles = _profiles(libraries, sample)
    noise = np.random.default_rng([params.seed, 3]).normal(size=(len(PROTEINS), len(sample)))
    rule = BindingRule(weights=weights, thresholds={})
    for k, protein in enumerate(PROTEINS):
        rate = min(params.positive_rate * RELATIVE_RATE[protein], 0.5)
        rule.thresholds[protein] = float(np.quantile(rule.scores(protein, profiles, noise[k]), 1.0 - rate))
    return rule


def _profiles(libraries: tuple[Library, Library, Library], combos: np.ndarray) -> np.ndarray:
    return np.stack([lib.profile[combos[:, p]] for p, lib in enumerate(libraries)], axis=1)


def _draw_combinations(
    rng: np.random.Generator, libraries: tuple[Library, Library, Library], n: int, test_only: bool
) -> np.ndarray:
    """Draw building block indices (n, 3): blocks seen in training, or with ``test_only`` test-only blocks in every
    position (as Kaggle's test: no molecule mixes seen and unseen blocks)."""
    return np.stack([rng.choice(lib.indices(test_only), size=n) for lib in libraries], axis=1)


def molecule_identity(libraries: tuple[Library, Library, Library], combo: np.ndarray) -> bytes:
    """Which molecule a combination makes: the triazine is symmetric, so swapping blocks 2 and 3 is the same."""
    a, b, c = (libraries[p].fragment[combo[p]] for p in range(3))
    return "|".join([a, *sorted((b, c))]).encode()


def _bucket(identity: bytes) -> int:
    """0..9 from a fixed hash of the molecule: 0 is reserved for the test set, the rest for train."""
    return hashlib.blake2b(identity, digest_size=2).digest()[0] % 10


def draw_molecules(
    params: Generate, libraries: tuple[Library, Library, Library], kind: str, n: int
) -> np.ndarray:
    """``n`` distinct combinations for ``kind`` in {train, test_shared, test_unseen}, prefix-stable in ``n``."""
    stream = {"train": 10, "test_shared": 11, "test_unseen": 12}[kind]
    seen: dict[bytes, None] = {}
    chosen: list[np.ndarray] = []
    chunk = 0
    while len(chosen) < n:
        rng = np.random.default_rng([params.seed, stream, chunk])
        combos = _draw_combinations(rng, libraries, CHUNK, test_only=kind == "test_unseen")
        for combo in combos:
            key = molecule_identity(libraries, combo)
            bucket = _bucket(key)
            if (kind == "train" and bucket == 0) or (kind == "test_shared" and bucket != 0) or key in seen:
                continue
            seen[key] = None
            chosen.append(combo)
        chunk += 1
        if chunk > 1000 + 50 * n // CHUNK:
            raise ValueError(f"generate: cannot draw {n} distinct {kind} molecules from the building blocks")
    return np.stack(chosen[:n])


def canonical_molecules(raw: list[str]) -> list[str]:
    """RDKit's canonical SMILES of assembled molecules, the linker nitrogen written as Kaggle writes it (N[Dy];
    RDKit says [NH][Dy]). A pure function of strings: it runs the same in a worker process."""
    return [Chem.MolToSmiles(Chem.MolFromSmiles(s)).replace("[NH][Dy]", "N[Dy]") for s in raw]


def molecule_smiles(
    libraries: tuple[Library, Library, Library], combos: np.ndarray, pool: Executor | None = None
) -> list[str]:
    """The canonical SMILES of each combination, in order; chunks are canonicalised on ``pool`` when given."""
    raw = [
        TRIAZINE.format(libraries[0].fragment[a], libraries[1].fragment[b], libraries[2].fragment[c])
        for a, b, c in combos
    ]
    if pool is None or len(raw) < 2 * SMILES_CHUNK:
        return canonical_molecules(raw)
    futures = [
        pool.submit(canonical_molecules, raw[i : i + SMILES_CHUNK]) for i in range(0, len(raw), SMILES_CHUNK)
    ]
    return [smiles for future in futures for smiles in future.result()]


def generated_rows(
    libraries: tuple[Library, Library, Library],
    combos: np.ndarray,
    proteins: list[list[str]],
    first_id: int,
    binds: dict[str, np.ndarray] | None,
    pool: Executor | None = None,
) -> pl.DataFrame:
    """One row per (molecule, protein) in the given protein order, ids consecutive from ``first_id``."""
    smiles = molecule_smiles(libraries, combos, pool)
    columns: dict[str, list] = {name: [] for name in (*BB_COLUMNS, SMILES, PROTEIN)}
    labels: list[int] = []
    for i, combo in enumerate(combos):
        for protein in proteins[i]:
            for p, name in enumerate(BB_COLUMNS):
                columns[name].append(libraries[p].listed[combo[p]])
            columns[SMILES].append(smiles[i])
            columns[PROTEIN].append(protein)
            if binds is not None:
                labels.append(int(binds[protein][i]))
    n_rows = len(columns[SMILES])
    frame = pl.DataFrame({ID: np.arange(first_id, first_id + n_rows, dtype=np.int64), **columns})
    if binds is not None:
        frame = frame.with_columns(pl.Series(BINDS, labels, dtype=pl.Int64))
    return frame


def labels_for(
    params: Generate, libraries, rule: BindingRule, combos: np.ndarray, stream: int
) -> dict[str, np.ndarray]:
    profiles = _profiles(libraries, combos)
    out = {}
    for k, protein in enumerate(PROTEINS):
        # Noise per molecule from its own chunk-seeded stream keeps labels prefix-stable.
        noise = np.concatenate(
            [
                np.random.default_rng([params.seed, stream, k, start // CHUNK]).normal(size=CHUNK)
                for start in range(0, len(combos), CHUNK)
            ]
        )[: len(combos)]
        out[protein] = rule.scores(protein, profiles, noise) > rule.thresholds[protein]
    return out


@dataclass
class Generated:
    """The train table, the test table (no labels, as Kaggle's) and the test set's hidden labels."""

    train: pl.DataFrame
    test: pl.DataFrame
    test_labels: pl.DataFrame  # id, protein_name, binds, group: what a leaderboard scores submissions against


def generate_all(params: Generate, pool: Executor | None = None) -> Generated:
    """The train and test tables and the test labels; ``pool`` (a process pool) only makes it faster."""
    libraries = build_libraries(params)
    rule = make_binding_rule(params, libraries)
    train_combos = draw_molecules(params, libraries, "train", params.train_molecules)
    train = generated_rows(
        libraries,
        train_combos,
        [list(PROTEINS)] * len(train_combos),
        first_id=0,
        binds=labels_for(params, libraries, rule, train_combos, stream=20),
        pool=pool,
    )
    shared = draw_molecules(params, libraries, "test_shared", params.test_shared_molecules)
    unseen = draw_molecules(params, libraries, "test_unseen", params.test_unseen_molecules)
    single = np.random.default_rng([params.seed, 13]).integers(0, 3, size=len(unseen))
    shared_binds = labels_for(params, libraries, rule, shared, stream=21)
    unseen_binds = labels_for(params, libraries, rule, unseen, stream=22)
    labelled = generated_rows(
        libraries,
        np.concatenate([shared, unseen]),
        [list(PROTEINS)] * len(shared) + [[PROTEINS[k]] for k in single],
        first_id=FIRST_TEST_ID,
        binds={p: np.concatenate([shared_binds[p], unseen_binds[p]]) for p in PROTEINS},
        pool=pool,
    )
    return Generated(train, labelled.drop(BINDS), hidden_labels(train, labelled))


def hidden_labels(train: pl.DataFrame, test: pl.DataFrame) -> pl.DataFrame:
    """id, protein_name, binds, group of each labelled test row. The group is Kaggle's: ``share`` when all three
    building blocks occur in the training table (in any position), ``non_share`` when none does; ``mixed`` (neither,
    as in no Kaggle test molecule) only happens when the training table is too small to use every training building
    block."""
    seen = pl.concat([train[c] for c in BB_COLUMNS]).unique().implode()
    n_seen = pl.sum_horizontal([pl.col(c).is_in(seen).cast(pl.Int8) for c in BB_COLUMNS])
    group = pl.when(n_seen == 3).then(pl.lit("share")).when(n_seen == 0).then(pl.lit("non_share"))
    return test.select(ID, PROTEIN, BINDS, group.otherwise(pl.lit("mixed")).alias("group"))


def generate(params: Generate, pool: Executor | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The train and test tables; ``pool`` (a process pool) only makes it faster: the output is the same."""
    data = generate_all(params, pool)
    return data.train, data.test


RAW_SCHEMA = pa.schema(
    [(ID, pa.int64())]
    + [(name, pa.string()) for name in (*BB_COLUMNS, SMILES, PROTEIN)]
    + [(BINDS, pa.int64())]
)


LABELS_SCHEMA = pa.schema(
    [(ID, pa.int64()), (PROTEIN, pa.string()), (BINDS, pa.int64()), ("group", pa.string())]
)


def to_kaggle_table(frame: pl.DataFrame) -> pa.Table:
    schema = RAW_SCHEMA if BINDS in frame.columns else RAW_SCHEMA.remove(RAW_SCHEMA.get_field_index(BINDS))
    return frame.to_arrow().cast(schema)


def run(args: argparse.Namespace, params: Params) -> None:
    with engine.executor("local", workers(params)) as pool:
        data = generate_all(params.generate, pool)
    write_parquet(to_kaggle_table(data.train), args.train)
    write_parquet(to_kaggle_table(data.test), args.test)
    log.info(
        "wrote %d train rows (%d positives) and %d test rows",
        len(data.train),
        data.train[BINDS].sum(),
        len(data.test),
    )
    if args.test_labels:
        write_parquet(data.test_labels.to_arrow().cast(LABELS_SCHEMA), args.test_labels)
        mixed = int((data.test_labels["group"] == "mixed").sum())
        if mixed:
            log.warning(
                "%d test rows mix seen and unseen building blocks (group mixed): train is small", mixed
            )


def main(argv: list[str] | None = None) -> int:
    return (
        Command("generate", __doc__)
        .paths(train="the training parquet file to write", test="the test parquet file to write")
        .option(
            "--test-labels",
            type=Path,
            help="also write the test set's hidden labels (id, protein_name, binds, group): for a leaderboard only",
        )
        .main(argv, run)
    )


if __name__ == "__main__":
    raise SystemExit(main())
