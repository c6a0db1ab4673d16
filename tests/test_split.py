import numpy as np
import polars as pl
import pytest

from stages.io import write_parquet
from stages.params import Split
from stages.split import assign_valid, held_out_probability, split_rows, uniform_hash


def rows(n_molecules: int = 3000, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    bb = rng.integers(0, 600, size=(n_molecules, 3))
    return pl.DataFrame(
        {
            "id": np.arange(3 * n_molecules),
            "molecule_key": np.repeat(rng.integers(0, 2**62, n_molecules), 3),
            "protein_name": ["BRD4", "HSA", "sEH"] * n_molecules,
            "binds": rng.integers(0, 2, 3 * n_molecules).astype(np.int8),
            "bb1_key": np.repeat(bb[:, 0] + 1000, 3),
            "bb2_key": np.repeat(bb[:, 1] + 2000, 3),
            "bb3_key": np.repeat(bb[:, 2] + 2000, 3),
        }
    )


def test_uniform_hash_is_uniform_and_seeded():
    keys = np.arange(100_000, dtype=np.int64)
    u = uniform_hash(keys, 7)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert not np.array_equal(u, uniform_hash(keys, 8))
    np.testing.assert_array_equal(u, uniform_hash(keys, 7))


def test_random_split_keeps_a_molecule_on_one_side_at_the_fraction():
    frame = rows()
    valid = assign_valid(frame, Split(method="random", valid_fraction=0.3, seed=1))
    per_molecule = (
        frame.with_columns(pl.Series("v", valid)).group_by("molecule_key").agg(pl.col("v").n_unique())
    )
    assert per_molecule["v"].max() == 1
    assert valid.mean() == pytest.approx(0.3, abs=0.03)


def test_building_block_split_holds_out_whole_blocks():
    frame = rows()
    valid = pl.Series(assign_valid(frame, Split(method="building_blocks", valid_fraction=0.3, seed=1)))
    train_part, valid_part = frame.filter(~valid), frame.filter(valid)
    train_blocks = set(pl.concat([train_part[c] for c in ("bb1_key", "bb2_key", "bb3_key")]).to_list())
    # Every valid molecule has a block that no training molecule uses.
    for row in valid_part.select("bb1_key", "bb2_key", "bb3_key").unique().rows():
        assert not set(row) <= train_blocks
    assert valid.mean() == pytest.approx(0.3, abs=0.1)
    assert held_out_probability(0.3) == pytest.approx(1 - 0.7 ** (1 / 3))


def test_split_rows_writes_both_sides_atomically(tmp_path):
    (tmp_path / "features" / "rows").mkdir(parents=True)
    frame = rows(500)
    write_parquet(frame.slice(0, 900), tmp_path / "features" / "rows" / "part-00000.parquet")
    write_parquet(frame.slice(900), tmp_path / "features" / "rows" / "part-00001.parquet")
    summary = split_rows(
        tmp_path / "features", tmp_path / "split", Split(method="random", valid_fraction=0.3, seed=1)
    )
    back = pl.concat([pl.read_parquet(p) for p in sorted((tmp_path / "split").rglob("part-*.parquet"))])
    assert sorted(back["id"].to_list()) == frame["id"].to_list()
    assert summary["train"]["rows"] + summary["valid"]["rows"] == len(frame)
    assert not list(tmp_path.glob(".split.tmp-*"))
