"""Bad raw input: each case gives a clear error naming the file/column (or a reject with its reason), and leaves
the workspace as it was: no partial output, the previous output untouched."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
import yaml

from stages.featurize import featurize_file
from stages.io import InputError
from stages.params import Params, parse_params
from stages.predict import predict_file
from tests.conftest import ROOT, SMALL_PARAMS, MiniRun, deep_update, project_env

BASE = yaml.safe_load((ROOT / "params.yaml").read_text())


def make_params(**featurize: object) -> Params:
    raw = deep_update(copy.deepcopy(BASE), copy.deepcopy(SMALL_PARAMS))
    raw["resources"]["workers"] = 1
    raw["featurize"].update(featurize)
    return parse_params(raw)


def smiles(i: int) -> str:
    return "C" * (i % 25 + 1) + "O" * (i // 25) + "C(=O)N[Dy]"


def raw_frame(n: int = 100, proteins: tuple[str, ...] = ("BRD4", "HSA", "sEH")) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "id": list(range(n)),
            "buildingblock1_smiles": [f"bb1-{i % 7}" for i in range(n)],
            "buildingblock2_smiles": [f"bb2-{i % 5}" for i in range(n)],
            "buildingblock3_smiles": [f"bb3-{i % 3}" for i in range(n)],
            "molecule_smiles": [smiles(i) for i in range(n)],
            "protein_name": [proteins[i % len(proteins)] for i in range(n)],
            "binds": [int(i % 10 == 0) for i in range(n)],
        },
        schema_overrides={"id": pl.Int64, "binds": pl.Int64},
    )


class Workspace:
    """An input file, an output directory holding a previous good run, and the rejects file beside it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.source = tmp_path / "raw.parquet"
        self.output = tmp_path / "features" / "train"
        self.rejects = tmp_path / "features" / "train-rejects.csv"
        self.cache = tmp_path / "cache"
        raw_frame().write_parquet(self.source)
        featurize_file(self.source, self.output, self.rejects, make_params(), True, self.cache)
        self.before = self.snapshot()

    def snapshot(self) -> dict[str, bytes]:
        root = self.tmp / "features"
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    def run(self, params: Params | None = None, needs_binds: bool = True) -> dict:
        return featurize_file(
            self.source, self.output, self.rejects, params or make_params(), needs_binds, self.cache
        )

    def fails(self, match: str, params: Params | None = None, needs_binds: bool = True) -> str:
        with pytest.raises(InputError, match=match) as info:
            self.run(params, needs_binds)
        self.assert_untouched()
        return str(info.value)

    def assert_untouched(self) -> None:
        assert self.snapshot() == self.before
        leftovers = [
            p.name for p in (self.tmp / "features").iterdir() if ".tmp-" in p.name or ".old-" in p.name
        ]
        assert leftovers == []


@pytest.fixture
def ws(tmp_path: Path) -> Workspace:
    return Workspace(tmp_path)


# ---------------------------------------------------------------------------------------------- file format


def test_missing_column(ws: Workspace) -> None:
    raw_frame().drop("molecule_smiles").write_parquet(ws.source)
    message = ws.fails("missing column 'molecule_smiles'")
    assert str(ws.source) in message and "found id, buildingblock1_smiles" in message


def test_missing_binds_in_train_but_fine_in_test(ws: Workspace) -> None:
    raw_frame().drop("binds").write_parquet(ws.source)
    ws.fails("missing column 'binds'")
    counts = ws.run(needs_binds=False)
    assert counts["rows"] == 100


@pytest.mark.parametrize(
    ("column", "dtype", "expected"),
    [
        ("id", pl.String, "column 'id' must be integer, found large_string"),
        ("molecule_smiles", None, "column 'molecule_smiles' must be string, found int64"),
        ("protein_name", None, "column 'protein_name' must be string, found int64"),
        ("binds", pl.Float64, "column 'binds' must be integer 0/1, found double"),
        ("binds", pl.String, "column 'binds' must be integer 0/1, found "),
    ],
)
def test_column_of_the_wrong_type(
    ws: Workspace, column: str, dtype: pl.DataType | None, expected: str
) -> None:
    frame = raw_frame()
    replacement = pl.col(column).cast(dtype) if dtype is not None else pl.int_range(pl.len()).alias(column)
    frame.with_columns(replacement).write_parquet(ws.source)
    assert str(ws.source) in ws.fails(expected)


def test_extra_unknown_column_warns_and_keeps_going(ws: Workspace, caplog: pytest.LogCaptureFixture) -> None:
    raw_frame().with_columns(pl.lit("x").alias("assay_note")).write_parquet(ws.source)
    with caplog.at_level(logging.WARNING, logger="stages"):
        counts = ws.run()
    assert counts["rows"] == 100 and counts["rejected_rows"] == 0
    assert f"{ws.source}: ignoring unknown column(s) assay_note" in caplog.text
    assert ws.snapshot() == ws.before  # the extra column changes nothing in the output


def test_empty_file_with_schema_and_no_rows(ws: Workspace) -> None:
    raw_frame().head(0).write_parquet(ws.source)
    ws.fails("has no rows")


def test_zero_byte_file(ws: Workspace) -> None:
    ws.source.write_bytes(b"")
    ws.fails("not a readable parquet file")


def test_file_that_is_not_parquet(ws: Workspace) -> None:
    ws.source.write_text("id,molecule_smiles\n1,CC\n")
    ws.fails("not a readable parquet file")


def test_truncated_parquet_file(ws: Workspace) -> None:
    data = ws.source.read_bytes()
    ws.source.write_bytes(data[: len(data) // 2])
    ws.fails("not a readable parquet file")


def test_missing_input(ws: Workspace) -> None:
    ws.source.unlink()
    ws.fails("input not found")


def test_directory_with_one_truncated_part(ws: Workspace) -> None:
    directory = ws.tmp / "raw"
    directory.mkdir()
    raw_frame().write_parquet(directory / "a.parquet")
    data = (directory / "a.parquet").read_bytes()
    (directory / "b.parquet").write_bytes(data[:-20])
    ws.source = directory
    message = ws.fails("not a readable parquet file")
    assert str(directory) in message


# ---------------------------------------------------------------------------------------------- rows


def test_binds_not_0_or_1(ws: Workspace) -> None:
    raw_frame().with_columns(
        pl.when(pl.col("id") == 7).then(2).otherwise(pl.col("binds")).alias("binds")
    ).write_parquet(ws.source)
    message = ws.fails(r"column 'binds' must be 0 or 1, found 2 for id\(s\) 7")
    assert str(ws.source) in message


def test_binds_null_in_train(ws: Workspace) -> None:
    raw_frame().with_columns(
        pl.when(pl.col("id") == 3).then(None).otherwise(pl.col("binds")).alias("binds")
    ).write_parquet(ws.source)
    ws.fails(r"column 'binds' must be 0 or 1, found None for id\(s\) 3")


def test_duplicate_ids(ws: Workspace) -> None:
    frame = raw_frame()
    pl.concat([frame.head(50), frame.slice(49, 51)]).write_parquet(ws.source)  # id 49 twice, still sorted
    ws.fails(r"duplicate id\(s\) 49")


def test_duplicate_ids_unsorted(ws: Workspace) -> None:
    frame = raw_frame()
    pl.concat([frame.slice(50, 50), frame.slice(0, 51)]).write_parquet(ws.source)  # 50 twice, out of order
    ws.fails(r"duplicate id\(s\) 50")


def test_empty_protein_name(ws: Workspace) -> None:
    raw_frame().with_columns(
        pl.when(pl.col("id") == 5).then(pl.lit("")).otherwise(pl.col("protein_name")).alias("protein_name")
    ).write_parquet(ws.source)
    ws.fails(r"column 'protein_name' is empty for id\(s\) 5")


# ---------------------------------------------------------------------------------------------- rejects

BAD_SMILES = {
    1: ("C1CCC(=O)N[Dy]", "RDKit could not parse the SMILES"),  # unclosed ring
    2: ("CCC(=O)N", "no [Dy] DNA-linker marker"),
    3: ("[Dy]CC(=O)N[Dy]", "[Dy] DNA-linker marker appears 2 times (expected once)"),
    4: ("", "empty SMILES"),
    5: ("C" * 500 + "C(=O)N[Dy]", "SMILES longer than 400 characters (510)"),
    6: ("CC(=O)N[Dy]\x00C", "RDKit could not parse the SMILES"),
}


def with_bad_smiles(n: int = 100) -> pl.DataFrame:
    frame = raw_frame(n)
    values = frame["molecule_smiles"].to_list()
    for i, (value, _) in BAD_SMILES.items():
        values[i] = value
    return frame.with_columns(pl.Series("molecule_smiles", values))


def assert_rejects(path: Path) -> None:
    rejects = pl.read_csv(path, schema_overrides={"id": pl.Int64})
    assert rejects.columns == ["id", "protein_name", "molecule_smiles", "reason"]
    assert rejects["id"].to_list() == sorted(BAD_SMILES)
    for row in rejects.iter_rows(named=True):
        value, reason = BAD_SMILES[row["id"]]
        assert row["reason"].startswith(reason), row
        assert (row["molecule_smiles"] or "") == value  # an empty CSV field reads back as null
        assert row["protein_name"] == ("BRD4", "HSA", "sEH")[row["id"] % 3]


def test_bad_smiles_go_to_rejects_below_the_threshold(ws: Workspace) -> None:
    with_bad_smiles().write_parquet(ws.source)
    counts = ws.run(make_params(max_reject_fraction=0.06))  # exactly 6 of 100: allowed
    assert counts["rejected_rows"] == 6
    assert_rejects(ws.rejects)
    manifest = yaml.safe_load((ws.output / "manifest.json").read_text())
    assert manifest["rows"] == 94 and manifest["rejected_rows"] == 6
    ids = pl.read_parquet(ws.output / "rows")["id"].to_list()
    assert set(ids) == set(range(100)) - set(BAD_SMILES)


def test_bad_smiles_above_the_threshold_fail(ws: Workspace) -> None:
    with_bad_smiles().write_parquet(ws.source)
    with pytest.raises(InputError) as info:
        ws.run(make_params(max_reject_fraction=0.05))  # 6 of 100 > 5%
    message = str(info.value)
    assert "6 of 100 rows rejected (6.00%), more than featurize.max_reject_fraction=0.05" in message
    assert str(ws.rejects) in message and "most common" in message
    assert_rejects(ws.rejects)  # the rejects are there to look at
    after = ws.snapshot()
    del after["train-rejects.csv"]
    assert after == {k: v for k, v in ws.before.items() if k != "train-rejects.csv"}  # features untouched
    assert not list((ws.tmp / "features").glob(".*tmp-*"))


def test_threshold_through_the_command_line(tmp_path: Path) -> None:
    source = tmp_path / "raw.csv"
    with_bad_smiles().write_csv(source)
    params = tmp_path / "params.yaml"
    raw = deep_update(copy.deepcopy(BASE), copy.deepcopy(SMALL_PARAMS))
    raw["featurize"]["max_reject_fraction"] = 0.01
    params.write_text(yaml.safe_dump(raw))
    output = tmp_path / "out"
    cmd = [sys.executable, "-m", "stages.featurize", "--input", str(source), "--output", str(output)]
    cmd += ["--params", str(params), "--cache", str(tmp_path / "cache")]
    result = subprocess.run(cmd, cwd=ROOT, env=project_env(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error_lines) == 1 and "more than featurize.max_reject_fraction=0.01" in error_lines[0]
    assert "Traceback" not in result.stderr
    assert not output.exists()
    assert (tmp_path / "out-rejects.csv").exists()


# ---------------------------------------------------------------------------------------------- predict


def test_unknown_protein_in_test_data(mini_run: MiniRun, tmp_path: Path) -> None:
    model_dir = mini_run.models
    params = mini_run.params
    source = tmp_path / "test.parquet"
    raw_frame(30, proteins=("BRD4", "EGFR", "sEH")).drop("binds").write_parquet(source)
    features, rejects = tmp_path / "test", tmp_path / "test-rejects.csv"
    featurize_file(source, features, rejects, params, False, tmp_path / "cache")
    with pytest.raises(InputError) as info:
        predict_file(features, rejects, model_dir, 1000)
    message = str(info.value)
    assert "unknown protein_name value(s) 'EGFR'" in message
    assert "the model knows BRD4, HSA, sEH" in message


def test_unknown_protein_in_rejected_test_rows(mini_run: MiniRun, tmp_path: Path) -> None:
    model_dir = mini_run.models
    params = mini_run.params.model_copy(
        update={"featurize": mini_run.params.featurize.model_copy(update={"max_reject_fraction": 0.5})}
    )
    frame = raw_frame(30).drop("binds")
    frame = frame.with_columns(
        pl.when(pl.col("id") == 4)
        .then(pl.lit("KRAS"))
        .otherwise(pl.col("protein_name"))
        .alias("protein_name"),
        pl.when(pl.col("id") == 4)
        .then(pl.lit("CC"))
        .otherwise(pl.col("molecule_smiles"))
        .alias("molecule_smiles"),
    )
    source = tmp_path / "test.parquet"
    frame.write_parquet(source)
    features, rejects = tmp_path / "test", tmp_path / "test-rejects.csv"
    featurize_file(source, features, rejects, params, False, tmp_path / "cache")
    with pytest.raises(
        InputError, match=r"unknown protein_name value\(s\) 'KRAS'; the model knows BRD4, HSA, sEH"
    ):
        predict_file(features, rejects, model_dir, 1000)
