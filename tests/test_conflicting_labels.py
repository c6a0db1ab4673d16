"""Replicates with different labels: one molecule (after cleaning) and protein labelled both 0 and 1 follows
``featurize.conflicting_labels`` (error, any, drop), with the same result whatever the row order, the batch size or
the file the rows come in, and an append that re-measures a molecule featurized before. Expected labels worked out
by hand from the fixture below."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import polars as pl
import pytest
import yaml

from stages.errors import InputError
from stages.featurize import featurize_file
from tests.conftest import Repo, make_repo
from tests.test_bad_input import SHUFFLED_IDS, make_params, raw_frame

# raw_frame(3000): id i is a molecule of its own, protein (BRD4, HSA, sEH)[i % 3], binds 1 when i % 10 == 0.
# Measured again under new ids (an appended screen):
REMEASURED = [
    (5000, 10, 0, None),  # id 10 (HSA, 1) measured 0: a conflict, 1 row each way
    (5001, 11, 1, None),  # id 11 (sEH, 0) measured 1 ...
    (5002, 11, 0, None),  # ... and 0 again: a conflict, 2 negative rows and 1 positive
    (5003, 20, 1, None),  # id 20 (sEH, 1) measured 1 again: two measurements that agree, both kept
    (5004, 10, 0, "BRD4"),  # id 10's molecule for another protein: no conflict
    (
        5005,
        40,
        0,
        "[NH][Dy]",
    ),  # id 40 (HSA, 1) written as RDKit writes the linker: the same molecule, measured 0
]
CONFLICTING_IDS = {10, 5000, 11, 5001, 5002, 40, 5005}
BASE = {i: int(i % 10 == 0) for i in range(3000)} | {5003: 1, 5004: 0}
EXPECTED_BINDS = {
    "any": BASE | dict.fromkeys(CONFLICTING_IDS, 1),
    "drop": {i: b for i, b in BASE.items() if i not in CONFLICTING_IDS},
}
EXPECTED_COUNTS = {
    "any": {"conflict_pairs": 3, "conflict_rows": 7, "relabelled_rows": 4, "dropped_rows": 0},  # 5000, 11, 5002, 5005
    "drop": {"conflict_pairs": 3, "conflict_rows": 7, "relabelled_rows": 0, "dropped_rows": 7},
}  # fmt: skip


def appended() -> pl.DataFrame:
    """The rows of REMEASURED, as an appended file."""
    base = raw_frame(3000)
    rows = []
    for new_id, old_id, binds, change in REMEASURED:
        row = base.filter(pl.col("id") == old_id).with_columns(
            pl.lit(new_id, pl.Int64).alias("id"), pl.lit(binds, pl.Int64).alias("binds")
        )
        if change == "[NH][Dy]":
            row = row.with_columns(pl.col("molecule_smiles").str.replace("N[Dy]", "[NH][Dy]", literal=True))
        elif change:
            row = row.with_columns(pl.lit(change).alias("protein_name"))
        rows.append(row)
    return pl.concat(rows)


def write_input(tmp_path: Path, layout: str) -> Path:
    """The base rows and the re-measured ones: in one file in order, in one file shuffled, or as a directory of
    two files (the base, then the append)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    base, extra = raw_frame(3000), appended()
    if layout == "directory":
        directory = tmp_path / "raw"
        directory.mkdir()
        base.write_parquet(directory / "a.parquet")
        extra.write_parquet(directory / "b.parquet")
        return directory
    frame = pl.concat([base, extra])
    if layout == "shuffled":  # the re-measured rows spread among the others
        frame = pl.concat([base[SHUFFLED_IDS[:1500]], extra, base[SHUFFLED_IDS[1500:]]])
    path = tmp_path / "raw.parquet"
    frame.write_parquet(path)
    return path


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature cache holding the molecules of ``raw_frame(3000)`` (outputs never depend on what it holds)."""
    tmp = tmp_path_factory.mktemp("warm")
    raw_frame(3000).write_parquet(tmp / "raw.parquet")
    featurize_file(tmp / "raw.parquet", tmp / "out", tmp / "rejects.csv", make_params(), True, tmp / "cache")
    return tmp / "cache"


def featurized(tmp_path: Path, source: Path, policy: str, batch_rows: int, cache: Path) -> tuple[dict, dict]:
    """(counts, the output's rows by id: binds, and the set of molecule keys written)."""
    out = tmp_path / f"out-{policy}-{batch_rows}"
    params = make_params(conflicting_labels=policy, batch_rows=batch_rows)
    counts = featurize_file(source, out, tmp_path / "rejects.csv", params, True, cache)
    rows = pl.read_parquet(out / "rows")
    manifest = json.loads((out / "manifest.json").read_text())
    result = {
        "binds": dict(zip(rows["id"].to_list(), rows["binds"].to_list(), strict=True)),
        "molecules": sorted(pl.read_parquet(out / "molecules")["molecule_key"].to_list()),
        "row_keys": sorted(set(rows["molecule_key"].to_list())),
        "manifest": manifest["conflicting_labels"] | {"rows": manifest["rows"]},
    }
    return counts, result


@pytest.mark.parametrize("policy", ["any", "drop"])
def test_each_policy_gives_one_result_whatever_the_order_batches_or_files(
    tmp_path: Path, warm_cache: Path, policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="stages.featurize")
    results = []
    for layout in ("in order", "shuffled", "directory"):
        work = tmp_path / layout.replace(" ", "-")
        source = write_input(work, layout)
        for batch_rows in (1000, 100_000):
            counts, result = featurized(work, source, policy, batch_rows, warm_cache)
            assert result["binds"] == EXPECTED_BINDS[policy], (layout, batch_rows)
            assert {key: counts[key] for key in EXPECTED_COUNTS[policy]} == EXPECTED_COUNTS[policy]
            assert result["manifest"] == {
                "policy": policy,
                **EXPECTED_COUNTS[policy],
                "rows": len(EXPECTED_BINDS[policy]),
            }
            results.append(result)
    assert all(r == results[0] for r in results)
    molecules = results[0]["molecules"]
    assert results[0]["row_keys"] == molecules  # every molecule written has rows, every row its molecule
    # drop leaves out molecules 11 and 40, whose only rows were the pair's; 10 stays (its BRD4 row, id 5004)
    assert len(molecules) == (3000 if policy == "any" else 2998)
    done = "every row of them labelled 1 (4 rows relabelled)" if policy == "any" else "their 7 rows left out"
    message = f"3 molecule-protein pairs labelled both 0 and 1 (7 rows): featurize.conflicting_labels={policy}, {done}"
    assert caplog.text.count(message) == 6


def test_error_refuses_before_any_rdkit_work_whatever_the_order_batches_or_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The first conflicting 0 by id is id 11 (sEH), whose pair's 1 is id 5001; the same line for every layout.
    No molecule reaches RDKit (a fresh feature cache stays empty, no featurize progress) and nothing is written."""
    caplog.set_level(logging.DEBUG)
    for layout in ("in order", "shuffled", "directory"):
        work = tmp_path / layout.replace(" ", "-")
        source = write_input(work, layout)
        for batch_rows in (1000, 100_000):
            with pytest.raises(InputError) as info:
                featurized(work, source, "error", batch_rows, work / "fresh-cache")
            assert str(info.value) == (
                f"{source}: column 'binds' must give one label to a molecule and protein, found 0 at id 11 and 1 at "
                "id 5001 for the same molecule with sEH (3 molecule-protein pair(s) labelled both ways; reconcile "
                "the rows, or set featurize.conflicting_labels to any (every row of such a pair binds) or drop "
                "(its rows are left out))"
            )
            assert not (work / "fresh-cache").exists() or not list((work / "fresh-cache").rglob("*.parquet"))
            assert not list(work.glob("out-*")) and not (work / "rejects.csv").exists()
    assert "unique molecules" not in caplog.text  # the stage's summary: never reached


def test_an_append_that_remeasures_featurized_molecules(tmp_path: Path) -> None:
    """Scenario A: the base screen is featurized, then a screen that re-measures some of its molecules is appended
    (a directory of the two files). Under any, the re-measured molecules come from the feature cache, and the
    output equals a run from nothing on the same rows."""
    directory = write_input(tmp_path, "directory")
    cache = tmp_path / "cache"
    featurize_file(
        directory / "a.parquet", tmp_path / "before", tmp_path / "before.csv", make_params(), True, cache
    )
    before = pl.read_parquet(tmp_path / "before" / "rows")
    assert dict(zip(before["id"], before["binds"], strict=True)) == {i: int(i % 10 == 0) for i in range(3000)}
    counts, warm = featurized(tmp_path, directory, "any", 1000, cache)
    assert (counts["reused"], counts["computed"]) == (3000, 0)  # id 40's [NH][Dy] form is the same molecule
    (tmp_path / "cold").mkdir()
    _, cold = featurized(tmp_path / "cold", directory, "any", 1000, tmp_path / "cold-cache")
    assert warm == cold
    assert warm["binds"] == EXPECTED_BINDS["any"]


# ---------------------------------------------------------------------------------------------- through dvc


def set_input(repo: Repo, frame: pl.DataFrame) -> None:
    """inputs.train: a directory of the generated training rows and an appended screen (``frame``)."""
    directory = repo.path / "data" / "screens"
    directory.mkdir(parents=True, exist_ok=True)
    frame.write_parquet(directory / "b-append.parquet")
    repo.set_params({"inputs": {"train": "data/screens"}})


@pytest.mark.slow
def test_policies_through_dvc_repro(tmp_path: Path) -> None:
    """An appended screen re-measures generated molecules with the other label. error: `dvc repro` fails with
    the one line before any RDKit work (the project's feature cache stays empty); any and drop: featurize@train
    runs, with the relabelled or dropped rows counted in its manifest; changing the policy reruns featurize@train."""
    repo = make_repo(tmp_path / "repo", {"featurize": {"conflicting_labels": "error"}})
    repo.repro("generate")
    train = pl.read_parquet(repo.path / "data" / "generated" / "train.parquet")
    (repo.path / "data" / "screens").mkdir(parents=True)
    shutil.copy(
        repo.path / "data" / "generated" / "train.parquet", repo.path / "data" / "screens" / "a-base.parquet"
    )
    # two positives and one negative measured again with the other label, under new ids
    positives = train.filter(pl.col("binds") == 1).head(2)
    negative = train.filter(pl.col("binds") == 0).head(1)
    again = pl.concat([positives, negative]).with_columns(
        (pl.col("id") + 10_000_000).alias("id"),
        (1 - pl.col("binds")).cast(train["binds"].dtype).alias("binds"),
    )
    set_input(repo, again)
    failed = repo.dvc("repro", "featurize@train", check=False)
    assert failed.returncode != 0
    errors = [line for line in (failed.stdout + failed.stderr).splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "must give one label to a molecule and protein" in errors[0], errors
    assert "3 molecule-protein pair(s) labelled both ways" in errors[0]
    assert not list((repo.path / ".cache" / "features").rglob("*.parquet"))
    assert not (repo.path / "data" / "features" / "train").exists()

    expected_rows = {"any": len(train) + 3, "drop": len(train) - 3}
    for policy in ("any", "drop"):
        repo.set_params({"featurize": {"conflicting_labels": policy}})
        assert repo.repro("featurize@train") == ["featurize@train"]
        manifest = json.loads((repo.path / "data" / "features" / "train" / "manifest.json").read_text())
        assert manifest["rows"] == expected_rows[policy]
        assert manifest["conflicting_labels"]["conflict_pairs"] == 3
        assert manifest["conflicting_labels"]["conflict_rows"] == 6
        rows = pl.read_parquet(repo.path / "data" / "features" / "train" / "rows")
        remeasured = set(again["id"].to_list()) | {i - 10_000_000 for i in again["id"].to_list()}
        if policy == "any":
            assert rows.filter(pl.col("id").is_in(remeasured))["binds"].to_list() == [1] * 6
        else:
            assert not rows.filter(pl.col("id").is_in(remeasured)).height
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    assert (
        lock["stages"]["featurize@train"]["params"]["params.yaml"]["featurize.conflicting_labels"] == "drop"
    )
