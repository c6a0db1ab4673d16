"""Correctness of featurize between batches and runs: rejected molecules, counts, key collisions, the shared
feature cache, configurable descriptors. Each case here failed before its fix."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors

from stages import chem
from stages.atomic import atomic_file
from stages.featurize import KeyCollisionError, featurize_file
from tests.conftest import ROOT, project_env, tree_hashes
from tests.test_bad_input import make_params, raw_frame

UNPARSABLE = "C1CCC(=O)N[Dy]"  # passes the [Dy] checks, RDKit cannot parse it (unclosed ring)


def with_smiles(frame: pl.DataFrame, changes: dict[int, str]) -> pl.DataFrame:
    values = frame["molecule_smiles"].to_list()
    for i, value in changes.items():
        values[i] = value
    return frame.with_columns(pl.Series("molecule_smiles", values))


def run(tmp_path: Path, frame: pl.DataFrame, name: str = "out", cache: str = "cache", **settings) -> dict:
    source = tmp_path / f"{name}.parquet"
    frame.write_parquet(source)
    params = make_params(**{"max_reject_fraction": 0.01, **settings})
    return featurize_file(
        source, tmp_path / name, tmp_path / f"{name}-rejects.csv", params, True, tmp_path / cache
    )


def test_every_row_of_a_rejected_molecule_is_rejected_across_a_batch_boundary(tmp_path):
    # one molecule's three rows, ids 999-1001, straddle the boundary of 1,000-row batches
    frame = with_smiles(raw_frame(1002), dict.fromkeys((999, 1000, 1001), UNPARSABLE))
    counts = run(tmp_path, frame, batch_rows=1000)
    rejects = pl.read_csv(tmp_path / "out-rejects.csv")
    assert rejects["id"].to_list() == [999, 1000, 1001]
    assert set(rejects["reason"]) == {"RDKit could not parse the SMILES"}
    rows = pl.read_parquet(tmp_path / "out" / "rows")
    molecules = pl.read_parquet(tmp_path / "out" / "molecules")
    assert not {999, 1000, 1001} & set(rows["id"].to_list())
    assert set(rows["molecule_key"]) <= set(molecules["molecule_key"])  # every row's molecule exists
    assert counts["rejected_rows"] == 3 and counts["rejected_molecules"] == 1


def test_the_log_counts_add_up_with_a_warm_cache_and_a_rejected_molecule(tmp_path, caplog):
    frame = with_smiles(raw_frame(300), {7: UNPARSABLE})
    first = run(tmp_path, frame, "first")
    caplog.set_level("INFO", logger="stages.featurize")
    second = run(tmp_path, frame, "second")
    for counts in (first, second):
        assert counts["unique"] == counts["reused"] + counts["computed"] == 300
        assert counts["molecules"] == counts["unique"] - counts["rejected_molecules"] == 299
    assert (first["reused"], first["computed"]) == (0, 300)
    assert (second["reused"], second["computed"]) == (300, 0)
    assert (
        "300 unique molecules (300 reused from the feature cache, 0 computed); 1 molecules and 1 rows"
        in caplog.text
    )


@pytest.fixture
def colliding_keys(monkeypatch):
    original = chem.molecule_hash
    weak = lambda s: (len(s), original(s)[1])  # noqa: E731
    monkeypatch.setattr(chem, "molecule_hash", weak)


def test_two_molecules_with_one_key_in_a_batch_stop_the_run(tmp_path, colliding_keys):
    frame = with_smiles(raw_frame(6), {0: "CCC(=O)N[Dy]", 3: "CCN(=O)C[Dy]"})  # same length, other molecules
    frame = frame.filter(pl.col("id").is_in([0, 3]))
    with pytest.raises(
        KeyCollisionError,
        match=r"molecule_key \d+ is the 63-bit hash of 'CCC\(=O\)N' and 'CCN\(=O\)C' in the same batch",
    ):
        run(tmp_path, frame)
    assert not (tmp_path / "out").exists()


def test_a_molecule_whose_key_was_seen_in_an_earlier_batch_stops_the_run(tmp_path, colliding_keys):
    # batch 1: one molecule 1,000 times; batch 2: another molecule of the same cleaned length (11)
    frame = with_smiles(
        raw_frame(1001), {i: "CCCCCC(=O)N[Dy]" for i in range(1000)} | {1000: "CCCCNCC(=O)[Dy]"}
    )
    with pytest.raises(
        KeyCollisionError, match="'CCCCNCC\\(=O\\)' and a different molecule seen in an earlier batch"
    ):
        run(tmp_path, frame, batch_rows=1000)


def test_same_molecule_in_many_batches_is_not_a_collision(tmp_path):
    frame = pl.concat([raw_frame(1000), raw_frame(1000)]).with_columns(pl.Series("id", range(2000)))
    counts = run(tmp_path, frame, batch_rows=1000)
    assert counts["unique"] == 1000 and counts["rows"] == 2000


def test_a_cached_molecule_with_the_same_key_but_another_check_is_recomputed(tmp_path, monkeypatch, caplog):
    frame = raw_frame(50)
    run(tmp_path, frame, "first")
    reference = pl.read_parquet(tmp_path / "first" / "molecules")
    # another molecule's features now sit in the cache under these keys: the check tells them apart
    original = chem.molecule_hash
    monkeypatch.setattr(chem, "molecule_hash", lambda s: (original(s)[0], original(s)[1] ^ 1))
    counts = run(tmp_path, frame, "second")
    assert counts["computed"] == 50 and counts["reused"] == 0
    assert "50 cached molecule(s) share a key with another molecule" in caplog.text
    assert pl.read_parquet(tmp_path / "second" / "molecules").equals(reference)


def test_descriptors_are_configurable(tmp_path):
    run(tmp_path, raw_frame(30), descriptors=["TPSA", "MolWt"])
    molecules = pl.read_parquet(tmp_path / "out" / "molecules")
    assert molecules.columns == ["molecule_key", "TPSA", "MolWt", "fp"]
    cleaned = raw_frame(30)["molecule_smiles"][0].replace("[Dy]", "")
    mol = Chem.MolFromSmiles(cleaned)
    first = molecules.row(0, named=True)
    assert first["TPSA"] == pytest.approx(Descriptors.TPSA(mol)) and first["MolWt"] == pytest.approx(
        Descriptors.MolWt(mol)
    )
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["features"]["descriptors"] == ["TPSA", "MolWt"]


# ---------------------------------------------------------------------------------------------- shared cache

HOLD = """
import sys, time
from pathlib import Path
from stages.atomic import atomic_file
with atomic_file(Path(sys.argv[1])) as tmp:
    tmp.write_bytes(b"half-written by a live writer")
    Path(sys.argv[2]).write_text(str(tmp))
    time.sleep(60)
"""


def test_a_writer_never_removes_a_live_writers_temporary(tmp_path):
    target, marker = tmp_path / "part-x.parquet", tmp_path / "marker"
    writer = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(target), str(marker)], cwd=ROOT, env=project_env()
    )
    try:
        deadline = time.monotonic() + 60
        while not marker.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        live_tmp = Path(marker.read_text())
        with atomic_file(target) as tmp:  # another writer of the same part, in this process
            tmp.write_bytes(b"complete")
        assert live_tmp.exists() and live_tmp.read_bytes() == b"half-written by a live writer"
        assert target.read_bytes() == b"complete"
    finally:
        writer.kill()
        writer.wait()
    with atomic_file(target) as tmp:  # the writer is dead now: its temporary is stale and goes
        tmp.write_bytes(b"again")
    assert not live_tmp.exists()


@pytest.mark.slow
def test_two_processes_sharing_the_feature_cache(tmp_path):
    """Two featurize runs at once, on overlapping molecules, with one cache: both outputs equal runs without a
    shared cache, and the cache is sound. Again at once on that cache with every part damaged (both runs replace the
    same parts): the same outputs, a sound cache, and the next runs compute nothing."""
    import copy
    import re

    import yaml

    from tests.conftest import SMALL_PARAMS, deep_update
    from tests.test_feature_cache import assert_sound_cache

    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), copy.deepcopy(SMALL_PARAMS))
    params["resources"]["workers"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    frames = {"a": raw_frame(6000), "b": raw_frame(6000).with_columns(pl.col("id") + 10_000)}
    frames["b"] = with_smiles(
        frames["b"], {i: f"{'N' * (i % 7 + 1)}C{'C' * (i % 50)}C(=O)N[Dy]" for i in range(3000)}
    )
    for name, frame in frames.items():
        frame.write_parquet(tmp_path / f"{name}.parquet")

    def command(name: str, out: str, cache: str) -> list[str]:
        return [sys.executable, "-m", "stages.featurize", "--input", str(tmp_path / f"{name}.parquet"),
                "--output", str(tmp_path / out), "--params", str(tmp_path / "params.yaml"), "--cache",
                str(tmp_path / cache)]  # fmt: skip

    def at_once(prefix: str) -> list[str]:
        shared = [subprocess.Popen(command(n, f"{prefix}-{n}", "shared"), cwd=ROOT, env=project_env(),
                                   stderr=subprocess.PIPE, text=True) for n in frames]  # fmt: skip
        errors = [p.communicate(timeout=300)[1] for p in shared]
        assert [p.returncode for p in shared] == [0, 0], errors
        assert not [e for e in errors if "Traceback" in e], errors
        return errors

    at_once("shared")
    for name in frames:
        subprocess.run(
            command(name, f"alone-{name}", f"alone-cache-{name}"), cwd=ROOT, env=project_env(), check=True
        )
        assert tree_hashes(tmp_path / f"shared-{name}") == tree_hashes(tmp_path / f"alone-{name}")
    held = assert_sound_cache(tmp_path / "shared")
    assert held == pl.concat([frame["molecule_smiles"] for frame in frames.values()]).n_unique()  # once each

    parts = sorted((tmp_path / "shared").rglob("part-*.parquet"))
    for number, part in enumerate(parts):  # half cut short, half another part's file
        part.write_bytes(part.read_bytes()[:100] if number % 2 else parts[number - 1].read_bytes())
    at_once("again")
    for name in frames:
        assert tree_hashes(tmp_path / f"again-{name}") == tree_hashes(tmp_path / f"alone-{name}")
    assert assert_sound_cache(tmp_path / "shared") == held
    for name in frames:
        log = subprocess.run(command(name, f"next-{name}", "shared"), cwd=ROOT, env=project_env(), check=True,
                             capture_output=True, text=True).stderr  # fmt: skip
        unique = frames[name]["molecule_smiles"].n_unique()
        assert re.search(
            rf"{unique} unique molecules \({unique} reused from the feature cache, 0 computed", log
        ), log
