"""SMILES cleaning and RDKit features: pure functions, no paths, no global state but RDKit's own caches.

BELKA writes the DNA linker as a dysprosium atom: building block 1's acid appears in ``molecule_smiles`` as the
DNA-linked amide ``C(=O)N[Dy]``. Removing the ``[Dy]`` token leaves ``C(=O)N``, whose nitrogen RDKit fills with
implicit hydrogens: the primary amide, i.e. the molecule without its DNA tag. Train and test are cleaned by the
same function, since a mismatch between the two is known to collapse the score.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable

import numpy as np
import polars as pl
from rdkit import Chem, RDLogger
from rdkit.Chem import Descriptors, rdFingerprintGenerator

from stages.features import FeatureBatch, FeatureConfig, FingerprintConfig

DY = "[Dy]"

RDLogger.DisableLog("rdApp.*")


def clean_smiles_expr(smiles: pl.Expr, max_length: int) -> tuple[pl.Expr, pl.Expr]:
    """Polars expressions for (cleaned SMILES, reject reason) of a column of BELKA ``molecule_smiles``.

    Exactly one ``[Dy]`` marker is required; the cleaned value is null where the reason is not.
    """
    length = smiles.str.len_chars()
    markers = smiles.str.count_matches(DY, literal=True)
    reason = (
        pl.when(smiles.is_null() | (smiles.str.strip_chars() == ""))
        .then(pl.lit("empty SMILES"))
        .when(length > max_length)
        .then(pl.format("SMILES longer than {} characters ({})", pl.lit(max_length), length))
        .when(markers == 0)
        .then(pl.lit("no [Dy] DNA-linker marker"))
        .when(markers > 1)
        .then(pl.format("[Dy] DNA-linker marker appears {} times (expected once)", markers))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    # Kaggle writes the linker as N[Dy]; RDKit's canonical form writes [NH][Dy]. Removing only [Dy] from the
    # latter would leave an NH radical, so that nitrogen becomes a plain N (implicit hydrogens) first.
    stripped = (
        smiles.str.replace_all("[NH][Dy]", "N", literal=True)
        .str.replace_all("[Dy][NH]", "N", literal=True)
        .str.replace_all(DY, "", literal=True)
    )
    nested = reason.is_null() & stripped.str.contains(DY, literal=True)  # "[[Dy]Dy]": one removed, one left
    reason = (
        pl.when(nested)
        .then(pl.lit("[Dy] DNA-linker marker nested in another (expected once)"))
        .otherwise(reason)
    )
    cleaned = pl.when(reason.is_null()).then(stripped)
    return cleaned, reason


def clean_smiles(smiles: str | None, max_length: int = 1_000) -> tuple[str | None, str | None]:
    """Clean one SMILES string: ``(cleaned, None)`` or ``(None, reason)``. Same code as the batch path."""
    cleaned, reason = clean_smiles_expr(pl.col("s"), max_length)
    row = pl.DataFrame({"s": [smiles]}, schema={"s": pl.String}).select(cleaned.alias("c"), reason.alias("r"))
    return row["c"][0], row["r"][0]


def molecule_hash(cleaned_smiles: str) -> tuple[int, int]:
    """``(key, check)`` of a cleaned SMILES string, the same on every machine and Python version.

    ``key`` (63 bits) identifies the molecule in every table; ``check`` (32 more bits of the same digest) is kept
    beside it while featurizing, so two different molecules with one key are detected instead of merged (at
    BELKA's 98.4M molecules a 63-bit key collision has a probability of about 5e-4; an undetected one 1e-13).
    """
    digest = hashlib.blake2b(cleaned_smiles.encode(), digest_size=12).digest()
    return int.from_bytes(digest[:8], "little") >> 1, int.from_bytes(digest[8:], "little")


def molecule_key(cleaned_smiles: str) -> int:
    return molecule_hash(cleaned_smiles)[0]


def keys_of(values: pl.Series, check: bool = False) -> pl.DataFrame:
    """``key`` (and ``check``) for each value of a string column, hashing each distinct value once."""
    uniques = values.unique(maintain_order=True)
    hashes = [molecule_hash(v) for v in uniques.to_list()]
    mapping = pl.DataFrame(
        {"value": uniques, "key": [h[0] for h in hashes], "check": [h[1] for h in hashes]},
        schema={"value": pl.String, "key": pl.Int64, "check": pl.Int64},
    )
    joined = values.to_frame("value").join(mapping, on="value", how="left", maintain_order="left")
    return joined.select("key", "check") if check else joined.select("key")


@functools.cache
def descriptor_functions() -> dict[str, Callable[[Chem.Mol], float]]:
    """RDKit's 2D descriptors by name (``rdkit.Chem.Descriptors``): any of them can be a feature."""
    return dict(Descriptors._descList)


@functools.lru_cache(maxsize=8)
def fingerprint_generator(fingerprint: FingerprintConfig):
    """The RDKit generator of a fingerprint configuration (None for ``none``), built once per process."""
    kind, size, chiral = fingerprint.type, fingerprint.n_bits, fingerprint.chirality
    if kind == "morgan":
        return rdFingerprintGenerator.GetMorganGenerator(
            radius=fingerprint.radius, fpSize=size, includeChirality=chiral
        )
    if kind == "feature_morgan":
        return rdFingerprintGenerator.GetMorganGenerator(
            radius=fingerprint.radius,
            fpSize=size,
            includeChirality=chiral,
            atomInvariantsGenerator=rdFingerprintGenerator.GetMorganFeatureAtomInvGen(),
        )
    if kind == "atom_pair":
        return rdFingerprintGenerator.GetAtomPairGenerator(fpSize=size, includeChirality=chiral)
    if kind == "topological_torsion":
        return rdFingerprintGenerator.GetTopologicalTorsionGenerator(fpSize=size, includeChirality=chiral)
    return None


def parse(cleaned_smiles: str, stereo: bool = True) -> tuple[Chem.Mol | None, str | None]:
    """Parse a cleaned SMILES string: ``(mol, None)`` or ``(None, reason)``; never raises.

    The molecule is RDKit's default parse (:func:`default_parse`) as far as any feature can tell: the fast parse
    (:func:`fast_parse`) where it is sure to be, else the default parse itself, which also gives the reasons.
    ``stereo=False`` when the features read no stereochemistry (no chirality in the fingerprint).
    """
    mol = fast_parse(cleaned_smiles, stereo)
    return (mol, None) if mol is not None else default_parse(cleaned_smiles)


def default_parse(cleaned_smiles: str) -> tuple[Chem.Mol | None, str | None]:
    """RDKit's default parse, ``Chem.MolFromSmiles``: ``(mol, None)`` or ``(None, reason)``; never raises."""
    if (
        "*" in cleaned_smiles
    ):  # RDKit parses a wildcard atom (atomic number 0, no mass): a query, not a molecule
        return None, "wildcard atom (*) in the SMILES: not a molecule"
    try:
        mol = Chem.MolFromSmiles(cleaned_smiles)
    except Exception as exc:  # RDKit raises on some inputs (e.g. embedded NUL), returns None on most
        return None, f"RDKit could not parse the SMILES ({type(exc).__name__})"
    if mol is None or mol.GetNumAtoms() == 0:
        return None, "RDKit could not parse the SMILES"
    return mol, None


@functools.cache
def _raw_parser() -> Chem.SmilesParserParams:
    """SMILES parsing alone: no sanitization, no hydrogen removal, no stereo perception."""
    params = Chem.SmilesParserParams()
    params.sanitize = False
    params.removeHs = False
    return params


# Where the fast parse cannot be sure, it leaves the molecule to the default parse: whitespace (a CXSMILES
# extension or a name follows the SMILES, whose stereo and coordinates the default parse treats differently) ...
_UNSURE = re.compile(r"[\s|]")
# ... and, when stereochemistry is read, bond directions: the raw parse clears them before any perception.
_UNSURE_WITH_STEREO = re.compile(r"[\s|/\\]")


def fast_parse(cleaned_smiles: str, stereo: bool = True) -> Chem.Mol | None:
    """``Chem.MolFromSmiles`` less the work no feature reads, or None where it cannot be sure (then parse with
    :func:`default_parse`, which also gives the reason of an invalid molecule).

    The default parse is three steps: parse, ``MolOps::removeHs`` (which ends in a full ``sanitizeMol``), and
    ``assignStereochemistry(cleanIt, force, flagPossible)``. Here:

    - the parse is the same parser, without its sanitization;
    - ``sanitizeMol`` with every operation (``SANITIZE_ALL``: valence checks, SSSR, kekulization, radicals,
      aromaticity, conjugation, hybridization, chirality clean-up, hydrogen adjustment), the same function the
      default parse calls, so every molecule it accepts is perceived exactly as there, and every one it refuses
      goes to the default parse;
    - the hydrogen removal is skipped only when the molecule has no hydrogen atom (``[H]``, ``[2H]``): it then
      removes nothing and amounts to that same ``sanitizeMol``;
    - stereo perception (CIP labels, clean-up of chiral tags, double-bond E/Z) runs only when ``stereo``, with the
      default parse's arguments. No descriptor reads it, and fingerprints only with ``chirality`` (tested on all
      217 descriptors and every fingerprint setting, tests/test_parse_equivalence.py).

    This is 0.78 of the default parse's instructions (``bench/instructions.py``): what it skips is stereo perception
    with ``flagPossible`` and the extra hydrogen-removal pass; what is left is the parser and the sanitization,
    which validates the molecule and decides its aromaticity (see bench/RESULTS.md for what skipping more costs).
    """
    if (_UNSURE_WITH_STEREO if stereo else _UNSURE).search(cleaned_smiles):
        return None
    try:
        mol = Chem.MolFromSmiles(cleaned_smiles, _raw_parser())
        if mol is None or not mol.GetNumAtoms() or mol.GetNumAtoms() != mol.GetNumHeavyAtoms():
            return None  # unparsable, empty, or with hydrogen (or wildcard) atoms
        Chem.SanitizeMol(mol)
        if stereo:
            Chem.AssignStereochemistry(mol, cleanIt=True, force=True, flagPossibleStereoCenters=True)
    except Exception:  # invalid (valence, kekulization...): the default parse gives the reason
        return None
    return mol


def warm_up(config: FeatureConfig) -> None:
    """Load what featurizing needs (RDKit's modules, the fingerprint generator) in a fresh worker process."""
    featurize_smiles(["CC(=O)NCc1ccccc1"], config)


def featurize_smiles(cleaned: list[str], config: FeatureConfig, fast: bool = True) -> FeatureBatch:
    """RDKit features of cleaned SMILES strings: the configured descriptors and packed fingerprint bits.

    A pure function of its arguments (strings in, arrays out), so it runs unchanged in a worker process. Each
    molecule is parsed by :func:`parse`, which perceives stereochemistry only when the fingerprint reads it;
    ``fast=False`` parses every one with :func:`default_parse` instead, the same features the slow way (what the
    benchmark's default-parse ceiling measures).
    """
    n = len(cleaned)
    functions = [descriptor_functions()[name] for name in config.descriptors]
    descriptors = np.zeros((n, len(functions)), dtype=np.float64)
    fp = np.zeros((n, config.fp_bytes), dtype=np.uint8)
    reasons: list[str | None] = [None] * n
    generator = fingerprint_generator(config.fingerprint)
    stereo = config.fingerprint.reads_stereo
    for i, smiles in enumerate(cleaned):
        mol, reason = parse(smiles, stereo) if fast else default_parse(smiles)
        if mol is None:
            reasons[i] = reason
            continue
        try:
            descriptors[i] = [function(mol) for function in functions]
            if generator is not None:
                fp[i] = np.packbits(generator.GetFingerprintAsNumPy(mol))
        except Exception as exc:
            descriptors[i], fp[i] = 0.0, 0
            reasons[i] = f"RDKit could not compute features ({type(exc).__name__})"
    descriptors[~np.isfinite(descriptors)] = np.nan  # the scaler and XGBoost treat NaN as missing
    return FeatureBatch(descriptors=descriptors, fp=fp, reasons=reasons)
