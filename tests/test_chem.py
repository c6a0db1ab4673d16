import hashlib

import numpy as np
import polars as pl
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors

from stages import chem, features
from stages.molecules import unpack_fingerprints

# A real Kaggle row: building block 1 (an Fmoc amino acid) sits on the triazine; its acid is the DNA-linked amide.
KAGGLE_SMILES = "Cc1ccc(C#N)cc1Nc1nc(NCCC(C)S(C)=O)nc(Nc2cccc(C(=O)N[Dy])c2C(=O)O)n1"
# The same molecule without its DNA tag, written by hand: the amide is primary.
EXPECTED = "Cc1ccc(C#N)cc1Nc1nc(NCCC(C)S(C)=O)nc(Nc2cccc(C(N)=O)c2C(=O)O)n1"


def config(
    fingerprint: bool = True, n_bits: int = 1024, descriptors=("MolWt", "NumHDonors", "NumHAcceptors")
):
    fp = features.FingerprintConfig("morgan" if fingerprint else "none", 2, n_bits)
    return features.FeatureConfig(tuple(descriptors), fp, 1000)


def canonical(smiles: str) -> str:
    return Chem.MolToSmiles(Chem.MolFromSmiles(smiles))


def test_stripping_dy_gives_the_primary_amide():
    cleaned, reason = chem.clean_smiles(KAGGLE_SMILES)
    assert reason is None
    assert canonical(cleaned) == canonical(EXPECTED)


def test_stripping_dy_matches_rdkit_replacing_the_atom_with_hydrogen():
    mol = Chem.RWMol(Chem.MolFromSmiles(KAGGLE_SMILES))
    dy = next(a for a in mol.GetAtoms() if a.GetSymbol() == "Dy")
    dy.SetAtomicNum(1)
    reference = Chem.RemoveHs(mol)
    cleaned, _ = chem.clean_smiles(KAGGLE_SMILES)
    assert canonical(cleaned) == Chem.MolToSmiles(reference)


def test_molecular_weight_of_the_known_example():
    cleaned, _ = chem.clean_smiles(KAGGLE_SMILES)
    batch = chem.featurize_smiles([cleaned], config())
    assert batch.reasons == [None]
    mw, hbd, hba = batch.descriptors[0]
    assert mw == pytest.approx(Descriptors.MolWt(Chem.MolFromSmiles(EXPECTED)))
    assert mw == pytest.approx(522.59, abs=0.01)  # C24H26N8O4S
    assert hbd >= 4 and hba >= 8


def test_any_rdkit_descriptor_can_be_a_feature():
    cleaned, _ = chem.clean_smiles(KAGGLE_SMILES)
    batch = chem.featurize_smiles([cleaned, "CCO"], config(descriptors=("RingCount", "NumHDonors", "MolWt")))
    # by hand: two benzene rings and the triazine; ethanol has none, one OH donor, and weighs 46.07
    assert batch.descriptors[0, 0] == 3
    assert batch.descriptors[1].tolist() == pytest.approx([0, 1, 46.069], abs=1e-3)


@pytest.mark.parametrize(
    ("smiles", "reason"),
    [
        ("", "empty SMILES"),
        ("   ", "empty SMILES"),
        (None, "empty SMILES"),
        ("CCO", "no [Dy] DNA-linker marker"),
        ("[Dy]CC[Dy]", "[Dy] DNA-linker marker appears 2 times (expected once)"),
        ("C" * 2000 + "[Dy]", "SMILES longer than 1000 characters (2004)"),
    ],
)
def test_clean_smiles_rejects_with_a_reason(smiles, reason):
    assert chem.clean_smiles(smiles) == (None, reason)


def test_wildcard_atoms_are_rejected():
    # RDKit parses "*" as an atom of atomic number 0 and molecular weight 0 (found by the property test)
    assert Descriptors.MolWt(Chem.MolFromSmiles("*")) == 0
    batch = chem.featurize_smiles(["*", "CC(*)N", "CCN"], config(n_bits=64))
    assert batch.reasons[:2] == ["wildcard atom (*) in the SMILES: not a molecule"] * 2
    assert batch.reasons[2] is None


def test_unparsable_smiles_is_a_reason_not_an_exception():
    batch = chem.featurize_smiles(["C1CC", "not a smiles", "CCO"], config(n_bits=64))
    assert batch.reasons[:2] == ["RDKit could not parse the SMILES"] * 2
    assert batch.reasons[2] is None


def test_fingerprints_are_bit_packed_and_unpack_to_rdkit_bits():
    from rdkit.Chem import rdFingerprintGenerator

    batch = chem.featurize_smiles([EXPECTED], config(n_bits=2048))
    assert batch.fp.shape == (1, 256)  # 2048 bits in 256 bytes
    bits = unpack_fingerprints(batch.fp, 2048)[0]
    expected = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048).GetFingerprintAsNumPy(
        Chem.MolFromSmiles(EXPECTED)
    )
    np.testing.assert_array_equal(bits, expected.astype(np.float32))


def test_fingerprint_can_be_switched_off():
    batch = chem.featurize_smiles([EXPECTED], config(fingerprint=False, n_bits=2048))
    assert batch.fp.shape == (1, 0)


def test_molecule_key_is_stable_and_keys_of_hashes_each_value_once():
    assert chem.molecule_key("CCO") == chem.molecule_key("CCO") != chem.molecule_key("CCN")
    assert chem.molecule_hash("CCO") == (7596530377537656302, 4151177718)  # same on every machine and Python
    digest = hashlib.blake2b(b"CCO", digest_size=12).digest()  # the definition, from hashlib directly
    assert chem.molecule_key("CCO") == int.from_bytes(digest[:8], "little") // 2
    keys = chem.keys_of(pl.Series(["CCO", "CCN", "CCO"]), check=True)
    assert keys["key"].to_list() == [
        chem.molecule_key("CCO"),
        chem.molecule_key("CCN"),
        chem.molecule_key("CCO"),
    ]
    assert keys["check"].to_list() == [chem.molecule_hash(s)[1] for s in ("CCO", "CCN", "CCO")]


def test_feature_spec_names_everything_that_shapes_features_and_its_differences():
    spec = config().spec()
    assert spec["descriptors"] == ["MolWt", "NumHDonors", "NumHAcceptors"]
    assert spec["fingerprint"] == {"type": "morgan", "radius": 2, "n_bits": 1024, "chirality": False}
    assert spec["rdkit"] == __import__("rdkit").__version__ and spec["version"] == features.FEATURE_VERSION
    assert features.FeatureConfig.from_spec(spec) == config()
    other = features.FeatureConfig(("MolWt",), features.FingerprintConfig("morgan", 3, 1024), 1000).spec()
    assert features.spec_differences(other, spec) == [
        "descriptors: ['MolWt'] != ['MolWt', 'NumHDonors', 'NumHAcceptors']",
        "fingerprint.radius: 3 != 2",
    ]


@pytest.mark.parametrize(
    "written",
    [
        KAGGLE_SMILES,
        "Cc1ccc(C#N)cc1Nc1nc(NCCC(C)S(C)=O)nc(Nc2cccc(C(=O)[NH][Dy])c2C(=O)O)n1",  # RDKit's canonical form
        "[Dy][NH]C(=O)c1cccc(Nc2nc(NCCC(C)S(C)=O)nc(Nc3cc(C#N)ccc3C)n2)c1C(=O)O",  # linker first
    ],
)
def test_every_way_of_writing_the_linker_gives_the_same_molecule(written):
    cleaned, reason = chem.clean_smiles(written)
    assert reason is None
    assert canonical(cleaned) == canonical(EXPECTED)


def rdkit_bits(generator, smiles: str) -> np.ndarray:
    return generator.GetFingerprintAsNumPy(Chem.MolFromSmiles(smiles)).astype(np.float32)


@pytest.mark.parametrize("chirality", [False, True])
@pytest.mark.parametrize(
    ("kind", "reference"),
    [
        ("morgan", lambda g, c, n: g.GetMorganGenerator(radius=3, fpSize=n, includeChirality=c)),
        (
            "feature_morgan",
            lambda g, c, n: g.GetMorganGenerator(
                radius=3, fpSize=n, includeChirality=c, atomInvariantsGenerator=g.GetMorganFeatureAtomInvGen()
            ),
        ),
        ("atom_pair", lambda g, c, n: g.GetAtomPairGenerator(fpSize=n, includeChirality=c)),
        (
            "topological_torsion",
            lambda g, c, n: g.GetTopologicalTorsionGenerator(fpSize=n, includeChirality=c),
        ),
    ],
)
def test_every_fingerprint_type_gives_rdkits_own_generator_bits(kind, reference, chirality):
    from rdkit.Chem import rdFingerprintGenerator

    molecules = [EXPECTED, "C[C@H](N)C(N)=O", "C[C@@H](N)C(N)=O", "OC(=O)[C@@H]1CCCN1"]
    config = features.FeatureConfig((), features.FingerprintConfig(kind, 3, 512, chirality), 1000)
    batch = chem.featurize_smiles(molecules, config)
    assert batch.fp.shape == (4, 64)
    generator = reference(rdFingerprintGenerator, chirality, 512)
    for packed, smiles in zip(batch.fp, molecules, strict=True):
        np.testing.assert_array_equal(
            unpack_fingerprints(packed[None], 512)[0], rdkit_bits(generator, smiles)
        )


def test_chirality_tells_l_from_d_alanine_amide():
    l_ala, d_ala = "C[C@H](N)C(N)=O", "C[C@@H](N)C(N)=O"
    for chirality, differ in ((False, False), (True, True)):
        config = features.FeatureConfig((), features.FingerprintConfig("morgan", 2, 1024, chirality), 1000)
        fp = chem.featurize_smiles([l_ala, d_ala], config).fp
        assert (fp[0] != fp[1]).any() == differ, chirality


def test_the_spec_records_only_what_shapes_the_bits():
    assert features.FingerprintConfig("atom_pair", 3, 256, True).spec() == {
        "type": "atom_pair",
        "n_bits": 256,
        "chirality": True,
    }  # no radius: atom pairs have none
    assert features.FingerprintConfig("none", 3, 256, True).spec() == {"type": "none"}
    assert features.FingerprintConfig("none").bits == 0
    for fingerprint in (
        features.FingerprintConfig("feature_morgan", 3, 256, True),
        features.FingerprintConfig("none"),
    ):
        config = features.FeatureConfig(("MolWt",), fingerprint, 100)
        assert features.FeatureConfig.from_spec(config.spec()).spec() == config.spec()
