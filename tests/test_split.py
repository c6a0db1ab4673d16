import math

import numpy as np
import polars as pl
import pytest

from stages import split as split_module
from stages.io import write_parquet
from stages.params import Split
from stages.split import assign_valid, distinct_blocks, held_out_blocks, split_rows, uniform_hash

BB = ["bb1_key", "bb2_key", "bb3_key"]


def rows(n_molecules: int = 3000, seed: int = 0) -> pl.DataFrame:
    """BELKA-shaped rows: 3 per molecule; 60 first blocks, 150 amines shared by positions 2 and 3."""
    rng = np.random.default_rng(seed)
    bb = np.stack(
        [rng.integers(0, 60, n_molecules) + 1000, *rng.integers(0, 150, (2, n_molecules)) + 2000], 1
    )
    return pl.DataFrame(
        {
            "id": np.arange(3 * n_molecules),
            "molecule_key": np.repeat(rng.integers(0, 2**62, n_molecules), 3),
            "protein_name": ["BRD4", "HSA", "sEH"] * n_molecules,
            "binds": rng.integers(0, 2, 3 * n_molecules).astype(np.int8),
            **{column: np.repeat(bb[:, i], 3) for i, column in enumerate(BB)},
        }
    )


def params(method: str = "belka", held: float = 0.1, valid: float = 0.2) -> Split:
    return Split(method=method, held_out_building_blocks=held, valid_fraction=valid, seed=1)


def blocks_of(frame: pl.DataFrame) -> set[int]:
    return set(pl.concat([frame[c] for c in BB]).to_list())


def test_uniform_hash_is_uniform_and_seeded():
    keys = np.arange(100_000, dtype=np.int64)
    u = uniform_hash(keys, 7)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert not np.array_equal(u, uniform_hash(keys, 8))
    np.testing.assert_array_equal(u, uniform_hash(keys, 7))


def test_held_out_blocks_are_a_fraction_of_each_position():
    first, amines = np.arange(10, dtype=np.int64), np.arange(100, 104, dtype=np.int64)
    held = held_out_blocks([first, amines, amines], 0.25, seed=3)
    from_first, from_amines = [k for k in held if k < 100], [k for k in held if k >= 100]
    assert len(from_first) == math.ceil(0.25 * 10) == 3  # ceil: 2.5 -> 3
    assert len(from_amines) == math.ceil(0.25 * 4) == 1  # the same amine in positions 2 and 3
    # the held ones are those with the lowest hash in their position
    draws = dict(zip(first.tolist(), uniform_hash(first, 3).tolist(), strict=True))
    assert max(draws[k] for k in from_first) < min(v for k, v in draws.items() if k not in from_first)


def test_belka_split_has_both_groups_like_the_test_set():
    frame = rows()
    p = params()
    held = held_out_blocks(distinct_blocks_of(frame), p.held_out_building_blocks, p.seed)
    valid = pl.Series(assign_valid(frame, p, held))
    train_part, valid_part = frame.filter(~valid), frame.filter(valid)
    assert not blocks_of(train_part) & set(held.tolist())  # no training molecule uses a held-out block
    uses_held = valid_part.filter(pl.any_horizontal(pl.col(c).is_in(held.tolist()) for c in BB))
    share = valid_part.filter(~pl.any_horizontal(pl.col(c).is_in(held.tolist()) for c in BB))
    assert len(uses_held) and len(share)  # both groups
    assert blocks_of(share) <= blocks_of(train_part)  # share molecules: every block seen in training
    # every molecule with a held-out block is in valid; of the others, valid_fraction at random
    all_held = frame.filter(pl.any_horizontal(pl.col(c).is_in(held.tolist()) for c in BB))
    assert len(uses_held) == len(all_held)
    assert len(share) / (len(frame) - len(all_held)) == pytest.approx(0.2, abs=0.03)
    per_molecule = frame.with_columns(valid.alias("v")).group_by("molecule_key").agg(pl.col("v").n_unique())
    assert per_molecule["v"].max() == 1  # all rows of a molecule on one side


def distinct_blocks_of(frame: pl.DataFrame) -> list[np.ndarray]:
    return [np.unique(frame[c].to_numpy()) for c in BB]


def test_random_split_is_share_only_and_building_blocks_non_share_only():
    frame = rows()
    held = held_out_blocks(distinct_blocks_of(frame), 0.1, 1)
    random_valid = pl.Series(assign_valid(frame, params("random", valid=0.3), held))
    assert random_valid.mean() == pytest.approx(0.3, abs=0.03)
    assert blocks_of(frame.filter(random_valid)) <= blocks_of(frame.filter(~random_valid))
    bb_valid = pl.Series(assign_valid(frame, params("building_blocks"), held))
    assert not blocks_of(frame.filter(~bb_valid)) & set(held.tolist())
    assert (
        (frame.filter(bb_valid).select(pl.any_horizontal(pl.col(c).is_in(held.tolist()) for c in BB)))
        .to_series()
        .all()
    )


def write_shards(frame: pl.DataFrame, directory, sizes: list[int]) -> None:
    directory.mkdir(parents=True)
    start = 0
    for number, size in enumerate(sizes):
        write_parquet(frame.slice(start, size), directory / f"part-{number:05d}.parquet")
        start += size


def valid_ids(out) -> list[int]:
    return sorted(pl.read_parquet(out / "valid")["id"].to_list())


def test_same_split_whatever_the_row_order_or_batch_size(tmp_path, monkeypatch):
    frame = rows(1000)
    write_shards(frame, tmp_path / "a", [3000])
    write_shards(frame.sample(fraction=1.0, shuffle=True, seed=5), tmp_path / "b", [700, 1100, 1200])
    split_rows(tmp_path / "a", tmp_path / "split-a", params())
    monkeypatch.setattr(split_module, "READ_ROWS", 250)
    summary = split_rows(tmp_path / "b", tmp_path / "split-b", params())
    assert valid_ids(tmp_path / "split-a") == valid_ids(tmp_path / "split-b")
    assert summary["train"]["rows"] + summary["valid"]["rows"] == len(frame)
    assert summary["held_out_building_blocks"] == len(
        held_out_blocks(distinct_blocks(tmp_path / "a"), 0.1, 1)
    )
    assert not list(tmp_path.glob(".split*.tmp-*"))
