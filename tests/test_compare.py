"""stages/compare.py: the paired bootstrap difference of two runs on the same valid molecules, against values worked
out by hand on a four-molecule fixture whose resamples the seed fixes; a model against itself; valid parts that
differ; and evaluate's predictions output that it reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from stages.compare import compare, format_comparison, pair_predictions, paired_difference
from stages.evaluate import EvaluateOutput, evaluate, sample_counts, score_predictions
from stages.io import InputError

# One protein, one group (share), four molecules: keys 1-4, two binders. Only B moves: molecule 2's score.
#   molecule (key)   label   A     B
#   0 (1)            1       0.9   0.9
#   1 (2)            1       0.2   0.6
#   2 (3)            0       0.5   0.5
#   3 (4)            0       0.1   0.1
FOUR = {
    "molecule_key": [1, 2, 3, 4],
    "protein_name": ["BRD4"] * 4,
    "group": ["share"] * 4,
    "binds": [1, 1, 0, 0],
}


def predictions(prob: list[float], **columns: list) -> pl.DataFrame:
    return pl.DataFrame({**FOUR, **columns, "prob": prob}, schema_overrides={"prob": pl.Float32})


A = predictions([0.9, 0.2, 0.5, 0.1])
B = predictions([0.9, 0.6, 0.5, 0.1])


def test_the_resamples_of_seed_0_are_the_ones_worked_by_hand():
    """The draws the hand computation below uses: how often each of the four molecules is drawn."""
    assert [list(sample_counts(0, s, [4])[0]) for s in range(3)] == [[1, 1, 0, 2], [1, 1, 2, 0], [1, 1, 1, 1]]


def test_the_paired_difference_equals_the_one_worked_by_hand():
    """By hand, AP = sum over the thresholds holding a binder of (recall step) x (precision), rows weighed by how
    often their molecule is drawn:
    - all rows once: A ranks + - + - : (1/2)(1/1) + (1/2)(2/3) = 5/6; B ranks + + - - : 1. B - A = 1/6.
    - sample 0, counts 1 1 0 2: A: 0.9 (+, 1 row) precision 1; 0.5 (0 rows); 0.2 (+) precision 2/2: AP 1. B: 1.
      Difference 0.
    - sample 1, counts 1 1 2 0: A: precision 1 at 0.9, then 2 binders in 1 + 2 + 1 = 4 rows: 1/2 + 1/4 = 3/4.
      B: 1. Difference 1/4.
    - sample 2, counts 1 1 1 1: as all rows once: 1/6.
    Differences sorted 0, 1/6, 1/4; numpy's linear percentiles: 2.5% at position 0.05, 0.05 x 1/6 = 1/120;
    97.5% at 1.95, 1/6 + 0.95 x (1/4 - 1/6) = 59/240."""
    result = paired_difference(pair_predictions(A, B), samples=3, seed=0)
    assert set(result) == {"score", "share"}  # no non-share row
    for name in ("score", "share"):
        entry = result[name]
        assert entry["a"] == pytest.approx(5 / 6) and entry["b"] == pytest.approx(1.0)
        assert entry["difference"] == pytest.approx(1 / 6)
        assert entry["interval"] == pytest.approx([1 / 120, 59 / 240])
        assert entry["better"] == "B"  # the interval lies above 0


def scored_rows(rng: np.random.Generator, molecules: int = 300) -> pl.DataFrame:
    """Both groups, three proteins, every molecule on each protein: evaluate's predictions' shape."""
    keys = np.repeat(np.arange(molecules, dtype=np.int64) * 7 + 3, 3)
    return pl.DataFrame({
        "molecule_key": keys,
        "protein_name": np.tile(["BRD4", "HSA", "sEH"], molecules),
        "group": np.where(keys % 3 == 0, "non_share", "share"),
        "binds": (rng.random(len(keys)) < 0.15).astype(np.int8),
        "prob": rng.random(len(keys)).astype(np.float32),
    })  # fmt: skip


def test_a_model_compared_with_itself_differs_by_exactly_zero():
    rows = scored_rows(np.random.default_rng(3))
    result = compare(rows, rows, "main", "main", samples=200, seed=5)
    assert result.rows_common == result.rows_a == result.rows_b == len(rows)
    assert set(result.figures) == {"score", "share", "non_share"}
    for entry in result.figures.values():
        assert entry["difference"] == 0.0 and entry["interval"] == [0.0, 0.0]
        assert entry["better"] == "not distinguishable"
    assert "the same valid part" in format_comparison(result)


def test_the_figures_are_evaluates_own():
    rows = scored_rows(np.random.default_rng(4))
    other = rows.with_columns(pl.Series("prob", np.random.default_rng(9).random(len(rows)), dtype=pl.Float32))
    result = paired_difference(pair_predictions(rows, other), samples=50, seed=0)
    ours, theirs = score_predictions(rows)[0], score_predictions(other)[0]
    for name in ("score", "share", "non_share"):
        assert result[name]["a"] == ours[name] and result[name]["b"] == theirs[name]
        low, high = result[name]["interval"]
        assert low <= result[name]["difference"] <= high


def test_different_valid_parts_are_compared_on_the_rows_in_common():
    """B's valid part lacks molecule 4 and holds a molecule A never saw, and gives molecule 2 another group (other
    split params): only molecules 1 and 3 are the same rows in both."""
    b = pl.DataFrame({"molecule_key": [1, 2, 3, 5], "protein_name": ["BRD4"] * 4,
                      "group": ["share", "non_share", "share", "share"], "binds": [1, 1, 0, 1],
                      "prob": [0.9, 0.6, 0.5, 0.3]}, schema_overrides={"prob": pl.Float32})  # fmt: skip
    result = compare(A, b, "main", "other-split", samples=20, seed=0)
    assert (result.rows_a, result.rows_b, result.rows_common) == (4, 4, 2)
    assert "the valid parts differ: 2 rows in common compared (main: 4 rows, other-split: 4)" in result.note
    # on the common rows (1: binder, 3: not) both rank the binder first: AP 1 each, difference 0
    assert result.figures["score"]["a"] == result.figures["score"]["b"] == 1.0


def test_two_runs_without_a_row_in_common_are_refused():
    other = A.with_columns(pl.col("molecule_key") + 100)
    with pytest.raises(InputError, match="main and other-data: no valid row in common"):
        pair_predictions(A, other, "main", "other-data")


def test_evaluate_keeps_the_rows_it_scores_as_predictions(mini_run, tmp_path: Path):
    out = EvaluateOutput(tmp_path / "metrics.json", tmp_path / "summary.json", tmp_path / "plots",
                         tmp_path / "valid-predictions.parquet")  # fmt: skip
    evaluate(mini_run.params.evaluate, mini_run.split / "train", mini_run.split / "valid", mini_run.features,
             mini_run.models, out, 64)  # fmt: skip
    kept = pl.read_parquet(out.predictions)
    assert kept.columns == ["molecule_key", "protein_name", "group", "binds", "prob"]
    assert "share" in set(kept["group"]) <= {"share", "non_share"}  # the mixed rows are not scored
    summary = json.loads(out.summary.read_text())
    scored = sum(pair["rows"] for name, pair in summary["pairs"].items() if not name.endswith("/mixed"))
    assert len(kept) == scored
    metrics = json.loads(out.metrics.read_text())
    figures = score_predictions(kept)[0]
    assert {name: figures.get(name) for name in ("score", "share", "non_share")} == {
        name: metrics.get(name) for name in ("score", "share", "non_share")
    }
