"""ci/upgrade_check.py: the reduced inputs of the dependency-upgrade check. The sample is by molecule (all of a
molecule's rows or none), seeded, and the same whatever the input's form, row order or batching; the summary
compares two runs. (The job itself runs through gitlab-ci-local in tests/test_gitlab_ci.py.)"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from ci import upgrade_check
from tests.conftest import ROOT

SCRIPT = ROOT / "ci" / "upgrade_check.py"


@pytest.fixture
def belka_rows(belka_sample: Path) -> pl.DataFrame:
    """The real sample's rows, each molecule given a second row for another protein (BELKA has up to three)."""
    rows = pl.read_csv(belka_sample)
    twins = rows.head(3000).with_columns(pl.col("id") + 10**9, pl.lit("sEH").alias("protein_name"))
    return pl.concat([rows, twins])


def sample_of(source: Path, target: Path, fraction: float = 0.2, seed: int = 0) -> pl.DataFrame:
    upgrade_check.sample_input(source, target, fraction, seed, labelled=True)
    return pl.read_parquet(target)


def test_sample_keeps_every_row_of_a_chosen_molecule(belka_rows, tmp_path):
    belka_rows.write_parquet(tmp_path / "train.parquet")
    sample = sample_of(tmp_path / "train.parquet", tmp_path / "sample.parquet")

    chosen = set(sample["molecule_smiles"].to_list())
    expected = belka_rows.filter(pl.col("molecule_smiles").is_in(list(chosen)))
    assert sample.sort("id").equals(expected.sort("id"))  # all of their rows, nothing else, values unchanged
    molecules = belka_rows["molecule_smiles"].n_unique()
    assert 0.17 * molecules < len(chosen) < 0.23 * molecules  # about the fraction (binomial, n = 16,731)


def test_sample_is_the_same_whatever_the_input_form_and_order(belka_rows, tmp_path):
    belka_rows.write_parquet(tmp_path / "train.parquet")
    reference = sample_of(tmp_path / "train.parquet", tmp_path / "a.parquet").sort("id")

    shuffled = belka_rows.sample(fraction=1.0, shuffle=True, seed=3)
    shuffled.write_csv(tmp_path / "train.csv")
    (tmp_path / "parts").mkdir()
    for number, part in enumerate(shuffled.iter_slices(4000)):
        part.write_parquet(tmp_path / "parts" / f"part-{number}.parquet")
    for source in (tmp_path / "train.csv", tmp_path / "parts"):
        assert sample_of(source, tmp_path / "b.parquet").sort("id").equals(reference), source

    again = tmp_path / "again.parquet"
    sample_of(tmp_path / "train.parquet", again)
    assert again.read_bytes() == (tmp_path / "a.parquet").read_bytes()  # byte for byte


def test_the_seed_and_fraction_choose(belka_rows, tmp_path):
    belka_rows.write_parquet(tmp_path / "train.parquet")
    small = set(
        sample_of(tmp_path / "train.parquet", tmp_path / "s.parquet", 0.1)["molecule_smiles"].to_list()
    )
    large = set(
        sample_of(tmp_path / "train.parquet", tmp_path / "l.parquet", 0.3)["molecule_smiles"].to_list()
    )
    other = set(
        sample_of(tmp_path / "train.parquet", tmp_path / "o.parquet", 0.1, 1)["molecule_smiles"].to_list()
    )
    assert small < large  # a larger fraction keeps every molecule a smaller one kept
    assert len(small & other) < 0.3 * len(small)  # another seed, another sample


def test_molecule_chosen_is_a_keyed_blake2b_hash():
    """Pinned to hashlib directly: the choice must not move with any library's version."""
    digest = hashlib.blake2b(b"CCO", digest_size=8, key=b"7").digest()
    cut = int.from_bytes(digest, "little") / 2**64
    assert upgrade_check.molecule_chosen("CCO", cut + 1e-9, 7)
    assert not upgrade_check.molecule_chosen("CCO", cut - 1e-9, 7)


def test_an_empty_sample_is_one_clear_error(belka_rows, tmp_path):
    belka_rows.head(20).write_parquet(tmp_path / "train.parquet")
    with pytest.raises(
        upgrade_check.CheckError, match=r"the sample is empty .*raise UPGRADE_SAMPLE_FRACTION"
    ):
        upgrade_check.sample_input(tmp_path / "train.parquet", tmp_path / "s.parquet", 1e-9, 0, labelled=True)
    assert not (tmp_path / "s.parquet").exists()


GENERATED = {"train": "data/generated/train.parquet", "test": "data/generated/test.parquet"}


def test_generated_inputs_come_from_dvc_yaml():
    assert upgrade_check.generated_inputs(ROOT / "dvc.yaml") == GENERATED


@pytest.mark.parametrize("data", ["generated", "sample"])
def test_inputs_already_generated_are_used_as_they_are(tmp_path, data):
    chosen = upgrade_check.reduced_inputs({"inputs": GENERATED}, GENERATED, data, 0.001, 0, tmp_path)
    assert (chosen.train, chosen.test) == (GENERATED["train"], GENERATED["test"])
    assert not list(tmp_path.iterdir())


def test_real_inputs_are_replaced_by_the_generated_data_or_a_sample(belka_rows, tmp_path):
    belka_rows.write_parquet(tmp_path / "train.parquet")
    belka_rows.drop("binds").write_csv(tmp_path / "test.csv")
    params = {"inputs": {"train": str(tmp_path / "train.parquet"), "test": str(tmp_path / "test.csv")}}

    generated = upgrade_check.reduced_inputs(params, GENERATED, "generated", 0.2, 0, tmp_path / "s")
    assert (generated.train, generated.test) == (GENERATED["train"], GENERATED["test"])

    sampled = upgrade_check.reduced_inputs(params, GENERATED, "sample", 0.2, 0, tmp_path / "s")
    train, test = pl.read_parquet(sampled.train), pl.read_parquet(sampled.test)
    assert set(train["molecule_smiles"].to_list()) == set(test["molecule_smiles"].to_list())  # one choice
    assert "binds" in train.columns and "binds" not in test.columns
    assert f"{len(train):,} of {len(belka_rows):,} rows" in sampled.description

    with pytest.raises(
        upgrade_check.CheckError, match="UPGRADE_CHECK_DATA: expected 'generated' or 'sample'"
    ):
        upgrade_check.reduced_inputs(params, GENERATED, "full", 0.2, 0, tmp_path / "s")
    with pytest.raises(upgrade_check.CheckError, match="UPGRADE_SAMPLE_FRACTION"):
        upgrade_check.reduced_inputs(params, GENERATED, "sample", 0, 0, tmp_path / "s")


def write_run(directory: Path, metrics: dict, outputs: dict[str, str]) -> None:
    directory.mkdir(parents=True)
    (directory / "evaluate.json").write_text(json.dumps(metrics))
    stages = {
        name: {"outs": [{"path": path, "md5": md5}]} for name, (path, md5) in enumerate(outputs.items())
    }
    (directory / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": stages}))


def test_compare_prints_both_runs_and_what_changed(tmp_path):
    work = tmp_path / "upgrade-check"
    write_run(work / "before", {"score": 0.25, "share": 0.5}, {"models": "a", "data/submission.csv": "b"})
    write_run(work / "after", {"score": 0.2, "share": 0.5}, {"models": "c", "data/submission.csv": "b"})
    (work / "upgrades.diff").write_text("--- a\n+++ b\n-xgboost==3.1.0\n+xgboost==3.2.0\n numpy==2.4.6\n")
    (work / "inputs.json").write_text(
        json.dumps({"train": "t", "test": "u", "description": "the generated data"})
    )

    result = subprocess.run(
        [sys.executable, str(SCRIPT), "compare", "before", "after", "--versions", "upgrade-check/upgrades.diff"],
        cwd=tmp_path, capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "| score | 0.2500 | 0.2000 | -0.0500 |" in result.stdout
    assert "| share | 0.5000 | 0.5000 | 0.0000 |" in result.stdout
    assert "Outputs that changed bytes: `models`" in result.stdout
    assert "-xgboost==3.1.0\n+xgboost==3.2.0" in result.stdout and "numpy" not in result.stdout
    assert "on the generated data" in result.stdout

    write_run(work / "same", {"score": 0.25, "share": 0.5}, {"models": "a", "data/submission.csv": "b"})
    same = upgrade_check.summary(
        upgrade_check.read_run(work / "before"), upgrade_check.read_run(work / "same"), "x", ""
    )
    assert "Every output is byte-identical" in same and "No locked version changed." in same


def test_run_without_inputs_is_one_clear_error(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "run", "before"], cwd=tmp_path, capture_output=True,
                            text=True)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: upgrade-check/inputs.json: not found (run `ci/upgrade_check.py inputs` first)"
    ]
