"""Kaggle's score on fixtures whose average precisions are worked out by hand (not by calling sklearn again); the
bootstrap's weighted AP against sklearn's own, and its intervals against a known population score; the streamed
scoring's mixed sample and memory budget, which must change no figure they are not meant to."""

import json
import tracemalloc
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

import stages.evaluate
from stages.evaluate import (
    EvaluateOutput,
    PairSample,
    average_precision,
    blocks_seen,
    bootstrap_intervals,
    curve_points,
    curves,
    evaluate,
    group_check,
    keep_for_scoring,
    sample_cutoff,
    score_predictions,
    scoring_rows,
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
    # the score averages 5 pairs, not 6: the metrics say so, beside the score
    assert metrics["pairs_scored"] == 5 and summary["pairs_without_positives"] == ["HSA/non_share"]


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
    labels = (rng.random(400) < 0.1 + 0.3 * scores).astype(np.int8)
    weights = rng.integers(0, 4, size=(5, 400)).astype(np.int32)  # bootstrap-like counts, zeros included
    shuffled = rng.permutation(400)  # each row its own molecule, numbered in another order than the rows
    pair = PairSample.of("BRD4", "share", labels, scores, shuffled)
    ours = average_precision(pair, weights[:, np.argsort(shuffled)])
    for row, value in zip(weights, ours, strict=True):
        assert value == pytest.approx(average_precision_score(labels, scores, sample_weight=row), abs=1e-12)
    negatives = weights * (1 - labels)  # weighs no positive
    assert np.isnan(average_precision(pair, negatives[:, np.argsort(shuffled)])).all()
    no_positive = PairSample.of("BRD4", "share", np.zeros(400, np.int8), scores, np.arange(400))
    assert np.isnan(average_precision(no_positive, weights)).all()
    # by hand: scores .9+ .8- .8+ .1-, weights 1, 2, 1, 5: thresholds .9 (tp 1, all 1), .8 (tp 2, all 4):
    # AP = 1/2 x 1 + 1/2 x 2/4 = 0.75
    tiny = PairSample.of("HSA", "share", np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.8, 0.1]), np.arange(4))
    assert average_precision(tiny, np.array([[1, 2, 1, 5]], dtype=np.int32))[0] == pytest.approx(0.75)


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
    # (equal to the last bit but for the mean of three equal APs, (a + a + a) / 3)
    same = bootstrap_intervals(copied, samples=40, seed=3)
    assert same == {
        k: pytest.approx(v, rel=1e-12) for k, v in bootstrap_intervals(brd4, samples=40, seed=3).items()
    }
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
    assert len(metrics) < 20 and all(isinstance(v, float) for k, v in metrics.items() if k != "pairs_scored")
    assert {"score", "share", "non_share", "ap_BRD4", "roc_auc_sEH", "ap_HSA_non_share"} <= set(metrics)
    assert not any("rows" in k or "rate" in k or "positives" in k for k in metrics)
    assert metrics["pairs_scored"] == 6 and summary["rows"] == n


def test_a_valid_part_with_one_group_only():
    frame = FIXTURE.filter(pl.col("group") == "share")
    metrics = score_predictions(frame)[0]
    assert metrics["score"] == pytest.approx((0.75 + 0.5 + 1.0) / 3) == metrics["share"]
    assert "non_share" not in metrics
    assert metrics["pairs_scored"] == 3


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


# ---------------------------------------------------------------------------------------------- bounded memory


def test_bootstrap_intervals_do_not_depend_on_the_memory_budget(monkeypatch):
    """Each bootstrap sample draws from its own seeded generator: computed all at once, a few at a time or one by
    one, the intervals are the same."""
    frame = valid_frame(3000, np.random.default_rng(2), positives=0.05)
    chunks: list[int] = []
    original = stages.evaluate.average_precision

    def spy(pair, counts):
        chunks.append(len(counts))
        return original(pair, counts)

    monkeypatch.setattr(stages.evaluate, "average_precision", spy)
    whole = bootstrap_intervals(frame, samples=60, seed=2, budget_bytes=1 << 30)
    assert set(chunks) == {60}  # one chunk of 60 samples (6 pairs)
    for budget in (200_000, 1):
        chunks.clear()
        assert bootstrap_intervals(frame, samples=60, seed=2, budget_bytes=budget) == whole
        assert len(chunks) >= 6 * 8 and sum(chunks) == 6 * 60, chunks  # at least 8 chunks, every sample once
    assert chunks == [1] * 6 * 60  # a budget below one sample's need: one at a time
    assert bootstrap_intervals(frame, samples=60, seed=3) != whole


def test_the_bootstrap_stays_under_its_memory_budget():
    """numpy's allocations (tracemalloc sees them) at their peak, the pairs' preparation included: under the
    budget, and more of it used when there is more (more samples at a time)."""
    frame = valid_frame(40_000, np.random.default_rng(4))
    peaks = {}
    for budget in (16 << 20, 64 << 20):
        tracemalloc.start()
        try:
            bootstrap_intervals(frame, samples=200, seed=1, budget_bytes=budget)
            peaks[budget] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peaks[budget] <= budget, (budget, peaks)
    assert peaks[64 << 20] > 2 * peaks[16 << 20], peaks


def test_scoring_batches_shrink_with_the_budget():
    # 1,027 features x 4 bytes x 3 copies = 12,324 bytes a row; half of 1 GiB (536,870,912) holds 43,563 rows
    assert scoring_rows(1027, 1 << 30) == 43_563
    assert scoring_rows(10, 1 << 30) == 200_000  # capped
    assert scoring_rows(16_384, 64 << 20) == 1_000  # floored


def scored_batch_rows(rng: np.random.Generator) -> pl.DataFrame:
    """What scored_batches yields: 600 share or non-share molecules and 300 mixed ones, three rows each, rows
    shuffled so that a molecule's rows lie apart; blocks_in_training as the split makes them, four rows wrong."""
    scored = valid_frame(600, rng, positives=0.1)
    mixed = valid_frame(300, rng, positives=0.1).with_columns(
        pl.col("molecule_key") + 10_000, pl.lit("mixed").alias("group")
    )
    frame = pl.concat([scored, mixed]).with_columns(
        pl.col("group")
        .replace_strict({"share": 3, "mixed": 1, "non_share": 0})
        .cast(pl.Int8)
        .alias("blocks_in_training")
    )
    # molecule 0 is non-share (rows 0-2), molecule 1 share (rows 3-5): one row uses a training block, three don't
    blocks = frame["blocks_in_training"].to_numpy().copy()
    blocks[0], blocks[3:6] = 1, 2
    frame = frame.with_columns(
        pl.Series("blocks_in_training", blocks, dtype=pl.Int8), pl.col("prob").cast(pl.Float32)
    )
    return frame.sample(fraction=1.0, shuffle=True, seed=0)


def in_batches(frame: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    return [frame.slice(start, size) for start in range(0, len(frame), size)]


def keep(frame: pl.DataFrame, size: int, mixed_sample: int, seed: int, scored: list[int] | None = None):
    """The stage's two passes over ``frame`` in batches of ``size``: the mixed sample's keys, then the rows kept,
    scored by their own ``prob`` (``scored`` counts the rows each call was given)."""
    keys = (
        batch.filter(pl.col("group") == "mixed")["molecule_key"].to_numpy()
        for batch in in_batches(frame, size)
    )
    cutoff = sample_cutoff(keys, mixed_sample, seed)

    def score(rows: pl.DataFrame) -> np.ndarray:
        if scored is not None:
            scored.append(len(rows))
        return rows["prob"].to_numpy()

    return keep_for_scoring(in_batches(frame, size), {"prob": score}, cutoff, seed)


def test_the_mixed_sample_is_seeded_takes_whole_molecules_and_does_not_depend_on_the_batches():
    frame = scored_batch_rows(np.random.default_rng(5))
    scored: list[int] = []
    kept = keep(frame, 1000, mixed_sample=50, seed=4, scored=scored)
    assert sum(scored) == len(kept.frame) == 1800 + 150  # the mixed rows outside the sample are never scored
    mixed = kept.frame.filter(pl.col("group") == "mixed")
    all_mixed = frame.filter(pl.col("group") == "mixed")
    assert mixed["molecule_key"].n_unique() == 50 == kept.mixed["sample_molecules"]
    assert len(mixed) == 150 == kept.mixed["sample_rows"]  # every row of a sampled molecule: 3 each
    assert kept.mixed["rows"] == 900 and kept.mixed["positives"] == all_mixed["binds"].sum()
    assert (kept.rows, kept.positives) == (len(frame), frame["binds"].sum())
    # every share and non-share row, in the order they came
    assert kept.frame.filter(pl.col("group") != "mixed").equals(
        frame.filter(pl.col("group") != "mixed").drop("blocks_in_training")
    )
    # the groups against training, summed over the batches
    assert kept.groups_against_training == {
        "share_rows_with_a_block_not_in_training": 3,
        "non_share_rows_with_a_block_in_training": 1,
    }
    # the same rows whatever the batches (a batch of 7 is smaller than a molecule's rows apart)
    for size in (7, 64, 5000):
        assert keep(frame, size, 50, 4).frame.equals(kept.frame), size
    other = keep(frame, 1000, 50, 5).frame.filter(pl.col("group") == "mixed")
    assert set(other["molecule_key"]) != set(mixed["molecule_key"])  # seeded
    first = set(all_mixed["molecule_key"].unique(maintain_order=True).head(50))
    assert set(mixed["molecule_key"]) != first  # drawn, not the first 50 to come
    everything = keep(frame, 1000, 10_000, 4)
    assert everything.frame.filter(pl.col("group") == "mixed").equals(all_mixed.drop("blocks_in_training"))
    none = keep(frame, 1000, 0, 4)
    assert none.mixed == {
        "sample_molecules": 0,
        "sample_rows": 0,
        "rows": 900,
        "positives": kept.mixed["positives"],
    }
    assert "mixed" not in set(none.frame["group"])


def test_score_share_and_non_share_do_not_depend_on_the_mixed_sample():
    frame = scored_batch_rows(np.random.default_rng(6))
    metrics = {k: score_predictions(keep(frame, 500, k, 0).frame)[0] for k in (0, 10, 10_000)}
    assert "mixed" not in metrics[0] and metrics[10]["mixed"] != metrics[10_000]["mixed"]
    for name in ("score", "share", "non_share", "pairs_scored", "ap_BRD4", "roc_auc_sEH", "ap_HSA_non_share"):
        assert metrics[0][name] == metrics[10][name] == metrics[10_000][name], name
    assert metrics[10_000] == score_predictions(frame)[0]  # every mixed molecule: as scoring every row


def test_the_stage_samples_the_mixed_molecules_counts_the_pairs_and_ignores_the_budget(
    mini_run, tmp_path: Path
):
    """Through the stage's own function on the mini run: the mixed rows counted against the split's own summary,
    the score the same with or without them, and the same bytes for two memory budgets."""
    written = {}
    for name, sample, memory in (("none", 0, 64), ("all", 10**6, 64), ("all, more memory", 10**6, 4096)):
        params = mini_run.params.evaluate.model_copy(update={"mixed_sample": sample})
        out = EvaluateOutput(
            tmp_path / name / "metrics.json", tmp_path / name / "summary.json", tmp_path / name / "plots"
        )
        evaluate(
            params,
            mini_run.split / "train",
            mini_run.split / "valid",
            mini_run.features,
            mini_run.models,
            out,
            memory,
        )
        written[name] = [out.metrics.read_bytes(), out.summary.read_bytes(),
                         *(path.read_bytes() for path in sorted(out.plots.iterdir()))]  # fmt: skip
    assert written["all"] == written["all, more memory"]
    split = json.loads((mini_run.split / "summary.json").read_text())
    metrics, summary = (json.loads(written["all"][i]) for i in (0, 1))
    mixed_rows = split["valid_groups"]["mixed"]["rows"]
    assert (
        mixed_rows > 0
        and summary["mixed_sample"]["rows"] == summary["mixed_sample"]["sample_rows"] == mixed_rows
    )
    assert summary["rows"] == split["valid"]["rows"]
    without = json.loads(written["none"][0])
    assert "mixed" in metrics and "mixed" not in without
    assert {k: v for k, v in metrics.items() if k != "mixed"} == without
    assert metrics["pairs_scored"] == sum(k.startswith("ap_") and k.count("_") >= 2 for k in metrics)
