"""Kaggle's score on fixtures whose average precisions are worked out by hand (not by calling sklearn again)."""

import numpy as np
import polars as pl
import pytest

from stages.evaluate import building_block_group, curve_points, curves, score_predictions


def pairs(*rows: tuple[str, str, list[int], list[float]]) -> pl.DataFrame:
    return pl.concat(
        pl.DataFrame(
            {"protein_name": [p] * len(y), "group": [g] * len(y), "binds": y, "prob": s},
            schema={"protein_name": pl.String, "group": pl.String, "binds": pl.Int8, "prob": pl.Float64},
        )
        for p, g, y, s in rows
    )


# AP = sum over positives of (precision at that positive's rank) / positives, without ties:
FIXTURE = pairs(
    ("BRD4", "share", [1, 0, 0, 1], [0.9, 0.8, 0.3, 0.2]),  # ranks 1 and 4: (1/1 + 2/4) / 2 = 0.75
    ("BRD4", "non_share", [0, 1, 0], [0.95, 0.5, 0.1]),  # rank 2: 1/2 = 0.5
    ("HSA", "share", [1, 0], [0.4, 0.6]),  # rank 2: 0.5
    ("HSA", "non_share", [0, 0], [0.1, 0.05]),  # no positive: no AP, left out
    ("sEH", "share", [1, 1, 0], [0.7, 0.6, 0.5]),  # ranks 1, 2: 1.0
    ("sEH", "non_share", [1, 0], [0.2, 0.3]),  # rank 2: 0.5
)


def test_score_share_and_non_share_by_hand():
    metrics, summary = score_predictions(FIXTURE)
    assert metrics["ap_BRD4_share"] == pytest.approx(0.75)
    assert metrics["ap_BRD4_non_share"] == pytest.approx(0.5)
    assert metrics["ap_HSA_share"] == pytest.approx(0.5)
    assert "ap_HSA_non_share" not in metrics  # no positives: no average precision
    assert metrics["ap_sEH_share"] == pytest.approx(1.0)
    assert metrics["ap_sEH_non_share"] == pytest.approx(0.5)
    assert metrics["score"] == pytest.approx(
        (0.75 + 0.5 + 0.5 + 1.0 + 0.5) / 5
    )  # 0.65: the 5 pairs with an AP
    assert metrics["share"] == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert metrics["non_share"] == pytest.approx((0.5 + 0.5) / 2)
    assert summary["pairs_scored"] == 5 and summary["pairs_without_positives"] == ["HSA/non_share"]


def test_per_protein_ap_and_roc_auc_by_hand():
    metrics, summary = score_predictions(FIXTURE)
    # BRD4 (7 rows) by score: .95- .9+ .8- .5+ .3- .2+ .1-: AP (1/2 + 2/4 + 3/6) / 3 = 0.5; AUC: pairs of a
    # positive above a negative: .9 > 3, .5 > 2, .2 > 1 = 6 of 3 x 4 = 0.5
    assert metrics["ap_BRD4"] == pytest.approx(0.5)
    assert metrics["roc_auc_BRD4"] == pytest.approx(0.5)
    # HSA: .6- .4+ .1- .05-: AP 1/2; AUC 2 of 3
    assert metrics["ap_HSA"] == pytest.approx(0.5)
    assert metrics["roc_auc_HSA"] == pytest.approx(2 / 3)
    # sEH: .7+ .6+ .5- .3- .2+: AP (1 + 1 + 3/5) / 3; AUC 4 of 6
    assert metrics["ap_sEH"] == pytest.approx(2.6 / 3)
    assert metrics["roc_auc_sEH"] == pytest.approx(4 / 6)
    assert summary["proteins"]["BRD4"] == {"rows": 7, "positives": 3, "positive_rate": pytest.approx(3 / 7)}
    assert summary["pairs"]["HSA/non_share"] == {"rows": 2, "positives": 0, "positive_rate": 0.0}


def test_metrics_hold_only_comparable_figures():
    rng = np.random.default_rng(0)
    n = 3000
    frame = pl.DataFrame(
        {
            "protein_name": rng.choice(["BRD4", "HSA", "sEH"], n),
            "group": rng.choice(["share", "non_share"], n),
            "binds": (rng.random(n) < 0.05).astype(np.int8),
            "prob": rng.random(n),
        }
    )
    metrics, summary = score_predictions(frame)
    assert len(metrics) < 20 and all(isinstance(v, float) for v in metrics.values())
    assert {"score", "share", "non_share", "ap_BRD4", "roc_auc_sEH", "ap_HSA_non_share"} <= set(metrics)
    assert not any("rows" in k or "rate" in k or "positives" in k for k in metrics)
    assert summary["pairs_scored"] == 6 and summary["rows"] == n


def test_a_valid_part_with_one_group_only():
    frame = FIXTURE.filter(pl.col("group") == "share")
    metrics, summary = score_predictions(frame)
    assert metrics["score"] == pytest.approx((0.75 + 0.5 + 1.0) / 3) == metrics["share"]
    assert "non_share" not in metrics
    assert summary["pairs_scored"] == 3


def test_building_block_group():
    frame = pl.DataFrame({"bb1_key": [1, 1, 9], "bb2_key": [2, 2, 2], "bb3_key": [3, 8, 3]})
    groups = building_block_group(frame, np.array([1, 2, 3]))
    assert groups.tolist() == ["share", "non_share", "non_share"]


def test_curves_per_protein_and_group_for_the_plots():
    out = curves(FIXTURE, 200)
    pr, roc = out["pr"], out["roc"]
    # HSA/share has one positive and one negative; HSA/non_share no positive: no curve
    assert sorted(set(pr.select("protein", "group").iter_rows())) == [
        ("BRD4", "non_share"), ("BRD4", "share"), ("HSA", "share"), ("sEH", "non_share"), ("sEH", "share"),
    ]  # fmt: skip
    assert pr.columns == ["protein", "group", "point", "recall", "precision"]
    assert roc.columns == ["protein", "group", "point", "fpr", "tpr"]
    brd4 = roc.filter((pl.col("protein") == "BRD4") & (pl.col("group") == "share"))
    assert brd4["fpr"][0] == 0 and brd4["tpr"][-1] == 1


def test_curve_points_keep_both_ends():
    x, _ = curve_points(np.arange(1000.0), np.arange(1000.0), 50)
    assert len(x) <= 50 and x[0] == 0 and x[-1] == 999
