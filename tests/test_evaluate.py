import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from stages.evaluate import building_block_group, curve_points, score_predictions


def test_kaggle_score_is_the_mean_ap_over_protein_and_group_pairs():
    rng = np.random.default_rng(0)
    n = 4000
    frame = pl.DataFrame(
        {
            "protein_name": rng.choice(["BRD4", "HSA", "sEH"], n),
            "group": rng.choice(["share", "non_share"], n),
            "binds": (rng.random(n) < 0.05).astype(np.int8),
            "prob": rng.random(n),
        }
    )
    metrics = score_predictions(frame)
    expected = np.mean(
        [
            average_precision_score(part["binds"], part["prob"])
            for _, part in frame.group_by(["protein_name", "group"])
        ]
    )
    assert metrics["score"] == pytest.approx(expected)
    assert metrics["pairs_scored"] == 6
    assert set(metrics["by_protein"]) == {"BRD4", "HSA", "sEH"}
    assert metrics["positive_rate"] == pytest.approx(frame["binds"].mean())


def test_pairs_without_positives_are_left_out_and_counted():
    frame = pl.DataFrame(
        {
            "protein_name": ["BRD4"] * 4 + ["HSA"] * 4,
            "group": ["share"] * 8,
            "binds": [1, 0, 0, 0, 0, 0, 0, 0],
            "prob": [0.9, 0.1, 0.2, 0.3, 0.5, 0.5, 0.5, 0.5],
        },
        schema_overrides={"binds": pl.Int8},
    )
    metrics = score_predictions(frame)
    assert metrics["score"] == 1.0
    assert metrics["pairs_without_positives"] == 1
    assert metrics["by_group"]["HSA/share"]["ap"] is None


def test_building_block_group():
    frame = pl.DataFrame({"bb1_key": [1, 1, 9], "bb2_key": [2, 2, 2], "bb3_key": [3, 8, 3]})
    groups = building_block_group(frame, np.array([1, 2, 3]))
    assert groups.tolist() == ["share", "non_share", "non_share"]


def test_curve_points_keep_both_ends():
    x, _ = curve_points(np.arange(1000.0), np.arange(1000.0), 50)
    assert len(x) <= 50 and x[0] == 0 and x[-1] == 999
