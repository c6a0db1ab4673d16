"""Rejected rows through `dvc repro`: a test file past featurize.max_reject_fraction still gives a submission with
every test id (the rejected rows scored by predict's fallback); a training file past it fails before writing
anything, and the previous outputs come back with `dvc checkout`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import polars as pl
import pytest

from tests.conftest import make_repo, ran_stages, tree_hashes

pytestmark = pytest.mark.slow


def without_linker(frame: pl.DataFrame, every: int) -> tuple[pl.DataFrame, list[int]]:
    """Every ``every``-th row's SMILES without its [Dy] marker (a reject: 'no [Dy] DNA-linker marker'), and
    those rows' ids."""
    broken = pl.int_range(pl.len()) % every == 0
    frame = frame.with_columns(
        pl.when(broken)
        .then(pl.col("molecule_smiles").str.replace("[Dy]", "", literal=True))
        .otherwise(pl.col("molecule_smiles"))
    )
    return frame, frame.filter(broken)["id"].to_list()


def test_test_rejects_past_the_threshold_still_give_every_id_and_train_rejects_fail_writing_nothing(
    tmp_path: Path,
) -> None:
    repo = make_repo(
        tmp_path / "repo", {"inputs": {"train": "data/raw/train.parquet", "test": "data/raw/test.parquet"}}
    )
    repo.repro("generate")
    raw = repo.path / "data" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(repo.path / "data" / "generated" / "train.parquet", raw / "train.parquet")
    test = pl.read_parquet(repo.path / "data" / "generated" / "test.parquet")
    test, rejected_ids = without_linker(test, 50)  # 2% of the rows, 20 times featurize.max_reject_fraction
    test.write_parquet(raw / "test.parquet")

    result = repo.dvc("repro")
    assert {"featurize@test", "predict"} <= set(ran_stages(result.stdout))
    log = result.stdout + result.stderr
    share = f"{len(rejected_ids)} of {len(test)} rows rejected ({len(rejected_ids) / len(test):.2%})"
    assert (
        f"{share}, more than featurize.max_reject_fraction=0.001: unlabelled rows are featurized anyway"
        in log
    )
    assert f"{len(rejected_ids)} rejected rows get their protein's base rate" in log  # predict's count
    submission = pl.read_csv(repo.path / "data" / "submission.csv")
    assert submission["id"].to_list() == sorted(test["id"].to_list())
    base_rate = json.loads((repo.path / "models" / "final" / "manifest.json").read_text())["base_rate"]
    fallback = submission.join(test.select("id", "protein_name"), on="id").filter(
        pl.col("id").is_in(rejected_ids)
    )
    assert len(fallback) == len(rejected_ids) > 0
    assert all(row["binds"] == base_rate[row["protein_name"]] for row in fallback.iter_rows(named=True))
    repo.commit("a submission with rejected test rows")
    good_lock, good_features = repo.read("dvc.lock"), tree_hashes(repo.path / "data" / "features")

    train = pl.read_parquet(raw / "train.parquet")
    without_linker(train, 100)[0].write_parquet(raw / "train.parquet")  # 1% of the rows: past the threshold
    failed = repo.dvc("repro", "featurize@train", check=False)
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "more than featurize.max_reject_fraction=0.001" in errors[0], failed.stderr
    assert "nothing was written" in errors[0]
    # DVC removes a stage's outputs before running it; the failed run put nothing in their place (before, it wrote
    # its rejects CSV), dvc.lock is as it was, and dvc checkout restores the previous outputs byte for byte
    features = repo.path / "data" / "features"
    assert not (features / "train-rejects.csv").exists() and not (features / "train").exists()
    assert not [p.name for p in features.iterdir() if ".tmp-" in p.name]
    assert repo.read("dvc.lock") == good_lock
    repo.dvc("checkout", "data/features/train", "data/features/train-rejects.csv")
    assert tree_hashes(features) == good_features
