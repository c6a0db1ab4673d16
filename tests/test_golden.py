"""The feature version pins what features are: a change of features without a ``FEATURE_VERSION`` bump fails here.

The golden file holds, for the current :data:`stages.features.FEATURE_VERSION`, digests of the features of fixed
molecule sets (edge cases, generated BELKA-like molecules, the real Kaggle sample) under every fingerprint type and
RDKit's 217 descriptors, and of the stored format (what featurize writes for a fixed input). A comment or a
refactor leaves every digest equal; a change of cleaning, descriptors, fingerprints or stored format does not, and
then the version must be bumped (which empties the feature cache's namespace and makes models refuse the old
features, as they should). To record a bumped version (or a new RDKit that changed features):

    python -m tests.test_golden --update
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import polars as pl
import rdkit

from stages import chem, features, featurize
from stages.io import write_parquet
from tests.conftest import SHARED_SAMPLE

GOLDEN = Path(__file__).with_name("golden") / "features.json"

# Edge cases a real file can hold: stereo centres (L- and D-alanine amides), charges, isotopes, [nH], Kekulé and
# aromatic forms of one ring, explicit hydrogens, a salt, a radical, a large ring, invalid ones (rejected).
EDGE_CASES = [
    "C[C@H](N)C(N)=O", "C[C@@H](N)C(N)=O", "CC(N)C(N)=O", "C1=CC=CC=C1C(N)=O", "c1ccccc1C(N)=O",
    "C[N+](C)(C)CC(=O)[O-]", "[13CH3]CO", "[2H]C([2H])([2H])O", "c1cc[nH]c1", "Cn1ccnc1", "O=[N+]([O-])c1ccccc1",
    "[Na+].[Cl-]", "C[CH2]", "C1CCCCCCCCCCCCCCC1", "F/C=C/F", "F/C=C\\F", "OC(=O)[C@@H]1CCCN1",
    "C(C)(C)(C)(C)C", "c1cccc1", "C1CC", "Cc1ccc(C#N)cc1Nc1nc(NCCC(C)S(C)=O)nc(Nc2cccc(C(N)=O)c2C(=O)O)n1",
    "[Si](C)(C)(C)C", "B(O)O", "P(=O)(O)(O)O", "S(=O)(=O)(N)c1ccccc1", "[Se]", "N#N", "[H][H]",
]  # fmt: skip

FINGERPRINTS = {
    "morgan": features.FingerprintConfig("morgan", 2, 1024, False),
    "morgan_r3_chiral": features.FingerprintConfig("morgan", 3, 2048, True),
    "feature_morgan_chiral": features.FingerprintConfig("feature_morgan", 2, 512, True),
    "atom_pair": features.FingerprintConfig("atom_pair", 2, 1024, False),
    "topological_torsion_chiral": features.FingerprintConfig("topological_torsion", 2, 1024, True),
}
DEFAULT_DESCRIPTORS = ("MolWt", "NumHDonors", "NumHAcceptors")


def digest_batch(batch: features.FeatureBatch) -> str:
    """sha256 of descriptor values (NaN as one bit pattern), fingerprint bytes and reject reasons, in order."""
    descriptors = np.where(np.isnan(batch.descriptors), np.nan, batch.descriptors).astype("<f8")
    h = hashlib.sha256(descriptors.tobytes())
    h.update(np.ascontiguousarray(batch.fp).tobytes())
    h.update("\n".join(r or "" for r in batch.reasons).encode())
    return h.hexdigest()


def digest_frame(frame: pl.DataFrame) -> str:
    """sha256 of a table's logical content (names, types, values), independent of parquet's encoding."""
    h = hashlib.sha256()
    for name in frame.columns:
        column = frame[name]
        h.update(f"{name}:{column.dtype}\n".encode())
        if column.dtype == pl.Binary:
            for value in column.to_list():
                h.update(b"\x00" if value is None else b"\x01" + len(value).to_bytes(4, "little") + value)
        elif column.dtype == pl.String:
            h.update(json.dumps(column.to_list()).encode())
        else:
            h.update(column.to_numpy().astype(f"<{column.to_numpy().dtype.str[1:]}").tobytes())
    return h.hexdigest()


def generated_molecules() -> list[str]:
    """300 cleaned molecules of the generator's chemistry, fixed in a file (the generator may change)."""
    return (GOLDEN.parent / "generated_molecules.txt").read_text().split()


def sample_molecules(limit: int | None = None) -> list[str]:
    """The real sample's distinct molecules in file order, cleaned: the first ``limit``, or all."""
    smiles = pl.read_csv(SHARED_SAMPLE)["molecule_smiles"].unique(maintain_order=True)
    smiles = smiles.to_list() if limit is None else smiles.head(limit).to_list()
    return [chem.clean_smiles(s)[0] for s in smiles]


def stored_format(tmp: Path) -> dict[str, str]:
    """What featurize writes for a fixed BELKA-format input (edge cases included): rows, molecules, rejects."""
    smiles = [s.replace("C(N)=O", "C(=O)N[Dy]", 1) if "C(N)=O" in s else s + "[Dy]" for s in EDGE_CASES]
    raw = pl.DataFrame(
        {
            "id": list(range(len(smiles))),
            **{bb: [f"B{i % 3}" for i in range(len(smiles))] for bb in featurize.BB_COLUMNS},
            "molecule_smiles": smiles,
            "protein_name": ["BRD4", "HSA", "sEH"] * (len(smiles) // 3) + ["BRD4"] * (len(smiles) % 3),
            "binds": [i % 2 for i in range(len(smiles))],
        }
    )
    write_parquet(raw, tmp / "raw.parquet")
    config = features.FeatureConfig(DEFAULT_DESCRIPTORS, FINGERPRINTS["morgan"], 400)
    options = featurize.Options(config=config, batch_rows=1000, cache_dir=None)
    featurize.featurize(tmp / "raw.parquet", tmp / "out", tmp / "rejects.csv", options, needs_binds=True)
    return {
        "stored/rows": digest_frame(pl.read_parquet(tmp / "out" / "rows")),
        "stored/molecules": digest_frame(pl.read_parquet(tmp / "out" / "molecules")),
        "stored/rejects": digest_frame(pl.read_csv(tmp / "rejects.csv")),
    }


def current_digests(tmp: Path) -> dict[str, str]:
    sets = {"edge": EDGE_CASES, "generated": generated_molecules()}
    if SHARED_SAMPLE.exists():
        sets["sample"] = sample_molecules(2000)
    digests = {}
    for name, molecules in sets.items():
        for fp_name, fingerprint in FINGERPRINTS.items():
            config = features.FeatureConfig(DEFAULT_DESCRIPTORS, fingerprint, 400)
            digests[f"{name}/{fp_name}"] = digest_batch(chem.featurize_smiles(molecules, config))
        every = tuple(chem.descriptor_functions())
        subset = molecules if name == "edge" else molecules[:60]
        config = features.FeatureConfig(every, features.FingerprintConfig("none"), 400)
        digests[f"{name}/all_descriptors"] = digest_batch(chem.featurize_smiles(subset, config))
    digests.update(stored_format(tmp))
    return digests


def test_features_match_the_golden_digests_of_this_feature_version(tmp_path: Path) -> None:
    golden = json.loads(GOLDEN.read_text())
    assert golden["feature_version"] == features.FEATURE_VERSION, (
        f"FEATURE_VERSION is {features.FEATURE_VERSION} but {GOLDEN.name} pins version {golden['feature_version']}: "
        "record the new version's digests with `python -m tests.test_golden --update`"
    )
    digests = current_digests(tmp_path)
    changed = sorted(name for name, value in digests.items() if golden["digests"].get(name) != value)
    missing = sorted(
        set(golden["digests"]) - set(digests) - {n for n in golden["digests"] if n.startswith("sample/")}
    )
    assert not changed and not missing, (
        f"features changed without a FEATURE_VERSION bump (golden made with RDKit {golden['rdkit']}, running "
        f"{rdkit.__version__}): {changed or missing}. If the change is intended, bump FEATURE_VERSION in "
        "stages/features.py and run `python -m tests.test_golden --update`"
    )


def test_the_golden_sets_cover_what_they_claim() -> None:
    config = features.FeatureConfig(DEFAULT_DESCRIPTORS, FINGERPRINTS["morgan"], 400)
    batch = chem.featurize_smiles(EDGE_CASES, config)
    rejected = [s for s, r in zip(EDGE_CASES, batch.reasons, strict=True) if r]
    assert rejected == ["C(C)(C)(C)(C)C", "c1cccc1", "C1CC"]  # invalid valence, impossible ring, open ring
    assert len(chem.descriptor_functions()) >= 200
    if SHARED_SAMPLE.exists():
        assert len(sample_molecules(2000)) == 2000


def update() -> None:
    import tempfile

    old = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        digests = current_digests(Path(tmp))
    if old and old["feature_version"] == features.FEATURE_VERSION and old["rdkit"] == rdkit.__version__:
        changed = sorted(n for n, v in digests.items() if old["digests"].get(n, v) != v)
        if changed:
            sys.exit(
                f"features changed ({changed}) but FEATURE_VERSION and RDKit did not: bump FEATURE_VERSION first"
            )
    GOLDEN.parent.mkdir(exist_ok=True)
    record = {"feature_version": features.FEATURE_VERSION, "rdkit": rdkit.__version__, "digests": digests}
    GOLDEN.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN} ({len(digests)} digests)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Record the golden feature digests of this FEATURE_VERSION.")
    parser.add_argument("--update", action="store_true", required=True)
    parser.parse_args()
    update()
