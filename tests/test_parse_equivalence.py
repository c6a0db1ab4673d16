"""The fast parse gives byte-identical features to RDKit's default parse, and rejects what it rejects.

``chem.featurize_smiles`` parses with ``chem.parse`` (the fast parse, or the default one where it cannot be sure).
Every expected value here comes from RDKit called directly: ``Chem.MolFromSmiles`` with its defaults, the
descriptor functions of ``rdkit.Chem.Descriptors`` and generators of ``rdFingerprintGenerator`` built here. The
comparison is of bytes: float64 descriptors (non-finite values as NaN, as featurize stores them), packed
fingerprints and reject reasons.

Fast tier: a subset of the real sample, the fixed generated molecules, hand-picked edge cases and property-based
molecules. Slow tier: every molecule of the real sample under all of RDKit's 217 descriptors and every fingerprint
setting the params allow, and generated molecules from every building block.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rdkit import Chem
from rdkit.Chem import Descriptors, rdFingerprintGenerator

from stages import chem, features
from tests.conftest import ROOT, SHARED_SAMPLE
from tests.test_golden import DEFAULT_DESCRIPTORS, EDGE_CASES, generated_molecules, sample_molecules
from tests.test_properties import any_smiles

ALL_DESCRIPTORS = tuple(name for name, _ in Descriptors._descList)
RADII = range(1, 7)  # params.Fingerprint.radius: 1..6


def every_fingerprint(n_bits: int) -> list[features.FingerprintConfig]:
    """Every fingerprint setting the params allow at one size: type x chirality (x radius for the Morgan types)."""
    settings_ = [features.FingerprintConfig("none")]
    for chirality in (False, True):
        settings_ += [
            features.FingerprintConfig(t, r, n_bits, chirality) for t in features.MORGAN_TYPES for r in RADII
        ]
        settings_ += [
            features.FingerprintConfig(t, 2, n_bits, chirality) for t in ("atom_pair", "topological_torsion")
        ]
    return settings_


# ---------------------------------------------------------------------------------------------- the reference


def rdkit_generator(fingerprint: features.FingerprintConfig):
    g, size, chiral = rdFingerprintGenerator, fingerprint.n_bits, fingerprint.chirality
    if fingerprint.type == "morgan":
        return g.GetMorganGenerator(radius=fingerprint.radius, fpSize=size, includeChirality=chiral)
    if fingerprint.type == "feature_morgan":
        invariants = g.GetMorganFeatureAtomInvGen()
        return g.GetMorganGenerator(
            radius=fingerprint.radius,
            fpSize=size,
            includeChirality=chiral,
            atomInvariantsGenerator=invariants,
        )
    if fingerprint.type == "atom_pair":
        return g.GetAtomPairGenerator(fpSize=size, includeChirality=chiral)
    return g.GetTopologicalTorsionGenerator(fpSize=size, includeChirality=chiral)


def default_parse(smiles: str) -> tuple[Chem.Mol | None, str | None]:
    """``Chem.MolFromSmiles`` with its defaults, and the reject reasons featurize has always given."""
    if "*" in smiles:
        return None, "wildcard atom (*) in the SMILES: not a molecule"
    try:
        mol = Chem.MolFromSmiles(smiles)
    except Exception as exc:
        return None, f"RDKit could not parse the SMILES ({type(exc).__name__})"
    if mol is None or mol.GetNumAtoms() == 0:
        return None, "RDKit could not parse the SMILES"
    return mol, None


@dataclass
class Reference:
    """Molecules parsed once by the default parse, featurized under any setting."""

    smiles: list[str]

    def __post_init__(self) -> None:
        self.parsed = [default_parse(s) for s in self.smiles]

    def features(
        self, names: tuple[str, ...], fingerprint: features.FingerprintConfig
    ) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        """(descriptors, packed fingerprints, reasons); a molecule whose features RDKit cannot compute is
        rejected with zeros, as featurize does."""
        functions = dict(Descriptors._descList)
        generator = rdkit_generator(fingerprint) if fingerprint.type != "none" else None
        values = np.zeros((len(self.smiles), len(names)))
        packed = np.zeros((len(self.smiles), fingerprint.bits // 8), dtype=np.uint8)
        reasons = [reason for _, reason in self.parsed]
        for i, (mol, _) in enumerate(self.parsed):
            if mol is None:
                continue
            try:
                values[i] = [functions[name](mol) for name in names]
                if generator is not None:
                    packed[i] = np.packbits(generator.GetFingerprintAsNumPy(mol))
            except Exception as exc:
                values[i], packed[i] = 0.0, 0
                reasons[i] = f"RDKit could not compute features ({type(exc).__name__})"
        values[~np.isfinite(values)] = np.nan
        return values, packed, reasons


def assert_identical(
    reference: Reference, descriptors: tuple[str, ...], fingerprint: features.FingerprintConfig
):
    """featurize_smiles (the fast parse) against the default parse, byte for byte, naming the first difference."""
    config = features.FeatureConfig(descriptors, fingerprint, 10_000)
    batch = chem.featurize_smiles(reference.smiles, config)
    values, packed, reasons = reference.features(descriptors, fingerprint)
    for i, smiles in enumerate(reference.smiles):
        assert batch.reasons[i] == reasons[i], (smiles, batch.reasons[i], reasons[i])
        if batch.descriptors[i].tobytes() != values[i].tobytes():
            differ = [n for n, a, b in zip(descriptors, batch.descriptors[i], values[i], strict=True)
                      if np.array([a]).tobytes() != np.array([b]).tobytes()]  # fmt: skip
            raise AssertionError(f"{smiles}: descriptors {differ} differ from the default parse's")
        assert batch.fp[i].tobytes() == packed[i].tobytes(), (smiles, fingerprint)


def needs_sample() -> None:
    if not SHARED_SAMPLE.exists():
        pytest.skip(f"{SHARED_SAMPLE} not present (it is a fixture from ../shared, never copied here)")


@pytest.fixture(scope="module")
def sample_subset() -> Reference:
    needs_sample()
    return Reference(sample_molecules(150))


# ---------------------------------------------------------------------------------------------- fast tier

# Kekulé rings, aromatic forms, [nH], charges, stereo centres and bonds, isotopes, explicit and isotopic
# hydrogens, radicals, a nitro group to clean up, fused and bridged rings, and molecules RDKit refuses: too many
# bonds on an atom, rings that cannot be kekulized, an aromatic atom outside a ring, an open ring.
MORE_CASES = [
    "C1=CC=CC=C1", "C1=CC2=CC=CC=C2C=C1", "C1=CNC=C1", "O=C1NC(=O)NC(=O)N1", "O=c1cc[nH]cc1", "c1ccc1",
    "C1=CC=C1", "c1ccc2c(c1)-c1ccccc1-2", "c1ccccc1c1ccccc1", "C1=CC=CC=CC=C1", "[nH]1cccc1", "n1ccccc1",
    "c1ccc2[nH]ccc2c1", "Cc1n[nH]c(C)c1", "c1cc[n+]([O-])cc1", "CN(=O)=O", "C[N+](=O)[O-]", "[NH4+]",
    "[13C@H](N)(C)C(=O)O", "N[C@@H](C)C(=O)N[C@H](C)C(=O)O", "C[C@H](C)C", "F/C=C(/Cl)Br", "C/C=C\\C",
    "C12CC(CC1)CC2", "C1CC2(C1)CCC2", "[CH3]", "[CH2]C", "[N]", "[2H]c1ccccc1", "[H]C([H])([H])O", "[H+]",
    "C[C@@]([2H])(O)F", "c1ccccc1[Se]C", "[se]1cccc1", "o1cccc1", "s1cccc1", "c1ncncn1", "B1OB(O)OB(O)O1",
    "C(C)(C)(C)(C)C", "c1cccc1", "c1ccccc1c", "C1CC", "[NH5]", "cc", "C=1CCC=1", "c1ccnc1", "O=c1ccc(=O)cc1",
    "CC(C)(C)[Si](C)(C)OC", "[Na+].[O-]C(=O)C", "P(=O)(O)(O)Oc1ccccc1", "CC.CC", "[Cu+2]", "C#CC#N",
]  # fmt: skip


def test_edge_cases_give_the_default_parse_features_and_reasons():
    reference = Reference(EDGE_CASES + MORE_CASES)
    for fingerprint in (features.FingerprintConfig("morgan", 2, 256, False), features.FingerprintConfig("morgan", 3, 256, True),
                        features.FingerprintConfig("atom_pair", 2, 256, True)):  # fmt: skip
        assert_identical(reference, ALL_DESCRIPTORS, fingerprint)
    rejected = [s for s, (mol, _) in zip(reference.smiles, reference.parsed, strict=True) if mol is None]
    assert {"C(C)(C)(C)(C)C", "c1cccc1", "C1CC", "[NH5]", "c1ccnc1"} <= set(rejected)  # they are invalid


def test_invalid_molecules_are_rejected_with_the_reasons_featurize_always_gave():
    # the reasons, by hand: RDKit returns None for these (valence, kekulization, syntax), raises on a NUL byte
    cases = {
        "C(C)(C)(C)(C)C": "RDKit could not parse the SMILES",  # five bonds on a carbon
        "c1cccc1": "RDKit could not parse the SMILES",  # an aromatic ring that cannot be kekulized
        "c1ccccc1c": "RDKit could not parse the SMILES",  # an aromatic atom outside a ring
        "C1CC": "RDKit could not parse the SMILES",  # an unclosed ring
        "[NH5]": "RDKit could not parse the SMILES",
        "CC\x00C": "RDKit could not parse the SMILES",
        "": "RDKit could not parse the SMILES",
        "CC(*)N": "wildcard atom (*) in the SMILES: not a molecule",
    }
    config = features.FeatureConfig(DEFAULT_DESCRIPTORS, features.FingerprintConfig("morgan", 2, 64), 100)
    batch = chem.featurize_smiles(list(cases), config)
    assert batch.reasons == list(cases.values())
    assert not batch.fp.any() and not batch.descriptors.any()
    for smiles in cases:
        assert (
            chem.fast_parse(smiles, stereo=False) is None
        )  # never accepted: the default parse gives the reason


def test_the_fast_parse_is_taken_where_it_is_sure_and_not_elsewhere():
    """The equivalence above would be empty if the fast parse never ran: it must accept ordinary molecules."""
    for smiles in ("C1=CC=CC=C1", "c1cc[nH]c1", "N[C@@H](C)C(=O)O", "F/C=C/F", "[13CH3]O", "C[CH2]"):
        assert chem.fast_parse(smiles, stereo=False) is not None, smiles
    assert chem.fast_parse("N[C@@H](C)C(=O)O", stereo=True) is not None
    for smiles in ("[2H]C", "[H]C([H])([H])O", "CCO |$;;$|", "CCO ethanol"):
        assert chem.fast_parse(smiles, stereo=False) is None, smiles  # hydrogen atoms, CXSMILES, a name
    assert chem.fast_parse("F/C=C/F", stereo=True) is None  # the raw parse drops bond directions


def test_the_fast_parse_accepts_every_valid_molecule_of_the_sample(sample_subset):
    for smiles, (mol, _) in zip(sample_subset.smiles, sample_subset.parsed, strict=True):
        if mol is not None:
            assert chem.fast_parse(smiles, stereo=False) is not None, smiles


def test_the_sample_subset_under_default_descriptors_and_every_fingerprint(sample_subset):
    small = Reference(sample_subset.smiles[:50])
    for fingerprint in every_fingerprint(512):
        assert_identical(small, DEFAULT_DESCRIPTORS, fingerprint)


def test_the_sample_subset_under_all_217_descriptors(sample_subset):
    small = Reference(sample_subset.smiles[:30])
    assert len(ALL_DESCRIPTORS) == 217
    assert_identical(small, ALL_DESCRIPTORS, features.FingerprintConfig("none"))


def test_the_fixed_generated_molecules():
    reference = Reference(generated_molecules())
    assert_identical(reference, DEFAULT_DESCRIPTORS, features.FingerprintConfig("morgan", 2, 1024, False))
    assert_identical(
        reference, DEFAULT_DESCRIPTORS, features.FingerprintConfig("feature_morgan", 3, 2048, True)
    )


# Pieces joined into chains and branches: Kekulé and aromatic rings, [nH], charges, stereo centres and double
# bonds, isotopes, hydrogens, radicals, and pieces that make invalid valences when joined.
PIECES = [
    "C", "N", "O", "S", "F", "Cl", "c1ccccc1", "C1=CC=CC=C1", "c1cc[nH]c1", "C1=CNC=C1", "c1ccncc1", "c1ccc2ccccc2c1",
    "C1=CC2=CC=CC=C2C=C1", "c1ccc2[nH]ccc2c1", "O=c1cc[nH]cc1", "c1ccc1", "c1cccc1", "C1CCNCC1", "[C@H](N)",
    "[C@@H](O)", "[C@](C)(F)", "/C=C/", "\\C=C/", "C=C", "C#N", "[13C]", "[2H]", "[NH3+]", "[O-]", "[N+](=O)[O-]",
    "N(=O)=O", "[CH2]", "[CH]", "C(C)(C)(C)", "[Si]", "P(=O)(O)", "S(=O)(=O)", "B", "[nH]1cccc1", "[H]", "C(=O)O",
    "C(=O)N", "O=C1NC(=O)NC(=O)N1", "c1ccccc1c1ccccc1", "o1cccc1", "s1cccc1", "c1ncncn1", "[n+]1ccccc1", "[C-]",
]  # fmt: skip


@st.composite
def composed_molecules(draw) -> str:
    pieces = draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=6))
    branches = draw(st.lists(st.booleans(), min_size=len(pieces), max_size=len(pieces)))
    text = pieces[0] + "".join(
        f"({p})" if branch else p for p, branch in zip(pieces[1:], branches[1:], strict=True)
    )
    return text + ("." + draw(st.sampled_from(PIECES)) if draw(st.booleans()) and len(pieces) < 3 else "")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(composed_molecules(), min_size=1, max_size=8))
def test_composed_molecules_are_featurized_as_the_default_parse_would(smiles: list[str]) -> None:
    reference = Reference(smiles)
    assert_identical(reference, DEFAULT_DESCRIPTORS, features.FingerprintConfig("morgan", 2, 128, False))
    assert_identical(reference, ("TPSA", "Kappa2", "MaxPartialCharge", "NumAromaticRings", "RingCount"),
                     features.FingerprintConfig("morgan", 2, 128, True))  # fmt: skip
    assert_identical(reference, (), features.FingerprintConfig("atom_pair", 2, 128, True))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_smiles.filter(lambda s: s is not None), min_size=1, max_size=6))
def test_any_string_is_parsed_or_rejected_as_the_default_parse_would(smiles: list[str]) -> None:
    """Garbage, SMILES-like text, NUL bytes, stray [Dy] markers: the same features or the same reason."""
    reference = Reference([s[:200] for s in smiles])  # RDKit on a 10,000-atom chain is slow, not wrong
    assert_identical(reference, DEFAULT_DESCRIPTORS, features.FingerprintConfig("morgan", 2, 64, True))


# ---------------------------------------------------------------------------------------------- slow tier


@pytest.fixture(scope="module")
def whole_sample() -> Reference:
    needs_sample()
    return Reference(sample_molecules())


@pytest.mark.slow
@pytest.mark.parametrize("quarter", range(4))  # about 4 minutes of CPU in all: in quarters, for pytest -n
def test_every_molecule_of_the_sample_under_all_217_descriptors(whole_sample, quarter):
    assert len(whole_sample.smiles) > 16_000
    part = Reference(whole_sample.smiles[quarter::4])
    assert_identical(part, ALL_DESCRIPTORS, features.FingerprintConfig("none"))


@pytest.mark.slow
def test_every_molecule_of_the_sample_under_every_fingerprint_setting(whole_sample):
    """The params' default through featurize_smiles, then every setting on chem.parse's molecules (parsed once for
    each stereo mode instead of once a setting) against RDKit's generators on the default parse's. n_bits only
    folds the same hashed environments into fewer bits, whatever the parse: one size suffices here (the fast tier
    runs every setting through featurize_smiles at 512 bits)."""
    assert_identical(whole_sample, DEFAULT_DESCRIPTORS, features.FingerprintConfig("morgan", 2, 1024, False))
    fast = {stereo: [chem.parse(s, stereo)[0] for s in whole_sample.smiles] for stereo in (False, True)}
    for fingerprint in every_fingerprint(2048)[1:]:  # [0] is "none"
        ours, rdkits = chem.fingerprint_generator(fingerprint), rdkit_generator(fingerprint)
        molecules = zip(whole_sample.smiles, fast[fingerprint.reads_stereo], whole_sample.parsed, strict=True)
        for smiles, mol, (reference, _) in molecules:
            assert (mol is None) == (reference is None), smiles
            if mol is not None:
                bits = ours.GetFingerprintAsNumPy(mol).tobytes()
                assert bits == rdkits.GetFingerprintAsNumPy(reference).tobytes(), (smiles, fingerprint)


@pytest.mark.slow
def test_generated_molecules_from_every_building_block():
    """The generator at the default params with 10,000 training molecules (its test set with them): every building
    block of each position's library is in some molecule, so this covers every block and linker the default data
    set is made of, at a twentieth of its 204,000 molecules (all of them took 9 minutes of the suite)."""
    from stages import generate
    from stages.io import BB_COLUMNS
    from stages.params import load_params

    params = load_params(ROOT / "params.yaml").generate.model_copy(update={"train_molecules": 10_000})
    train, test = generate.generate(params)
    frame = pl.concat([train, test], how="diagonal_relaxed").unique("molecule_smiles", maintain_order=True)
    for column, library in zip(BB_COLUMNS, generate.build_libraries(params), strict=True):
        assert set(frame[column].to_list()) == set(library.listed), column
    reference = Reference([chem.clean_smiles(s)[0] for s in frame["molecule_smiles"].to_list()])
    assert_identical(reference, DEFAULT_DESCRIPTORS, features.FingerprintConfig("morgan", 2, 1024, False))
    assert_identical(reference, DEFAULT_DESCRIPTORS, features.FingerprintConfig("morgan", 2, 1024, True))
