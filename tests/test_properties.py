"""Property-based tests of the SMILES cleaning and feature functions: any string in, features or a reason out."""

from __future__ import annotations

import itertools

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages import chem, features
from stages.featurize import KeySet

CONFIG = features.FeatureConfig(
    ("MolWt", "NumHDonors", "NumHAcceptors"), features.FingerprintConfig("morgan", 2, 64), 200
)
MAX_LENGTH = 200

SMILES_ALPHABET = "CNOSPFIBrcnos()[]=#@+-123456789%/\\.Dy "
smiles_like = st.text(alphabet=SMILES_ALPHABET, max_size=80)
garbage = st.text(max_size=80)  # any unicode, NUL and surrogate-free code points included
with_nul = st.builds(lambda a, b: f"{a}\x00{b}", smiles_like, smiles_like)
very_long = st.builds(
    lambda unit, n: unit * n, st.sampled_from(["C", "c1ccccc1", "[Dy]", "CC(=O)N"]), st.integers(30, 2000)
)
REAL = st.sampled_from(
    [
        "Cc1ccc(C#N)cc1Nc1nc(NCCC(C)S(C)=O)nc(Nc2cccc(C(=O)N[Dy])c2C(=O)O)n1",
        "CCOC(=O)c1cncnc1Nc1nc(Nc2cn(CC)nc2C)nc(N[C@H](Cc2ccc([N+](=O)[O-])cc2)C(=O)N[Dy])n1",
        "CC(C)C(=O)N[Dy]",
    ]
)


@st.composite
def with_dy_insertions(draw) -> str:
    """A SMILES-like or real string with zero or more ``[Dy]`` markers inserted at random places."""
    text = draw(st.one_of(REAL, smiles_like))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(text)))
        text = text[:at] + chem.DY + text[at:]
    return text


any_smiles = st.one_of(st.none(), garbage, smiles_like, with_nul, very_long, with_dy_insertions(), REAL)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(any_smiles)
def test_clean_smiles_gives_exactly_one_of_cleaned_or_reason(smiles: str | None) -> None:
    cleaned, reason = chem.clean_smiles(smiles, MAX_LENGTH)
    assert (cleaned is None) != (reason is None)
    if cleaned is not None:
        assert smiles is not None and smiles.count(chem.DY) == 1
        assert chem.DY not in cleaned and len(cleaned) < len(smiles)
        assert len(smiles) <= MAX_LENGTH and smiles.strip()
    else:
        assert isinstance(reason, str) and reason
        if smiles is not None and smiles.strip() and len(smiles) <= MAX_LENGTH:
            assert smiles.count(chem.DY) != 1 or chem.DY in smiles.replace(chem.DY, "")
            assert "[Dy]" in reason


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_smiles.filter(lambda s: s is not None), max_size=4))
def test_featurize_smiles_never_raises(smiles: list[str]) -> None:
    # raw garbage too, not only cleaned strings; capped, as RDKit on a 10,000-atom chain is slow, not wrong
    cleaned = [(chem.clean_smiles(s, MAX_LENGTH)[0] or s)[:MAX_LENGTH] for s in smiles]
    batch = chem.featurize_smiles(cleaned, CONFIG)
    n = len(cleaned)
    assert batch.descriptors.shape == (n, 3)
    assert batch.fp.shape == (n, CONFIG.fp_bytes) and batch.fp.dtype == np.uint8
    assert len(batch.reasons) == n
    for i, reason in enumerate(batch.reasons):
        mw, hbd, hba = batch.descriptors[i]
        if reason is None:
            assert np.isfinite(mw) and mw > 0
            assert hbd >= 0 and hba >= 0
        else:
            assert isinstance(reason, str) and reason
            assert mw == 0 and not batch.fp[i].any()


@settings(max_examples=100, deadline=None)
@given(with_dy_insertions())
def test_single_marker_real_smiles_featurize(smiles: str) -> None:
    cleaned, reason = chem.clean_smiles(smiles, 1_000)
    if smiles.count(chem.DY) != 1 or chem.DY in smiles.replace(chem.DY, ""):
        assert cleaned is None and reason is not None
        return
    assert reason is None
    batch = chem.featurize_smiles([cleaned], CONFIG)
    assert (batch.reasons[0] is None) == (chem.parse(cleaned)[0] is not None)


@settings(max_examples=200, deadline=None)
@given(garbage)
def test_molecule_key_is_stable_and_63_bit(text: str) -> None:
    key = chem.molecule_key(text)
    assert 0 <= key < 2**63
    assert key == chem.molecule_key(text)


def test_clean_smiles_known_reasons() -> None:
    assert chem.clean_smiles("CC(=O)N[Dy]") == ("CC(=O)N", None)
    assert chem.clean_smiles("")[1] == "empty SMILES"
    assert chem.clean_smiles("   ")[1] == "empty SMILES"
    assert chem.clean_smiles(None)[1] == "empty SMILES"
    assert chem.clean_smiles("CC(=O)N")[1] == "no [Dy] DNA-linker marker"
    assert "appears 2 times" in chem.clean_smiles("[Dy]CC(=O)N[Dy]")[1]
    assert "longer than 20 characters (25)" in chem.clean_smiles("C" * 21 + "[Dy]", 20)[1]
    assert chem.clean_smiles("[[Dy]Dy]")[0] is None  # removing one marker must not leave another
    batch = chem.featurize_smiles(["C1CC(=O)N", "CC\x00C", ""], CONFIG)
    assert all(r and r.startswith("RDKit could not") for r in batch.reasons)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300), max_size=40))
def test_key_set_matches_a_python_dict(batches: list[list[int]]) -> None:
    """featurize's set of molecules seen (key -> check), through merges of its sorted runs, answers like a
    Python dict."""
    seen, reference = KeySet(), {}
    for batch in batches:
        keys = np.unique(np.array(batch, dtype=np.int64))
        found, _ = seen.lookup(keys)
        new = keys[~found]
        assert set(new.tolist()) == set(keys.tolist()) - set(reference)
        seen.add(new, new // 7)
        reference.update({k: k // 7 for k in new.tolist()})
        assert len(seen) == len(reference)
    probe = np.array(sorted(set(reference) | {0, 1, -1}), dtype=np.int64)
    found, values = seen.lookup(probe)
    assert found.tolist() == [k in reference for k in probe.tolist()]
    assert values[found].tolist() == [reference[k] for k in probe[found].tolist()]


def test_key_set_merges_runs_and_answers_like_a_dict_on_random_batches() -> None:
    """Thousands of keys in 300 batches of random sizes (some repeating earlier keys, some empty), looked up in
    random order: the same answers as a dict, and the runs stay sorted, each more than twice the next (so a merge
    never re-sorts what the set holds, and a look-up searches at most log2(keys) + 1 runs)."""
    rng = np.random.default_rng(5)
    seen, reference = KeySet(), {}
    for _ in range(300):
        fresh = rng.integers(-(2**63), 2**63 - 1, size=int(rng.integers(0, 400)), dtype=np.int64)
        known = np.array(list(reference), dtype=np.int64)
        again = rng.choice(known, size=min(len(known), int(rng.integers(0, 50)))) if len(known) else known
        batch = rng.permutation(np.unique(np.concatenate([fresh, again])))
        found, values = seen.lookup(batch)
        assert found.tolist() == [k in reference for k in batch.tolist()]
        assert values.tolist() == [reference.get(k, 0) for k in batch.tolist()]
        new = batch[~found]
        seen.add(new, new ^ 12345)
        reference.update(zip(new.tolist(), (new ^ 12345).tolist(), strict=True))
        sizes = [len(keys) for keys, _ in seen.runs]
        assert all(a > 2 * b for a, b in itertools.pairwise(sizes)), sizes
        assert all(bool(np.all(keys[1:] > keys[:-1])) for keys, _ in seen.runs)
        assert len(seen) == sum(sizes) == len(reference)
    assert len(reference) > 50_000 and len(seen.runs) <= np.log2(len(reference)) + 1
