"""Split featurized training rows into train and valid parts shaped like BELKA's test set.

Kaggle scores BELKA's test set in two groups: molecules all of whose building blocks occur in training (``share``)
and molecules none of whose building blocks do (``non_share``, most of the private leaderboard); no test molecule
mixes the two. A valid part that estimates that score needs both, with Kaggle's definitions:

- each distinct building block (by its key: the same amine in positions 2 and 3 is one block, as BELKA's two amine
  positions draw from one pool) is held out when a seeded hash of its key falls below
  ``split.held_out_building_blocks``; no training molecule uses a held-out block;
- a molecule's ``unseen_blocks`` is the number of its positions whose block is held out: 3 is ``non_share``, 0 is a
  ``share`` candidate, 1 or 2 is ``mixed``, which Kaggle's test does not have: such molecules go to valid, are
  reported apart and left out of the score;
- of the share candidates, a seeded hash of the molecule's key below ``split.valid_fraction`` sends it to valid.

Methods: ``belka`` (the default, both groups), ``random`` (the random share part only: no block is held out), and
``building_blocks`` (the held-out blocks only: non-share and mixed, no share part).

Whether a molecule is valid, and in which group, depends only on its own key, its building blocks and the split
params: never on what else is in the data. Appending rows (new molecules, new building blocks) moves no earlier
molecule to the other side or to another group, the row order and batch size change nothing, and the metrics
before and after an append score the same earlier molecules.

Output: ``--train`` and ``--valid`` directories of ``part-NNNNN.parquet`` (the featurized rows plus
``unseen_blocks``; features stay once per molecule in the featurize output) and ``--summary`` (counts: rows and
positives of each side, in all and by protein, and of each valid group). Split reads only the featurized rows, so a
change of molecule features (fingerprint, descriptors) does not rerun it.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from stages.atomic import atomic_dir
from stages.cli import Command
from stages.dataset import BB_KEYS, GROUP_OF_UNSEEN, KEY, UNSEEN, iter_row_batches
from stages.errors import InputError
from stages.io import BINDS, PROTEIN, shard_name, write_json, write_parquet
from stages.params import Params, Split

log = logging.getLogger("stages.split")

READ_ROWS = 1_000_000  # rows read at a time (memory only: the split does not depend on it)
MOLECULE_SALT = 0x5EED_5A17  # the molecule draw uses another stream than the block draw of the same seed


def uniform_hash(keys: np.ndarray, seed: int) -> np.ndarray:
    """splitmix64 of (key, seed) mapped to [0, 1): a fixed, platform-independent draw per key."""
    with np.errstate(over="ignore"):
        z = keys.astype(np.uint64) + np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)


@dataclass(frozen=True)
class HoldOutRule:
    """How molecules are drawn into a held-out part: a fraction of building blocks held out, a fraction of the
    other molecules drawn at random. The split uses it with the split params; train draws its early-stopping part
    from the training rows with the same rule and its own fractions and seed."""

    held_out_building_blocks: float  # 0: no block is held out
    valid_fraction: float  # 0: no molecule is drawn at random
    seed: int
    stream: int = 0  # 0: the split's draw; another value: a draw independent of the split's for any two seeds

    def draw(self, keys: np.ndarray, salt: int = 0) -> np.ndarray:
        """The rule's uniform draw for ``keys``: on another stream, the keys are hashed first with the stream's
        own constant, so no choice of seeds makes it repeat the split's draw (the early-stopping part drawn from
        the training rows with ``train.seed == split.seed`` would otherwise fall inside what the split took away,
        as both draws nest)."""
        if self.stream:
            keys = (uniform_hash(keys, self.stream) * float(1 << 53)).astype(np.uint64)
        return uniform_hash(keys, self.seed ^ salt)

    @classmethod
    def of_split(cls, params: Split) -> HoldOutRule:
        return cls(
            held_out_building_blocks=params.held_out_building_blocks if params.method != "random" else 0.0,
            valid_fraction=params.valid_fraction if params.method != "building_blocks" else 0.0,
            seed=params.seed,
        )


def unseen_blocks(rows: pl.DataFrame, rule: HoldOutRule) -> np.ndarray:
    """For each row, how many of its molecule's three positions hold a held-out building block (0 to 3)."""
    count = np.zeros(len(rows), dtype=np.int8)
    if rule.held_out_building_blocks > 0:
        for column in BB_KEYS:
            count += rule.draw(rows[column].to_numpy()) < rule.held_out_building_blocks
    return count


def drawn_at_random(rows: pl.DataFrame, rule: HoldOutRule) -> np.ndarray:
    """True for rows whose molecule the random draw takes (a function of the molecule's key alone)."""
    return rule.draw(rows[KEY].to_numpy(), MOLECULE_SALT) < rule.valid_fraction


@dataclass
class Assignment:
    """Where each row goes: ``held`` (valid, or the early-stopping part) and its molecule's ``unseen`` blocks."""

    held: np.ndarray  # bool
    unseen: np.ndarray  # int8, 0..3


def assign(rows: pl.DataFrame, rule: HoldOutRule) -> Assignment:
    """Every molecule with a held-out block, and a random fraction of the others, is held; all rows of a molecule
    share its key and blocks, so they land on one side."""
    unseen = unseen_blocks(rows, rule)
    return Assignment(held=(unseen > 0) | drawn_at_random(rows, rule), unseen=unseen)


@dataclass
class PartCounts:
    rows: int = 0
    positives: int = 0

    def add(self, part: pl.DataFrame) -> None:
        self.rows += len(part)
        self.positives += int(part[BINDS].sum() or 0)


@dataclass
class SideCounts:
    """Rows and positives of a side (train or valid), in all and by protein: what train's memory estimate reads
    before it reads any row (the rows it will keep after sampling)."""

    total: PartCounts = field(default_factory=PartCounts)
    by_protein: dict[str, PartCounts] = field(default_factory=dict)

    def add(self, part: pl.DataFrame) -> None:
        self.total.add(part)
        for (protein,), rows in part.group_by(PROTEIN):
            self.by_protein.setdefault(str(protein), PartCounts()).add(rows)

    def record(self) -> dict:
        by_protein = {protein: vars(self.by_protein[protein]) for protein in sorted(self.by_protein)}
        return {**vars(self.total), "by_protein": by_protein}


@dataclass(frozen=True)
class SplitOutput:
    """Where the split writes: the train part (all train reads), the valid part, the summary."""

    train: Path
    valid: Path
    summary: Path

    @classmethod
    def under(cls, directory: Path) -> SplitOutput:
        return cls(directory / "train", directory / "valid", directory / "summary.json")


def split_rows(rows_dir: Path, out: SplitOutput, params: Split) -> dict:
    rule = HoldOutRule.of_split(params)
    counts = {side: SideCounts() for side in ("train", "valid")}
    by_group: dict[str, PartCounts] = {group: PartCounts() for group in ("share", "mixed", "non_share")}
    with atomic_dir(out.train) as train_tmp, atomic_dir(out.valid) as valid_tmp:
        for number, rows in enumerate(iter_row_batches(rows_dir, READ_ROWS)):
            where = assign(rows, rule)
            rows = rows.with_columns(pl.Series(UNSEEN, where.unseen, dtype=pl.Int8))
            held = pl.Series(where.held)
            valid = rows.filter(held)
            for side, part, tmp in (("train", rows.filter(~held), train_tmp), ("valid", valid, valid_tmp)):
                write_parquet(part, tmp / shard_name(number))
                counts[side].add(part)
            for unseen, group in GROUP_OF_UNSEEN.items():
                by_group[group].add(valid.filter(pl.col(UNSEEN) == unseen))
        for side, part in counts.items():
            if part.total.rows == 0:
                raise InputError(
                    f"split: the {side} part is empty; change split.valid_fraction, "
                    "split.held_out_building_blocks or the data"
                )
        summary = {
            "method": params.method,
            "train": counts["train"].record(),
            "valid": counts["valid"].record(),
            "valid_groups": {group: vars(part) for group, part in by_group.items()},
        }
    write_json(out.summary, summary)
    return summary


def run(args: argparse.Namespace, params: Params) -> None:
    summary = split_rows(args.rows, SplitOutput(args.train, args.valid, args.summary), params.split)
    log.info("%s split: %s", summary["method"], summary["valid_groups"])


def main(argv: list[str] | None = None) -> int:
    return (
        Command("split", __doc__)
        .paths(
            rows="the rows/ of the train data's featurize output",
            train="the train part's directory",
            valid="the valid part's directory",
            summary="the JSON of counts",
        )
        .main(argv, run)
    )


if __name__ == "__main__":
    raise SystemExit(main())
