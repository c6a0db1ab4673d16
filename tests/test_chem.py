import hashlib

import numpy as np
import polars as pl
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors

from stages import chem
from stages.molecules import unpack_fingerprints

# A real Kaggle row: building block 1 (an Fmoc amino acid) sits on the triazine; its acid is the DNA-linked amide.
KAGGLE_SMILES = "Cc1ccc(C#N)cc1Nc1nc(NCCC(C)S(C)=O)nc(Nc2cccc(C(=O)N[Dy])c2C(=O)O)n1"
# The same molecule without its DNA tag, written by hand: the amide is primary.
EXPECTED = "Cc1ccc(C#N)cc1Nc1nc(NCCC(C)S(C)=O)nc(Nc2cccc(C(N)=O)c2C(=O)O)n1"


def config(
    fingerprint: bool = True, n_bits: int = 1024, descriptors=("MolWt", "NumHDonors", "NumHAcceptors")
):
    return chem.FeatureConfig(tuple(descriptors), fingerprint, 2, n_bits, 1000)


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
    features = chem.featurize_smiles([cleaned], config())
    assert features.reasons == [None]
    mw, hbd, hba = features.descriptors[0]
    assert mw == pytest.approx(Descriptors.MolWt(Chem.MolFromSmiles(EXPECTED)))
    assert mw == pytest.approx(522.59, abs=0.01)  # C24H26N8O4S
    assert hbd >= 4 and hba >= 8


def test_any_rdkit_descriptor_can_be_a_feature():
    cleaned, _ = chem.clean_smiles(KAGGLE_SMILES)
    features = chem.featurize_smiles(
        [cleaned, "CCO"], config(descriptors=("RingCount", "NumHDonors", "MolWt"))
    )
    # by hand: two benzene rings and the triazine; ethanol has none, one OH donor, and weighs 46.07
    assert features.descriptors[0, 0] == 3
    assert features.descriptors[1].tolist() == pytest.approx([0, 1, 46.069], abs=1e-3)


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
    features = chem.featurize_smiles(["*", "CC(*)N", "CCN"], config(n_bits=64))
    assert features.reasons[:2] == ["wildcard atom (*) in the SMILES: not a molecule"] * 2
    assert features.reasons[2] is None


def test_unparsable_smiles_is_a_reason_not_an_exception():
    features = chem.featurize_smiles(["C1CC", "not a smiles", "CCO"], config(n_bits=64))
    assert features.reasons[:2] == ["RDKit could not parse the SMILES"] * 2
    assert features.reasons[2] is None


def test_fingerprints_are_bit_packed_and_unpack_to_rdkit_bits():
    from rdkit.Chem import rdFingerprintGenerator

    features = chem.featurize_smiles([EXPECTED], config(n_bits=2048))
    assert features.fp.shape == (1, 256)  # 2048 bits in 256 bytes
    bits = unpack_fingerprints(features.fp, 2048)[0]
    expected = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048).GetFingerprintAsNumPy(
        Chem.MolFromSmiles(EXPECTED)
    )
    np.testing.assert_array_equal(bits, expected.astype(np.float32))


def test_fingerprint_can_be_switched_off():
    features = chem.featurize_smiles([EXPECTED], config(fingerprint=False, n_bits=2048))
    assert features.fp.shape == (1, 0)


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
    assert spec["fingerprint"] == {"enabled": True, "radius": 2, "n_bits": 1024}
    assert spec["rdkit"] == __import__("rdkit").__version__ and len(spec["code"]) == 16
    assert chem.FeatureConfig.from_spec(spec) == config()
    other = chem.FeatureConfig(("MolWt",), True, 3, 1024, 1000).spec()
    assert chem.spec_differences(other, spec) == [
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
