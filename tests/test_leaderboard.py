"""bench/leaderboard.py: Kaggle's score against average precisions worked out by hand, its refusals, and the table."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import yaml

from bench import leaderboard
from bench.leaderboard import LeaderboardError, Score, SeedResult, score_submission

# (protein, group, label, prediction) per row. Average precision as Kaggle computes it (scikit-learn's): walk the
# predictions from the highest down, one step per distinct prediction (tied rows together), and add (recall gained
# at the step) x (precision at the step).
ROWS = [
    # BRD4/share: ranks 1 (hit), 2, 3 (hit), 4: 1/2 x 1/1 + 1/2 x 2/3 = 5/6
    ("BRD4", "share", 1, 0.9), ("BRD4", "share", 0, 0.8), ("BRD4", "share", 1, 0.7), ("BRD4", "share", 0, 0.1),
    # BRD4/non_share: the one positive second: 1 x 1/2 = 1/2
    ("BRD4", "non_share", 0, 0.9), ("BRD4", "non_share", 1, 0.5), ("BRD4", "non_share", 0, 0.1),
    # HSA/share: the one positive last of three: 1 x 1/3 = 1/3
    ("HSA", "share", 0, 0.3), ("HSA", "share", 0, 0.2), ("HSA", "share", 1, 0.1),
    # HSA/non_share: no positive: no average precision, left out of the mean
    ("HSA", "non_share", 0, 0.4), ("HSA", "non_share", 0, 0.3),
    # sEH/share: ranks 1 (hit, 0.6), 2 (0.4), 3 (hit, 0.2): 1/2 x 1/1 + 1/2 x 2/3 = 5/6
    ("sEH", "share", 1, 0.2), ("sEH", "share", 1, 0.6), ("sEH", "share", 0, 0.4),
    # sEH/non_share: the positive tied with a negative at the top: one step, recall 1 at precision 1/2 = 1/2
    ("sEH", "non_share", 1, 0.5), ("sEH", "non_share", 0, 0.5), ("sEH", "non_share", 0, 0.2),
    ("sEH", "non_share", 0, 0.1),
    # mixed: in neither of Kaggle's groups; scored it would change sEH's figures
    ("sEH", "mixed", 1, 0.0), ("sEH", "mixed", 0, 0.9),
]  # fmt: skip
HAND_AP = {"BRD4/share": 5 / 6, "BRD4/non_share": 1 / 2, "HSA/share": 1 / 3, "HSA/non_share": None,
           "sEH/share": 5 / 6, "sEH/non_share": 1 / 2}  # fmt: skip
HAND_SCORE = (5 / 6 + 1 / 2 + 1 / 3 + 5 / 6 + 1 / 2) / 5  # = 0.6: the mean over the 5 pairs with a positive


@pytest.fixture
def fixture() -> tuple[pl.DataFrame, pl.DataFrame]:
    ids = list(range(100, 100 + len(ROWS)))
    labels = pl.DataFrame({"id": ids, "protein_name": [r[0] for r in ROWS], "binds": [r[2] for r in ROWS],
                           "group": [r[1] for r in ROWS]})  # fmt: skip
    submission = pl.DataFrame({"id": ids, "binds": [r[3] for r in ROWS]})
    return submission.sample(fraction=1.0, shuffle=True, seed=7), labels  # rows matched by id, not order


def test_kaggle_score_against_average_precisions_worked_out_by_hand(fixture):
    score = score_submission(*fixture)
    assert score.pairs.keys() == HAND_AP.keys()
    for name, ap in HAND_AP.items():
        assert score.pairs[name]["ap"] == (None if ap is None else pytest.approx(ap, abs=1e-12)), name
    assert score.score == pytest.approx(HAND_SCORE, abs=1e-12)
    assert round(HAND_SCORE, 12) == 0.6
    assert score.pairs_scored == 5 and score.pairs_without_positives == ["HSA/non_share"]
    assert score.unscored_rows == 2
    assert score.pairs["sEH/non_share"] == {"rows": 4, "positives": 1, "ap": pytest.approx(0.5)}


def test_a_better_ranking_scores_higher_and_a_perfect_one_scores_1(fixture):
    submission, labels = fixture
    perfect = labels.select("id", pl.col("binds").cast(pl.Float64))
    assert score_submission(perfect, labels).score == pytest.approx(1.0)
    reversed_ = labels.select("id", (1 - pl.col("binds")).cast(pl.Float64).alias("binds"))
    assert score_submission(reversed_, labels).score < score_submission(submission, labels).score


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s.head(len(s) - 1), r"sub\.csv: 1 of the 21 labelled ids have no row"),
        (
            lambda s: pl.concat([s, pl.DataFrame({"id": [1], "binds": [0.5]})]),
            r"sub\.csv: 1 rows with an id that",
        ),
        (lambda s: pl.concat([s, s.head(1)]), r"sub\.csv: column 'id' repeats ids"),
        (lambda s: s.rename({"binds": "prob"}), r"sub\.csv: no column 'binds'"),
        (
            lambda s: s.with_columns(pl.lit(None, pl.Float64).alias("binds")),
            r"sub\.csv: column 'binds' must be",
        ),
    ],
)
def test_a_submission_that_kaggle_would_refuse_is_one_clear_error(fixture, change, message):
    submission, labels = fixture
    with pytest.raises(LeaderboardError, match=message):
        score_submission(change(submission), labels, "sub.csv")


def test_the_score_command_prints_the_score_and_every_pair(fixture, tmp_path, capsys):
    submission, labels = fixture
    submission.write_csv(tmp_path / "submission.csv")
    labels.write_parquet(tmp_path / "labels.parquet")
    assert (
        leaderboard.main(["score", str(tmp_path / "submission.csv"), str(tmp_path / "labels.parquet")]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("score 0.600 (mean over 5 pairs with a positive)")
    assert "BRD4/share       AP 0.833  (2 positives in 4 rows)" in out
    assert "HSA/non_share    AP n/a" in out and "left out, no positive: HSA/non_share" in out
    labels.drop("group").write_parquet(tmp_path / "bad.parquet")
    assert leaderboard.main(["score", str(tmp_path / "submission.csv"), str(tmp_path / "bad.parquet")]) == 1
    assert "bad.parquet: no column 'group'" in capsys.readouterr().err


def _score(value: float | None) -> Score:
    return Score(score=value, pairs_scored=6, pairs_without_positives=[], pairs={}, unscored_rows=0)


def test_results_become_a_markdown_table_with_the_coverage_of_both_models():
    results = [
        SeedResult(
            2024, _score(0.25), _score(0.41), 0.28, [0.2, 0.3], 1.0, None, [0.35, 0.47], 0.4, [0.3, 0.5]
        ),
        SeedResult(
            1,
            _score(0.1996),
            _score(0.3),
            0.25,
            [0.2, 0.3],
            1.0,
            [0.15, 0.25],
            [0.22, 0.38],
            0.35,
            [0.31, 0.45],
        ),
        SeedResult(2, _score(None), _score(0.5), None, None, 1.0),
    ]
    # seed 2024: 0.41 in [0.3, 0.5], 0.25 in [0.2, 0.3]; seed 1: 0.30 below 0.31, 0.1996 below 0.2
    assert leaderboard.table(results) == "\n".join([
        "| seed | split model LB [95%] | final model LB [95%] | evaluate score [95%] | leaderboard estimate [95%] "
        "| estimate covers final LB | score covers split LB |",
        "|---|---|---|---|---|---|---|",
        "| 2024 | 0.250 | 0.410 [0.350, 0.470] | 0.280 [0.200, 0.300] | 0.400 [0.300, 0.500] | yes | yes |",
        "| 1 | 0.200 [0.150, 0.250] | 0.300 [0.220, 0.380] | 0.250 [0.200, 0.300] | 0.350 [0.310, 0.450] | no | no |",
        "| 2 | n/a | 0.500 | n/a | n/a | n/a | n/a |",
    ])  # fmt: skip
    data = leaderboard.results_json(results, {"commit": "abc"})
    assert [(s["estimate_covers_final_lb"], s["score_covers_split_lb"]) for s in data["seeds"]] == [
        (True, True),
        (False, False),
        (None, None),
    ]


def test_the_leaderboards_own_interval_holds_its_score_and_is_a_point_for_a_perfect_ranking(fixture):
    _, labels = fixture
    perfect = labels.select("id", pl.col("binds").cast(pl.Float64))
    assert leaderboard.leaderboard_interval(perfect, labels, samples=50) == [1.0, 1.0]
    rng = np.random.default_rng(3)
    noisy = labels.select("id", pl.Series("binds", rng.random(len(labels))))  # a ranking at random
    low, high = leaderboard.leaderboard_interval(noisy, labels, samples=300)
    assert low <= leaderboard.score_submission(noisy, labels).score <= high and high - low > 0.05


def test_settings_are_set_in_the_clone_params(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("generate:\n  seed: 2024\n  rows: 5\nxgb:\n  max_depth: 6\n")
    leaderboard.set_params(path, [(["generate", "seed"], 1), leaderboard.parse_setting("xgb.max_depth=8")])
    assert path.read_text() == "generate:\n  seed: 1\n  rows: 5\nxgb:\n  max_depth: 8\n"


def test_the_layout_is_checked_against_the_stages_outs():
    from tests.conftest import ROOT

    dvc_yaml = {"stages": {"train": {"outs": ["models/split", {"models/final": {"cache": True}}]},
                           "featurize": {"foreach": {}, "do": {"outs": ["data/features/${key}"]}},
                           "evaluate": {"outs": [{"metrics/evaluate.json": {"cache": False}}]}}}  # fmt: skip
    paths = ("models/split", "models/final/model.json", "models", "metrics/evaluate.json", "data/features/test",
             "data/submission.csv")  # fmt: skip
    assert leaderboard.undeclared(dvc_yaml, paths) == ["data/features/test", "data/submission.csv"]
    real = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    assert leaderboard.undeclared(real, leaderboard.LAYOUT) == []
