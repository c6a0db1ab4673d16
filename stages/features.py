"""What a molecule's features are: the feature spec, its version, and the container of computed features.

The spec (:class:`FeatureConfig`) names everything that shapes a molecule's stored features: the descriptors, the
fingerprint, the SMILES length limit, RDKit's version and :data:`FEATURE_VERSION`. featurize records it in its
manifest, train in the model's manifest, and predict and evaluate compare the two before scoring; it is also the key
of the feature cache. How features are computed (cleaning, RDKit calls) lives in :mod:`stages.chem`, which only
featurize (and on-demand scoring) runs: editing it reruns featurize, whose outputs stay byte-identical unless the
features change, and then this version is bumped. The stages downstream of featurize read only this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import rdkit

# The feature version: what a molecule's stored features mean. Bump it when cleaning, a descriptor's or fingerprint's
# definition, or the stored format (stages/molecules.py) changes what is stored for a molecule; a comment, a
# refactor or a faster parse that stores the same bytes leaves it alone. tests/test_golden.py pins the features of
# a fixed set of molecules for this version, so a change of features without a bump fails there. The version is
# part of the feature spec (compared by predict and evaluate) and of the feature cache's key.
FEATURE_VERSION = 1

FINGERPRINT_TYPES = ("morgan", "feature_morgan", "atom_pair", "topological_torsion", "none")
MORGAN_TYPES = ("morgan", "feature_morgan")


@dataclass(frozen=True)
class FingerprintConfig:
    """One of RDKit's fingerprint generators (``rdFingerprintGenerator``), as bits.

    ``morgan`` is ECFP (radius 2 is ECFP4), ``feature_morgan`` FCFP (Morgan on pharmacophoric atom invariants),
    ``atom_pair`` and ``topological_torsion`` RDKit's defaults (path lengths 1-30, 4-atom torsions). ``radius``
    applies to the Morgan types only; ``chirality`` adds each atom's CIP label (R/S) to its invariant, so that
    L- and D-amino acids get different bits.
    """

    type: str = "morgan"
    radius: int = 2
    n_bits: int = 1024
    chirality: bool = False

    @property
    def bits(self) -> int:
        """Bits stored a molecule: 0 for ``none``."""
        return 0 if self.type == "none" else self.n_bits

    @property
    def reads_stereo(self) -> bool:
        """Whether the bits depend on stereo perception (CIP labels): only with ``chirality``."""
        return self.type != "none" and self.chirality

    def spec(self) -> dict:
        """Only what shapes the bits: no radius for the path-based types, nothing but the type for ``none``."""
        if self.type == "none":
            return {"type": "none"}
        spec: dict = {"type": self.type, "n_bits": self.n_bits, "chirality": self.chirality}
        if self.type in MORGAN_TYPES:
            spec["radius"] = self.radius
        return spec

    @classmethod
    def from_spec(cls, spec: dict) -> FingerprintConfig:
        if spec["type"] == "none":
            return cls(type="none")
        return cls(spec["type"], spec.get("radius", 0), spec["n_bits"], spec["chirality"])


@dataclass(frozen=True)
class FeatureConfig:
    """Everything that shapes a molecule's features (with RDKit's version and :data:`FEATURE_VERSION`)."""

    descriptors: tuple[str, ...]  # names of RDKit descriptors (``descriptor_functions``)
    fingerprint: FingerprintConfig
    max_smiles_length: int

    @property
    def n_bits(self) -> int:
        return self.fingerprint.bits

    @property
    def fp_bytes(self) -> int:
        return self.n_bits // 8

    def spec(self) -> dict:
        """The features' identity: recorded by featurize and by the model, compared before scoring, and the key
        of the feature cache."""
        return {
            "version": FEATURE_VERSION,
            "descriptors": list(self.descriptors),
            "fingerprint": self.fingerprint.spec(),
            "max_smiles_length": self.max_smiles_length,
            "rdkit": rdkit.__version__,
        }

    @classmethod
    def from_spec(cls, spec: dict) -> FeatureConfig:
        return cls(
            tuple(spec["descriptors"]),
            FingerprintConfig.from_spec(spec["fingerprint"]),
            spec["max_smiles_length"],
        )


def spec_differences(have: dict, want: dict, prefix: str = "") -> list[str]:
    """The keys where two feature specs differ, as ``key: have != want``."""
    out = []
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} != {b!r}")
    return out


@dataclass
class FeatureBatch:
    """Features of a list of molecules, in order; rows with a reject reason have zeros elsewhere."""

    descriptors: np.ndarray  # float64 (n, len(config.descriptors)); NaN where RDKit gives no finite value
    fp: np.ndarray  # uint8 (n, n_bits / 8), the bit-packed fingerprint
    reasons: list[str | None]

    @classmethod
    def concat(cls, parts: list[FeatureBatch]) -> FeatureBatch:
        return cls(
            descriptors=np.concatenate([p.descriptors for p in parts]),
            fp=np.concatenate([p.fp for p in parts]),
            reasons=[r for p in parts for r in p.reasons],
        )
