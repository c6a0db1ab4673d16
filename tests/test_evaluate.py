"""Kaggle's score on fixtures whose average precisions are worked out by hand (not by calling sklearn again); the
bootstrap's weighted AP against sklearn's own, and its intervals against a known population score."""

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from stages.evaluate import (
    blocks_seen,
    bootstrap_intervals,
    curve_points,
    curves,
    group_check,
    score_predictions,
    weighted_average_precision,
)


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
    assert summary["pairs"]["HSA/non_share"] == {"rows": 2, "positives": 0, "positive_rate": 0.0, "ap": None}


def test_mixed_molecules_are_reported_apart_and_left_out_of_the_score():
    mixed = pairs(("BRD4", "mixed", [1, 0], [0.1, 0.9]), ("HSA", "mixed", [0, 1, 1], [0.3, 0.2, 0.1]))
    metrics, summary = score_predictions(pl.concat([FIXTURE, mixed]))
    assert metrics["score"] == pytest.approx((0.75 + 0.5 + 0.5 + 1.0 + 0.5) / 5)  # as without the mixed rows
    # BRD4/mixed: the positive at rank 2: 1/2; HSA/mixed: positives at ranks 2 and 3: (1/2 + 2/3) / 2
    assert metrics["mixed"] == pytest.approx((0.5 + (1 / 2 + 2 / 3) / 2) / 2)
    assert summary["pairs"]["HSA/mixed"]["ap"] == pytest.approx(7 / 12)
    assert not any(key.endswith("_mixed") for key in metrics)  # per-pair mixed figures stay in the summary
    assert metrics["ap_BRD4"] == pytest.approx(0.5)  # per protein: over the share and non-share rows only
    assert summary["proteins"]["BRD4"]["rows"] == 7


def test_the_summary_reports_every_number_of_unseen_blocks_and_flags_pairs_with_few_positives():
    frame = FIXTURE.with_columns(
        pl.when(pl.col("group") == "share").then(0).otherwise(3).cast(pl.Int8).alias("unseen_blocks")
    )
    mixed = pairs(("sEH", "mixed", [1, 0, 0], [0.2, 0.9, 0.1])).with_columns(
        pl.Series("unseen_blocks", [1, 2, 2], dtype=pl.Int8)
    )
    _, summary = score_predictions(pl.concat([frame, mixed]), min_positives=2)
    by_unseen = summary["by_unseen_blocks"]
    assert sorted(by_unseen) == ["0", "1", "2", "3"]
    assert by_unseen["1"]["sEH"] == {"rows": 1, "positives": 1, "positive_rate": 1.0, "ap": 1.0}
    assert by_unseen["2"]["sEH"] == {"rows": 2, "positives": 0, "positive_rate": 0.0, "ap": None}
    assert by_unseen["0"]["BRD4"]["ap"] == pytest.approx(0.75)
    # pairs of the score with fewer than 2 positives (mixed pairs are not in the score, so not flagged)
    assert summary["pairs_with_few_positives"] == [
        "BRD4/non_share", "HSA/non_share", "HSA/share", "sEH/non_share",
    ]  # fmt: skip


def test_weighted_average_precision_is_sklearns_with_sample_weights():
    rng = np.random.default_rng(3)
    scores = np.round(rng.random(400), 2)  # ties: thresholds are distinct scores
    labels = (rng.random(400) < 0.1 + 0.3 * scores).astype(float)
    order = np.argsort(-scores, kind="stable")
    scores, labels = scores[order], labels[order]
    last = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    weights = rng.integers(0, 4, size=(5, 400)).astype(float)  # bootstrap-like counts, zeros included
    ours = weighted_average_precision(labels, weights, last)
    for row, value in zip(weights, ours, strict=True):
        assert value == pytest.approx(average_precision_score(labels, scores, sample_weight=row), abs=1e-12)
    assert np.isnan(weighted_average_precision(labels, weights * (1 - labels), last)).all()  # no positive


def valid_frame(n_molecules: int, rng: np.random.Generator, positives: float = 0.05) -> pl.DataFrame:
    """Molecules with one row per protein, half share and half non-share, scores informative."""
    labels = (rng.random((n_molecules, 3)) < positives).astype(np.int8)
    scores = labels * rng.normal(1.0, 1.0, labels.shape) + rng.normal(0.0, 1.0, labels.shape)
    return pl.DataFrame(
        {
            "molecule_key": np.repeat(np.arange(n_molecules), 3),
            "protein_name": ["BRD4", "HSA", "sEH"] * n_molecules,
            "group": np.repeat(np.where(np.arange(n_molecules) % 2, "share", "non_share"), 3),
            "binds": labels.ravel(),
            "prob": scores.ravel(),
        }
    )


def test_bootstrap_intervals_cover_the_population_score_about_95_percent_of_the_time():
    """A known answer: the score on a population of 200,000 molecules. Samples of 2,000 molecules drawn from it
    give intervals that should hold that score in about 95% of the samples (AP's small-sample bias lowers it a
    little)."""
    rng = np.random.default_rng(0)
    population = valid_frame(200_000, rng)
    truth = score_predictions(population)[0]
    hits = {"score": 0, "share": 0, "non_share": 0}
    draws = 120
    for k in range(draws):
        chosen = np.sort(rng.choice(200_000, 2_000, replace=False))
        sample = population.filter(pl.col("molecule_key").is_in(chosen))
        interval = bootstrap_intervals(sample, samples=200, seed=k)
        for name in hits:
            low, high = interval[name]
            hits[name] += low <= truth[name] <= high
    coverage = {name: count / draws for name, count in hits.items()}
    assert all(0.85 <= value <= 0.99 for value in coverage.values()), coverage


def test_bootstrap_is_seeded_resamples_whole_molecules_and_leaves_mixed_out():
    rng = np.random.default_rng(1)
    frame = valid_frame(400, rng, positives=0.1)
    mixed = frame.head(30).with_columns(pl.lit("mixed").alias("group"), pl.lit(1.0).alias("prob"))
    a = bootstrap_intervals(frame, samples=50, seed=5)
    assert a == bootstrap_intervals(
        pl.concat([frame, mixed]), samples=50, seed=5
    )  # mixed rows change nothing
    assert a != bootstrap_intervals(frame, samples=50, seed=6)
    point = score_predictions(frame)[0]
    for name in ("score", "share", "non_share"):
        assert a[name][0] < point[name] < a[name][1]
    # Resampling molecules, not rows: give every protein's row of a molecule the BRD4 row's label and score; then
    # each sample's three APs are equal (the same molecules, each with its three rows), and the intervals are
    # exactly those of the BRD4 rows alone, drawn with the same seed.
    brd4 = frame.filter(pl.col("protein_name") == "BRD4")
    copied = pl.concat([brd4.with_columns(pl.lit(p).alias("protein_name")) for p in ("BRD4", "HSA", "sEH")])
    assert bootstrap_intervals(copied, samples=40, seed=3) == bootstrap_intervals(brd4, samples=40, seed=3)
    assert bootstrap_intervals(frame, samples=0, seed=0) == {}


def test_blocks_seen_and_the_group_check_against_the_training_blocks():
    rows = pl.DataFrame({"bb1_key": [1, 1, 9, 9], "bb2_key": [2, 2, 8, 2], "bb3_key": [3, 7, 8, 3]})
    seen = blocks_seen(rows, np.array([1, 2, 3]))
    assert seen.tolist() == [3, 2, 0, 2]
    frame = pl.DataFrame(
        {"group": ["share", "share", "non_share", "mixed"], "blocks_in_training": seen.astype(np.int8)}
    )
    assert group_check(frame) == {
        "share_rows_with_a_block_not_in_training": 1,
        "non_share_rows_with_a_block_in_training": 0,
    }


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
