"""Bad input: each case gives one clear error naming the file, the column (or key), what was expected, the first
offending id or row and how many (or a reject with its reason, or a documented acceptance), and leaves the workspace
as it was: no partial output, the previous output untouched. File-level problems are found before any work: no
molecule reaches RDKit, so the feature cache stays empty."""

from __future__ import annotations

import copy
import gzip
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import cli
from stages.atomic import atomic_file
from stages.errors import ArtifactError, InputError
from stages.featurize import featurize_file
from stages.model import load_model
from stages.molecules import MoleculeStore
from stages.params import Params, parse_params
from stages.scoring import predict_file
from tests.conftest import ROOT, SMALL_PARAMS, MiniRun, deep_update, project_env, tree_hashes
from tests.test_artifacts import edit_json
from tests.test_serving import predict_main

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

    def run(self, params: Params | None = None, needs_binds: bool = True, cache: Path | None = None) -> dict:
        return featurize_file(
            self.source, self.output, self.rejects, params or make_params(), needs_binds, cache or self.cache
        )

    def fails(
        self, match: str, params: Params | None = None, needs_binds: bool = True, before_work: bool = True
    ) -> str:
        """The run fails with ``match``; with ``before_work``, before any molecule reached RDKit: a fresh feature
        cache gets no part."""
        fresh = self.tmp / "fresh-cache"
        shutil.rmtree(fresh, ignore_errors=True)
        with pytest.raises(InputError, match=match) as info:
            self.run(params, needs_binds, fresh)
        self.assert_untouched()
        computed = list(fresh.rglob("part-*.parquet"))
        assert (computed == []) if before_work else computed
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
    message = ws.fails(r"column 'binds' must be 0 or 1 on every row, found 2 at id 7 \(1 row in all\)")
    assert message.startswith(f"{ws.source}: ")


def test_binds_null_in_train(ws: Workspace) -> None:
    raw_frame().with_columns(
        pl.when(pl.col("id") == 3).then(None).otherwise(pl.col("binds")).alias("binds")
    ).write_parquet(ws.source)
    ws.fails(r"column 'binds' must be 0 or 1 on every row, found an empty value at id 3 \(1 row in all\)")


def test_duplicate_ids(ws: Workspace) -> None:
    frame = raw_frame()
    pl.concat([frame.head(50), frame.slice(49, 51)]).write_parquet(ws.source)  # id 49 twice, still sorted
    ws.fails(r"column 'id' must be unique, found 1 id\(s\) on more than one row \(first: 49\)")


def test_duplicate_ids_unsorted(ws: Workspace) -> None:
    frame = raw_frame()
    pl.concat([frame.slice(50, 50), frame.slice(0, 51)]).write_parquet(ws.source)  # 50 twice, out of order
    ws.fails(r"column 'id' must be unique, found 1 id\(s\) on more than one row \(first: 50\)")


def test_empty_protein_name(ws: Workspace) -> None:
    raw_frame().with_columns(
        pl.when(pl.col("id") == 5).then(pl.lit("")).otherwise(pl.col("protein_name")).alias("protein_name")
    ).write_parquet(ws.source)
    ws.fails(
        r"column 'protein_name' must be a protein name without surrounding spaces on every row, found '' at id 5"
    )


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


def test_bad_smiles_above_the_threshold_fail_and_write_nothing(ws: Workspace) -> None:
    with_bad_smiles().write_parquet(ws.source)
    message = ws.fails(
        "rows rejected", make_params(max_reject_fraction=0.05), before_work=False
    )  # 6 of 100 > 5%
    assert message == (
        f"{ws.source}: 6 of 100 rows rejected (6.00%), more than featurize.max_reject_fraction=0.05 (most common: "
        "RDKit could not parse the SMILES (2); SMILES longer than 400 characters (510) (1); [Dy] DNA-linker marker "
        "appears 2 times (expected once) (1); first ids: 1, 2, 3, 4, 5); nothing was written: fix those rows, or "
        f"raise the threshold to featurize the others (the rejected ones are then listed in {ws.rejects})"
    )  # and the previous output and rejects CSV are as they were (ws.fails)


def test_bad_smiles_above_the_threshold_in_unlabelled_data_warn(
    ws: Workspace, caplog: pytest.LogCaptureFixture
) -> None:
    """Test data: a submission needs every id, so the rows past the threshold are featurized anyway and listed in the
    rejects CSV for predict's fallback, with one warning."""
    with_bad_smiles().write_parquet(ws.source)
    counts = ws.run(make_params(max_reject_fraction=0.05), needs_binds=False)
    assert counts["rejected_rows"] == 6
    assert_rejects(ws.rejects)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        f"{ws.source}: 6 of 100 rows rejected (6.00%), more than featurize.max_reject_fraction=0.05: unlabelled "
        "rows are featurized anyway (predict scores the rejected ones with their protein's base rate; they are "
        f"listed in {ws.rejects})"
    ]
    assert set(pl.read_parquet(ws.output / "rows")["id"].to_list()) == set(range(100)) - set(BAD_SMILES)


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
    assert not (tmp_path / "out-rejects.csv").exists()


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


# ---------------------------------------------------------------------------------------------- nulls and types


def with_nulls(frame: pl.DataFrame, column: str, ids: list[int]) -> pl.DataFrame:
    return frame.with_columns(
        pl.when(pl.col("id").is_in(ids)).then(None).otherwise(pl.col(column)).alias(column)
    )


@pytest.mark.parametrize(
    ("column", "expected", "where"),
    [
        ("id", "a 64-bit integer", "row 1501"),  # the id itself is missing: the row is named
        ("buildingblock1_smiles", "a building block's SMILES", "id 1500"),
        ("buildingblock2_smiles", "a building block's SMILES", "id 1500"),
        ("buildingblock3_smiles", "a building block's SMILES", "id 1500"),
        ("protein_name", "a protein name without surrounding spaces", "id 1500"),
        ("binds", "0 or 1", "id 1500"),
    ],
)
def test_nulls_in_a_column_are_one_error_before_any_work(
    ws: Workspace, column: str, expected: str, where: str
) -> None:
    """Two nulls, in the second and third 1,000-row batches: the count covers the whole file, and the error comes
    before the first batch is featurized."""
    with_nulls(raw_frame(3000), column, [1500, 2001]).write_parquet(ws.source)
    message = ws.fails(f"column '{column}' must be {expected} on every row, found an empty value at {where}")
    assert message == (
        f"{ws.source}: column '{column}' must be {expected} on every row, found an empty value at {where} "
        "(2 rows in all)"
    )


def test_nulls_in_a_file_written_without_statistics(ws: Workspace) -> None:
    """Without footer statistics the column is read to count its nulls."""
    table = with_nulls(raw_frame(3000), "buildingblock3_smiles", [9]).to_arrow()
    pq.write_table(table, ws.source, write_statistics=False)
    assert pq.ParquetFile(ws.source).metadata.row_group(0).column(3).statistics is None
    ws.fails(
        r"column 'buildingblock3_smiles' must be a building block's SMILES on every row, found an empty value at id 9"
    )


def test_null_smiles_is_a_rejected_row_not_an_error(ws: Workspace) -> None:
    with_nulls(raw_frame(), "molecule_smiles", [4]).write_parquet(ws.source)
    counts = ws.run(make_params(max_reject_fraction=0.5))
    rejects = pl.read_csv(ws.rejects)
    assert counts["rejected_rows"] == 1 and rejects.row(0) == (4, "HSA", None, "empty SMILES")


def test_null_binds_in_test_data_are_not_read(ws: Workspace) -> None:
    with_nulls(raw_frame(), "binds", [4]).write_parquet(ws.source)
    assert ws.run(needs_binds=False)["rows"] == 100


def test_a_null_in_the_second_file_of_a_directory_names_that_file(ws: Workspace) -> None:
    frame = raw_frame(3000)
    directory = two_files(
        ws, frame.head(1500), with_nulls(frame.slice(1500), "buildingblock2_smiles", [2222])
    )
    ws.source = directory
    message = ws.fails("column 'buildingblock2_smiles' must be a building block's SMILES on every row")
    assert message.startswith(f"{directory / 'b.parquet'}: ") and "at id 2222 (1 row in all)" in message


def test_protein_name_with_surrounding_spaces(ws: Workspace) -> None:
    raw_frame().with_columns(
        pl.when(pl.col("id") == 12)
        .then(pl.lit("BRD4 "))
        .otherwise(pl.col("protein_name"))
        .alias("protein_name")
    ).write_parquet(ws.source)
    ws.fails(
        r"column 'protein_name' must be a protein name without surrounding spaces on every row, found 'BRD4 ' at id 12"
    )


def test_unsigned_id_past_the_int64_range(ws: Workspace) -> None:
    raw_frame().with_columns((pl.col("id").cast(pl.UInt64) + (1 << 63)).alias("id")).write_parquet(ws.source)
    ws.fails(
        r"column 'id' must be a 64-bit integer on every row, found 9223372036854775808 at row 1 \(100 rows"
    )


def test_dictionary_encoded_strings_are_read_like_plain_ones(ws: Workspace) -> None:
    """pandas writes its category columns as dictionaries: same rows and molecules as plain strings."""
    table = raw_frame().to_arrow()
    for name in ("buildingblock1_smiles", "protein_name"):
        table = table.set_column(table.schema.get_field_index(name), name, table[name].dictionary_encode())
    pq.write_table(table, ws.source)
    assert pa.types.is_dictionary(pq.read_schema(ws.source).field("protein_name").type)
    ws.run()
    assert ws.snapshot() == ws.before


def test_parts_of_a_directory_with_other_but_compatible_types(ws: Workspace) -> None:
    """int32 ids and string (not large_string) columns in one part, polars' types in the other: read as one."""
    directory = ws.tmp / "raw"
    directory.mkdir()
    frame = raw_frame()
    first = frame.head(40).to_arrow()
    narrow = pa.schema(
        [pa.field(f.name, pa.int32() if f.name == "id" else pa.string() if f.type == pa.large_string() else f.type)
         for f in first.schema]
    )  # fmt: skip
    pq.write_table(first.cast(narrow), directory / "a.parquet")
    frame.slice(40).write_parquet(directory / "b.parquet")
    ws.source = directory
    ws.run()
    assert pl.read_parquet(ws.output / "rows")["id"].to_list() == list(range(100))


# ---------------------------------------------------------------------------------------------- csv


def csv_with(row: int, column: str, value: str | None) -> str:
    frame = raw_frame(50).with_columns(pl.col("id", "binds").cast(pl.String))
    changed = pl.when(pl.col("id") == str(row)).then(pl.lit(value)).otherwise(pl.col(column)).alias(column)
    return frame.with_columns(changed).write_csv()


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("buildingblock2_smiles", None, "'buildingblock2_smiles' must be a building block's SMILES on every row, found an empty value at id 7"),
        ("protein_name", None, "'protein_name' must be a protein name without surrounding spaces on every row, found an empty value at id 7"),
        ("id", None, "'id' must be a 64-bit integer on every row, found an empty value at row 8"),
        ("id", "abc", "'id' must be a 64-bit integer on every row, found 'abc' at row 8"),
        ("binds", "yes", "'binds' must be 0 or 1 on every row, found 'yes' at id 7"),
        ("binds", "1.0", "'binds' must be 0 or 1 on every row, found '1.0' at id 7"),
    ],
)  # fmt: skip
def test_csv_fields_are_checked_with_their_row(
    ws: Workspace, column: str, value: str | None, expected: str
) -> None:
    """A CSV is read as text: an empty field is a null, a value that is not an integer is named with its row."""
    ws.source = ws.tmp / "raw.csv"
    ws.source.write_text(csv_with(7, column, value))
    assert ws.fails(expected) == f"{ws.source}: column {expected} (1 row in all)"


def test_csv_with_a_header_only(ws: Workspace) -> None:
    ws.source = ws.tmp / "raw.csv"
    ws.source.write_text(raw_frame().head(0).write_csv())
    ws.fails("has no rows")


def test_gzipped_csv_is_read_like_the_csv(ws: Workspace) -> None:
    plain = ws.tmp / "raw.csv"
    raw_frame().write_csv(plain)
    ws.source = plain
    ws.run()
    expected = tree_hashes(ws.output)
    ws.source = ws.tmp / "raw.csv.gz"
    ws.source.write_bytes(gzip.compress(plain.read_bytes()))
    ws.run()
    hashes = tree_hashes(ws.output)
    assert {k: v for k, v in hashes.items() if k != "manifest.json"} == {
        k: v for k, v in expected.items() if k != "manifest.json"
    }  # the manifest names the source


# ---------------------------------------------------------------------------------------------- ids across files


# the ids of raw_frame(3000), permuted (7919 is prime to 3000)
SHUFFLED_IDS = [(i * 7919) % 3000 for i in range(3000)]


def two_files(ws: Workspace, first: pl.DataFrame, second: pl.DataFrame) -> Path:
    directory = ws.tmp / "raw"
    directory.mkdir(exist_ok=True)
    first.write_parquet(directory / "a.parquet")
    second.write_parquet(directory / "b.parquet")
    return directory


@pytest.fixture(scope="module")
def warm_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A feature cache holding the molecules of ``raw_frame(3000)``, so that tests of reading do not pay for RDKit
    (an output never depends on what the cache holds). Tests must not modify it."""
    tmp = tmp_path_factory.mktemp("warm")
    raw_frame(3000).write_parquet(tmp / "raw.parquet")
    featurize_file(tmp / "raw.parquet", tmp / "out", tmp / "rejects.csv", make_params(), True, tmp / "cache")
    return tmp / "cache"


@pytest.mark.parametrize("batch_rows", [1000, 100_000])
def test_unique_ids_not_increasing_across_files_are_accepted_at_every_batch_size(
    ws: Workspace, warm_cache: Path, batch_rows: int
) -> None:
    frame = raw_frame(3000)
    ws.source = two_files(ws, frame.filter(pl.col("id") >= 1500), frame.filter(pl.col("id") < 1500))
    counts = ws.run(make_params(batch_rows=batch_rows), cache=warm_cache)
    ids = pl.read_parquet(ws.output / "rows")["id"].to_list()
    assert counts["rows"] == 3000 and ids == [*range(1500, 3000), *range(1500)]  # in file order


@pytest.mark.parametrize("batch_rows", [1000, 100_000])
def test_shuffled_ids_are_accepted_at_every_batch_size(
    ws: Workspace, warm_cache: Path, batch_rows: int
) -> None:
    raw_frame(3000)[SHUFFLED_IDS].write_parquet(ws.source)
    ws.run(make_params(batch_rows=batch_rows), cache=warm_cache)
    assert pl.read_parquet(ws.output / "rows")["id"].to_list() == SHUFFLED_IDS


@pytest.mark.parametrize("batch_rows", [1000, 100_000])
def test_a_duplicate_id_across_files_is_caught_at_every_batch_size(ws: Workspace, batch_rows: int) -> None:
    frame = raw_frame(3000)
    ws.source = two_files(ws, frame.head(2000), frame.slice(1999))  # id 1999 ends a and starts b
    message = ws.fails("must be unique across its 2 files", make_params(batch_rows=batch_rows))
    assert message == (
        f"{ws.source}: column 'id' must be unique across its 2 files, found 1 id(s) on more than one row "
        "(first: 1999)"
    )


def test_duplicate_ids_among_shuffled_ids(ws: Workspace) -> None:
    frame = raw_frame(3000)
    pl.concat([frame[SHUFFLED_IDS], frame.filter(pl.col("id").is_in([17, 2500]))]).write_parquet(ws.source)
    ws.fails(r"column 'id' must be unique, found 2 id\(s\) on more than one row \(first: 17, 2500\)")


# ---------------------------------------------------------------------------------------------- foreign files


@pytest.mark.parametrize(
    ("name", "content"),
    [("README.txt", b"data from Kaggle\n"), ("a.parquet.crc", b"\x00\x01crc"), ("b.parquet", b""), ("c.csv", b"id\n1\n")],
)  # fmt: skip
def test_a_foreign_file_in_an_input_directory_is_named(ws: Workspace, name: str, content: bytes) -> None:
    directory = ws.tmp / "raw"
    directory.mkdir()
    raw_frame().write_parquet(directory / "a.parquet")
    (directory / name).write_bytes(content)
    ws.source = directory
    message = ws.fails("not a readable parquet file")
    assert (
        message.startswith(f"{directory / name}: ")
        and "an input directory holds BELKA parquet files only" in message
    )


def test_hidden_and_underscore_files_and_an_empty_part_are_skipped(ws: Workspace) -> None:
    directory = two_files(ws, raw_frame(), raw_frame().head(0))
    (directory / ".a.parquet.crc").write_bytes(b"\x00")
    (directory / "_SUCCESS").write_bytes(b"")
    ws.source = directory
    assert ws.run()["rows"] == 100


def test_a_part_with_another_schema_fails_before_any_work(ws: Workspace) -> None:
    directory = two_files(ws, raw_frame(), pl.DataFrame({"x": [1, 2]}))
    ws.source = directory
    message = ws.fails("missing column 'id'")
    assert message.startswith(f"{directory / 'b.parquet'}: ")


# ---------------------------------------------------------------------------------------------- labels


def test_conflicting_labels_for_one_molecule_and_protein(ws: Workspace) -> None:
    """Row 30 again under a new id with the other label, as after an append: an error naming both ids."""
    frame = raw_frame()
    again = frame.filter(pl.col("id") == 30).with_columns(
        pl.lit(500, pl.Int64).alias("id"), (1 - pl.col("binds")).alias("binds")
    )
    pl.concat([frame, again]).write_parquet(ws.source)
    message = ws.fails(
        "must give one label to a molecule and protein", make_params(conflicting_labels="error")
    )
    assert message.startswith(
        f"{ws.source}: column 'binds' must give one label to a molecule and protein, found 0 at id 500 and 1 at "
        "id 30 for the same molecule with BRD4 (1 molecule-protein pair(s) labelled both ways"
    )


def test_conflicting_labels_found_after_cleaning(ws: Workspace) -> None:
    """Kaggle's N[Dy] and RDKit's [NH][Dy] are one molecule once cleaned: their labels must agree."""
    frame = raw_frame()
    again = frame.filter(pl.col("id") == 10).with_columns(
        pl.lit(500, pl.Int64).alias("id"),
        pl.col("molecule_smiles").str.replace("N[Dy]", "[NH][Dy]", literal=True),
        (1 - pl.col("binds")).alias("binds"),
    )
    pl.concat([frame, again]).write_parquet(ws.source)
    ws.fails(
        "found 0 at id 500 and 1 at id 10 for the same molecule with HSA",
        make_params(conflicting_labels="error"),
    )


def test_the_same_molecule_and_protein_twice_with_one_label_is_kept(ws: Workspace) -> None:
    """A deliberate acceptance: two rows with one label are two measurements; both are kept."""
    frame = raw_frame()
    again = frame.filter(pl.col("id") == 30).with_columns(pl.lit(500, pl.Int64).alias("id"))
    pl.concat([frame, again]).write_parquet(ws.source)
    assert ws.run()["rows"] == 101


# ---------------------------------------------------------------------------------------------- output paths


def test_an_output_that_is_the_input_directory_is_refused(ws: Workspace) -> None:
    directory = ws.tmp / "raw"
    directory.mkdir()
    raw_frame().write_parquet(directory / "a.parquet")
    before = tree_hashes(directory)
    for output, rejects in [(directory, ws.rejects), (directory / "features", ws.rejects), (ws.output, directory / "a.parquet")]:  # fmt: skip
        with pytest.raises(InputError, match="an output path that overlaps the input"):
            featurize_file(directory, output, rejects, make_params(), True, ws.cache)
    assert tree_hashes(directory) == before


def test_an_output_directory_where_a_file_is(ws: Workspace) -> None:
    precious = ws.tmp / "notes.txt"
    precious.write_text("keep me\n")
    with pytest.raises(InputError, match="is a file, where an output directory is to be written"):
        featurize_file(ws.source, precious, ws.rejects, make_params(), True, ws.cache)
    assert precious.read_text() == "keep me\n" and [p.name for p in ws.tmp.glob(".notes*")] == []


def test_an_output_file_where_a_directory_is(tmp_path: Path) -> None:
    with (
        pytest.raises(InputError, match="is a directory, where a file is to be written"),
        atomic_file(tmp_path),
    ):
        pass


# ---------------------------------------------------------------------------------------------- scoring on demand


def score(mini_run: MiniRun, capsys: pytest.CaptureFixture, source: Path) -> subprocess.CompletedProcess:
    return predict_main(
        capsys, "--models", str(mini_run.models), "--input", str(source), "--output", str(source) + ".out"
    )


MOLECULES = raw_frame(20).select("id", "molecule_smiles", "protein_name")


@pytest.mark.parametrize(
    ("frame", "suffix", "expected"),
    [
        (with_nulls(MOLECULES, "protein_name", [3]), "parquet", "column 'protein_name' must be a protein name without surrounding spaces on every row, found an empty value at id 3 (1 row in all)"),
        (with_nulls(MOLECULES, "id", [3]), "parquet", "column 'id' must be a 64-bit integer on every row, found an empty value at row 4 (1 row in all)"),
        (MOLECULES.with_columns(pl.format("x{}", "id").alias("id")), "csv", "column 'id' must be a 64-bit integer on every row, found 'x0' at row 1 (20 rows in all)"),
        (pl.concat([MOLECULES, MOLECULES.head(1)]), "csv", "column 'id' must be unique, found 1 id(s) on more than one row (first: 0)"),
        (MOLECULES.head(0), "csv", "has no rows (expected molecule_smiles, protein_name[, id])"),
        (MOLECULES.with_columns(pl.lit("EGFR").alias("protein_name")), "csv", "unknown protein_name value(s) 'EGFR'; the model knows BRD4, HSA, sEH"),
        (MOLECULES.with_columns(pl.col("id").cast(pl.Float64)), "parquet", "column 'id' must be integer, found Float64"),
    ],
)  # fmt: skip
def test_scoring_a_bad_file_names_that_file(
    mini_run: MiniRun,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    frame: pl.DataFrame,
    suffix: str,
    expected: str,
) -> None:
    source = tmp_path / f"molecules.{suffix}"
    frame.write_csv(source) if suffix == "csv" else frame.write_parquet(source)
    result = score(mini_run, capsys, source)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 1 and errors == [f"error: {source}: {expected}"], result.stderr
    assert not Path(str(source) + ".out").exists()


def test_scoring_one_smiles_for_an_unknown_protein_names_the_flag(mini_run: MiniRun, capsys) -> None:
    result = predict_main(
        capsys, "--models", str(mini_run.models), "--smiles", "CC(=O)N[Dy]", "--protein", "EGFR"
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "error: --protein: unknown protein_name value(s) 'EGFR'; the model knows BRD4, HSA, sEH"
    )


# ---------------------------------------------------------------------------------------------- models directory


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda m: m.__setitem__("sha256", []), "'sha256' must map each artifact to its digest"),
        (lambda m: m["features"].pop("fingerprint"), "no complete feature spec"),
        (lambda m: m["features"].__setitem__("descriptors", 3), "no complete feature spec"),
    ],
)
def test_a_manifest_with_fields_of_another_form(
    mini_run: MiniRun, tmp_path: Path, change, expected: str
) -> None:
    models = Path(shutil.copytree(mini_run.models, tmp_path / "models"))
    edit_json(models / "manifest.json", change)
    with pytest.raises(ArtifactError, match=expected):
        load_model(models)


def test_a_models_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "models").write_text("x")
    with pytest.raises(ArtifactError, match="a file, where the trained model's directory is expected"):
        load_model(tmp_path / "models")


# ---------------------------------------------------------------------------------------------- feature cache


def cache_parts(cache: Path) -> list[Path]:
    return sorted(cache.rglob("part-*.parquet"))


def test_damaged_feature_cache_parts_are_computed_again(
    ws: Workspace, warm_cache: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A part of another schema (its index column readable) and one whose data pages are damaged (its footer
    intact) are both ignored with a warning: the output is the same as with a sound cache. (More damage, and what
    the next run does, in tests/test_feature_cache.py.)"""
    frame = raw_frame(3000)
    frame.write_parquet(ws.source)
    shutil.copytree(warm_cache, ws.cache, dirs_exist_ok=True)  # three parts
    ws.run(make_params(batch_rows=1000))
    expected = tree_hashes(ws.output)
    first, second = cache_parts(ws.cache)[:2]
    pl.read_parquet(first).select("molecule_key").write_parquet(first)
    data = bytearray(second.read_bytes())
    footer = int.from_bytes(data[-8:-4], "little") + 8
    for i in range(len(data) // 2, len(data) - footer - 16):
        data[i] ^= 0x5A  # the column chunks after the keys'
    second.write_bytes(bytes(data))
    assert pl.read_parquet(second, columns=["molecule_key"]).height > 0  # its keys are still readable
    with caplog.at_level(logging.WARNING, logger="stages"):
        ws.run(make_params(batch_rows=1000))
    assert tree_hashes(ws.output) == expected
    for part in (first, second):
        assert f"ignoring {part}: its bytes do not match the digest in its name" in caplog.text


def test_a_feature_cache_path_that_is_a_file(ws: Workspace) -> None:
    blocker = ws.tmp / "cache-file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file, where the feature cache's directory is expected"):
        ws.run(cache=blocker)
    ws.assert_untouched()


def test_a_damaged_molecules_part_of_a_featurize_output_is_named(ws: Workspace) -> None:
    part = ws.output / "molecules" / "part-00000.parquet"
    part.write_bytes(part.read_bytes()[:100])
    with pytest.raises(InputError, match=f"{part}: not a readable parquet part .*dvc checkout"):
        MoleculeStore(ws.output)


# ---------------------------------------------------------------------------------------------- environment


def test_an_unknown_log_level_is_a_warning(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setenv("BELKA_LOG_LEVEL", "loud")
    cli.setup_logging()
    assert logging.getLogger().level == logging.INFO
    assert (
        "BELKA_LOG_LEVEL='loud' is not one of DEBUG, INFO, WARNING, ERROR, CRITICAL: using INFO"
        in capsys.readouterr().err
    )


def test_unexpected_read_errors_are_one_line(tmp_path: Path, capsys) -> None:
    """Errors without a file name, and a damaged file read where no check names it, still give one line."""
    damaged = tmp_path / "x.parquet"
    damaged.write_bytes(b"PAR1 not really")
    assert cli.run_main(lambda: pl.read_parquet(damaged)) == 1
    assert cli.run_main(lambda: (_ for _ in ()).throw(TimeoutError("Timed out trying to connect"))) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("error: a data file could not be read: ComputeError: ") and len(err) == 2
    assert err[1] == "error: Timed out trying to connect"
