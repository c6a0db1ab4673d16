"""The split: Kaggle's groups from held-out building blocks, a molecule's side from its own key and blocks only."""

import numpy as np
import polars as pl
import pytest

from stages import split as split_module
from stages.io import write_parquet
from stages.params import Split
from stages.split import HoldOutRule, SplitOutput, assign, split_rows, uniform_hash

BB = ["bb1_key", "bb2_key", "bb3_key"]


def rows(n_molecules: int = 3000, seed: int = 0, first_blocks: int = 60, amines: int = 150) -> pl.DataFrame:
    """BELKA-shaped rows: 3 per molecule; first blocks, and amines shared by positions 2 and 3."""
    rng = np.random.default_rng(seed)
    bb = np.stack(
        [
            rng.integers(0, first_blocks, n_molecules) + 1000,
            *rng.integers(0, amines, (2, n_molecules)) + 2000,
        ],
        1,
    )
    return pl.DataFrame(
        {
            "id": np.arange(3 * n_molecules) + seed * 10_000_000,
            "molecule_key": np.repeat(rng.integers(0, 2**62, n_molecules), 3),
            "protein_name": ["BRD4", "HSA", "sEH"] * n_molecules,
            "binds": rng.integers(0, 2, 3 * n_molecules).astype(np.int8),
            **{column: np.repeat(bb[:, i], 3) for i, column in enumerate(BB)},
        }
    )


def params(method: str = "belka", held: float = 0.25, valid: float = 0.2) -> Split:
    return Split(method=method, held_out_building_blocks=held, valid_fraction=valid, seed=1)


def blocks_of(frame: pl.DataFrame) -> set[int]:
    return set(pl.concat([frame[c] for c in BB]).to_list())


def test_uniform_hash_is_uniform_and_seeded():
    keys = np.arange(100_000, dtype=np.int64)
    u = uniform_hash(keys, 7)
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    assert not np.array_equal(u, uniform_hash(keys, 8))
    np.testing.assert_array_equal(u, uniform_hash(keys, 7))


def test_unseen_blocks_counts_positions_whose_block_is_held_out_in_any_position():
    # Blocks 1..8 of which, with seed 1 and fraction 0.5, the held ones are known from the hash's definition.
    blocks = np.arange(1, 9)
    held = set(blocks[uniform_hash(blocks, 1) < 0.5].tolist())
    free = sorted(set(blocks.tolist()) - held)
    assert len(held) >= 2 and len(free) >= 2, (held, free)  # the fixture needs both kinds
    h, f = sorted(held), free
    molecules = [  # (bb1, bb2, bb3) -> expected unseen blocks
        ((f[0], f[1], f[1]), 0), ((h[0], f[0], f[1]), 1), ((f[0], h[0], h[0]), 2),  # one amine in 2 positions
        ((h[0], h[1], f[0]), 2), ((h[1], h[0], h[0]), 3), ((h[0], h[1], h[1]), 3),
    ]  # fmt: skip
    frame = pl.DataFrame(
        {
            "id": range(len(molecules)),
            "molecule_key": [10**15 + i for i in range(len(molecules))],
            **{c: [m[0][i] for m in molecules] for i, c in enumerate(BB)},
        }
    )
    where = assign(frame, HoldOutRule(held_out_building_blocks=0.5, valid_fraction=0.0, seed=1))
    assert where.unseen.tolist() == [m[1] for m in molecules]
    assert where.held.tolist() == [m[1] > 0 for m in molecules]


def test_belka_split_has_kaggles_groups():
    frame = rows()
    where = assign(frame, HoldOutRule.of_split(params()))
    held = pl.Series(where.held)
    train_part, valid_part = frame.filter(~held), frame.filter(held)
    unseen = pl.Series(where.unseen).filter(held)
    non_share, share, mixed = (
        valid_part.filter(mask) for mask in (unseen == 3, unseen == 0, (unseen % 3) > 0)
    )
    assert len(non_share) and len(share) and len(mixed)
    training_blocks = blocks_of(train_part)
    # Kaggle's definitions on the actual training part: non-share molecules use no block seen in training ...
    assert not blocks_of(non_share) & training_blocks
    # ... share molecules only blocks seen in training; mixed ones both kinds
    assert blocks_of(share) <= training_blocks
    for row in mixed.select(BB).rows():
        assert 0 < sum(b in training_blocks for b in row) < 3
    # of the molecules with no held-out block, valid_fraction go to valid at random
    no_held = frame.filter(pl.Series(where.unseen == 0))
    assert len(share) / len(no_held) == pytest.approx(0.2, abs=0.03)
    per_molecule = frame.with_columns(held.alias("v")).group_by("molecule_key").agg(pl.col("v").n_unique())
    assert per_molecule["v"].max() == 1  # all rows of a molecule on one side


def test_random_split_is_share_only_and_building_blocks_has_no_share_part():
    frame = rows()
    random_valid = pl.Series(assign(frame, HoldOutRule.of_split(params("random", valid=0.3))).held)
    assert random_valid.mean() == pytest.approx(0.3, abs=0.03)
    assert blocks_of(frame.filter(random_valid)) <= blocks_of(frame.filter(~random_valid))
    where = assign(frame, HoldOutRule.of_split(params("building_blocks")))
    assert (where.unseen[where.held] > 0).all() and not (where.unseen[~where.held] > 0).any()


def test_appended_rows_move_no_earlier_molecule_to_another_side_or_group(tmp_path):
    """Scenario A: new molecules, with new building blocks in every position, appended to the split's input."""
    before = rows(3000, seed=0)
    appended = rows(600, seed=1, first_blocks=80, amines=200)  # blocks 1060.., 2150.. are new
    assert blocks_of(appended) - blocks_of(before)
    write_parquet(before, tmp_path / "a" / "part-00000.parquet")
    write_parquet(before, tmp_path / "b" / "part-00000.parquet")
    write_parquet(appended, tmp_path / "b" / "part-00001.parquet")
    split_rows(tmp_path / "a", SplitOutput.under(tmp_path / "split-a"), params())
    split_rows(tmp_path / "b", SplitOutput.under(tmp_path / "split-b"), params())

    def sides(out) -> pl.DataFrame:
        return pl.concat(
            [
                pl.read_parquet(out / side).with_columns(pl.lit(side).alias("side"))
                for side in ("train", "valid")
            ]
        ).select("id", "side", "unseen_blocks")

    earlier = sides(tmp_path / "split-a")
    later = sides(tmp_path / "split-b").join(earlier.select("id"), on="id", how="semi")
    assert earlier.sort("id").equals(later.sort("id"))


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
    summary_a = split_rows(tmp_path / "a", SplitOutput.under(tmp_path / "split-a"), params())
    monkeypatch.setattr(split_module, "READ_ROWS", 250)
    summary = split_rows(tmp_path / "b", SplitOutput.under(tmp_path / "split-b"), params())
    assert valid_ids(tmp_path / "split-a") == valid_ids(tmp_path / "split-b")
    assert summary == summary_a
    assert summary["train"]["rows"] + summary["valid"]["rows"] == len(frame)
    groups = summary["valid_groups"]
    assert sum(g["rows"] for g in groups.values()) == summary["valid"]["rows"]
    assert not list(tmp_path.glob(".split*.tmp-*"))
    # each side's rows and positives by protein (what train's memory estimate reads), counted here from the files
    for side in ("train", "valid"):
        part = pl.read_parquet(tmp_path / "split-a" / side)
        expected = {
            protein: {"rows": int((part["protein_name"] == protein).sum()),
                      "positives": int(part.filter(pl.col("protein_name") == protein)["binds"].sum())}
            for protein in ("BRD4", "HSA", "sEH")
        }  # fmt: skip
        assert summary[side]["by_protein"] == expected
        assert sum(p["rows"] for p in expected.values()) == summary[side]["rows"] > 0


def test_the_schema_refuses_a_split_that_leaves_too_little_to_train_on():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="leave about 19% of the molecules to train on"):
        Split(method="belka", held_out_building_blocks=0.4, valid_fraction=0.1, seed=0)
    assert (
        Split(method="random", held_out_building_blocks=0.4, valid_fraction=0.1, seed=0).train_fraction()
        == 0.9
    )
