"""SMILES cleaning and RDKit features: pure functions, no paths, no global state but RDKit's own caches.

BELKA writes the DNA linker as a dysprosium atom: building block 1's acid appears in ``molecule_smiles`` as the
DNA-linked amide ``C(=O)N[Dy]``. Removing the ``[Dy]`` token leaves ``C(=O)N``, whose nitrogen RDKit fills with
implicit hydrogens: the primary amide, i.e. the molecule without its DNA tag. Train and test are cleaned by the
same function, since a mismatch between the two is known to collapse the score.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl
from rdkit import Chem, RDLogger
from rdkit.Chem import Descriptors, rdFingerprintGenerator, rdMolDescriptors

DY = "[Dy]"
DESCRIPTORS = ("mw", "hbd", "hba")

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


def molecule_key(cleaned_smiles: str) -> int:
    """A stable 63-bit key of a cleaned SMILES string (same value on every machine and Python version)."""
    digest = hashlib.blake2b(cleaned_smiles.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def keys_of(values: pl.Series) -> pl.Series:
    """Stable keys for a string column, hashing each distinct value once."""
    uniques = values.unique(maintain_order=True)
    mapping = pl.DataFrame(
        {"value": uniques, "key": [molecule_key(v) for v in uniques.to_list()]},
        schema={"value": pl.String, "key": pl.Int64},
    )
    return values.to_frame("value").join(mapping, on="value", how="left", maintain_order="left")["key"]


@dataclass(frozen=True)
class FeatureConfig:
    fingerprint: bool
    radius: int
    n_bits: int

    @property
    def fp_bytes(self) -> int:
        return self.n_bits // 8 if self.fingerprint else 0


@dataclass
class FeatureBatch:
    """Features of a list of molecules, in order; rows with a reject reason have zeros elsewhere."""

    mw: np.ndarray
    hbd: np.ndarray
    hba: np.ndarray
    fp: np.ndarray  # uint8 (n, n_bits / 8), bit-packed Morgan fingerprint
    reasons: list[str | None]


@functools.lru_cache(maxsize=8)
def _morgan(radius: int, n_bits: int):
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)


def parse(cleaned_smiles: str) -> tuple[Chem.Mol | None, str | None]:
    """Parse a cleaned SMILES string with RDKit: ``(mol, None)`` or ``(None, reason)``; never raises."""
    try:
        mol = Chem.MolFromSmiles(cleaned_smiles)
    except Exception as exc:  # RDKit raises on some inputs (e.g. embedded NUL), returns None on most
        return None, f"RDKit could not parse the SMILES ({type(exc).__name__})"
    if mol is None or mol.GetNumAtoms() == 0:
        return None, "RDKit could not parse the SMILES"
    return mol, None


def featurize_smiles(cleaned: list[str], config: FeatureConfig) -> FeatureBatch:
    """RDKit features for cleaned SMILES strings: MW, H-bond donors and acceptors, packed Morgan bits."""
    n = len(cleaned)
    mw = np.zeros(n, dtype=np.float64)
    hbd = np.zeros(n, dtype=np.int16)
    hba = np.zeros(n, dtype=np.int16)
    fp = np.zeros((n, config.fp_bytes), dtype=np.uint8)
    reasons: list[str | None] = [None] * n
    generator = _morgan(config.radius, config.n_bits) if config.fingerprint else None
    for i, smiles in enumerate(cleaned):
        mol, reason = parse(smiles)
        if mol is None:
            reasons[i] = reason
            continue
        try:
            mw[i] = Descriptors.MolWt(mol)
            hbd[i] = rdMolDescriptors.CalcNumHBD(mol)
            hba[i] = rdMolDescriptors.CalcNumHBA(mol)
            if generator is not None:
                fp[i] = np.packbits(generator.GetFingerprintAsNumPy(mol))
        except Exception as exc:
            reasons[i] = f"RDKit could not compute features ({type(exc).__name__})"
    return FeatureBatch(mw=mw, hbd=hbd, hba=hba, fp=fp, reasons=reasons)


def unpack_fingerprints(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Bit-packed fingerprints (n, n_bits / 8) to a 0/1 float32 matrix (n, n_bits)."""
    return np.unpackbits(packed, axis=1, count=n_bits).astype(np.float32)
