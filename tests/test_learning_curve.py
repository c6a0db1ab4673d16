"""The leaderboard estimate: the half model's rows and rounds, the learning curve's projection and the interval's
leaderboard noise, against figures worked out by hand; evaluate's estimate through its main() on the mini run."""

from __future__ import annotations

import json
import math

import numpy as np
import polars as pl
import pytest

from stages import evaluate, learning_curve
from stages.dataset import KEY
from stages.evaluate import (
    HALF_PROB,
    Projection,
    leaderboard_point,
    learning_curve_summary,
    prediction_interval,
)
from stages.model import load_model
from stages.train import train_model
from tests.conftest import MiniRun
from tests.test_train import with_train


def test_the_projection_is_linear_in_log_rows_and_clipped():
    # final 800 rows is two doublings past split 200, which is one doubling past half 100: factor 2
    assert Projection(100, 200, 800).factor == pytest.approx(2.0)
    assert Projection(100, 200, 800).of(0.5, 0.4) == pytest.approx(0.7)  # 0.5 + 2 x 0.1
    assert Projection(100, 200, 800).of(0.9, 0.5) == 1.0  # 0.9 + 2 x 0.4 = 1.7, clipped
    assert Projection(100, 200, 800).of(0.1, 0.3) == 0.0  # 0.1 - 2 x 0.2 = -0.3, clipped
    assert Projection(100, 400, 800).factor == pytest.approx(0.5)  # one doubling past two
    assert Projection(100, 200, 200).factor == 0.0  # the final model is the split model: nothing to project
    assert Projection(100, 200, 800).of(None, 0.4) is None


def frame(*pairs: tuple[str, str, list[int], list[float], list[float]]) -> pl.DataFrame:
    return pl.concat(
        pl.DataFrame(
            {
                "protein_name": [p] * len(y),
                "group": [g] * len(y),
                "binds": y,
                "prob": s,
                HALF_PROB: h,
                KEY: list(range(len(y))),
            }
        )
        for p, g, y, s, h in pairs
    )


def test_the_leaderboard_point_projects_each_pair_and_averages():
    scored = frame(
        # split: ranks 1 and 3 -> (1/1 + 2/3) / 2 = 0.8333; half: ranks 2 and 3 -> (1/2 + 2/3) / 2 = 0.5833
        ("BRD4", "share", [1, 0, 0, 1], [0.9, 0.8, 0.1, 0.7], [0.8, 0.9, 0.1, 0.7]),
        # both: rank 2 -> 0.5
        ("HSA", "non_share", [0, 1, 0], [0.3, 0.2, 0.1], [0.3, 0.2, 0.1]),
    )
    # factor 0.5: BRD4/share 0.8333 + 0.5 x 0.25 = 0.9583, HSA/non_share 0.5: mean 0.7292
    point = leaderboard_point(learning_curve_summary(scored, Projection(100, 400, 800)), {"score": 2 / 3})
    assert point == pytest.approx((0.8333333 + 0.125 + 0.5) / 2, abs=1e-6)
    assert leaderboard_point(None, {"score": 2 / 3}) == pytest.approx(2 / 3)  # no half model: the score


def test_the_prediction_interval_adds_a_leaderboards_own_noise():
    # a fixed estimate plus the spread of the score's draws about their mean: score = 0, 0.001, ..., 0.999
    # (mean 0.4995); numpy's 2.5th / 97.5th percentiles of it are 0.024975 and 0.974025
    score = np.arange(1000) / 1000
    low, high = prediction_interval(np.full(1000, 0.5), score, seed=0)
    assert low == pytest.approx(0.5 + 0.024975 - 0.4995)
    assert high == pytest.approx(0.5 + 0.974025 - 0.4995)
    # no noise in the score: the estimate's own percentiles
    estimate = np.linspace(0.2, 0.6, 1001)
    assert prediction_interval(estimate, np.full(1001, 0.3), seed=0) == pytest.approx(
        list(np.percentile(estimate, [2.5, 97.5]))
    )
    low, high = prediction_interval(estimate, np.linspace(0.4, 0.6, 1001), seed=0)
    assert high - low > 0.95 * (0.6 - 0.2)  # independent errors add: wider than the estimate's 0.38 alone
    assert prediction_interval(np.full(3, np.nan), np.full(3, np.nan), seed=0) is None


def test_the_half_model_fits_half_the_molecules_for_the_split_models_rounds(mini_run: MiniRun, tmp_path):
    params = with_train(mini_run.params, model="per_protein")
    train_model(params, mini_run.split / "train", mini_run.features, tmp_path / "split", None)
    fit = learning_curve.fit_half(
        params, mini_run.split / "train", mini_run.features, tmp_path / "split", tmp_path / "half"
    )
    rows = pl.read_parquet(mini_run.split / "train")
    half = rows.filter(pl.Series(learning_curve.in_half(rows[KEY].to_numpy(), params.train.seed)))
    assert fit["model"] == "half" and fit["labelled_rows"] == len(half)
    assert 0.4 < len(half) / len(rows) < 0.6
    kept = set(half[KEY].to_list())
    assert len(rows.filter(pl.col(KEY).is_in(list(kept)))) == len(half)  # every row of a drawn molecule
    split_model, half_model = load_model(tmp_path / "split"), load_model(tmp_path / "half")
    for key, booster in half_model.boosters.items():
        assert booster.num_boosted_rounds() == split_model.manifest["best_iteration"][key] + 1
    assert not list(tmp_path.glob("half-rows*"))  # the scratch rows are gone


def test_without_the_final_fit_there_is_no_half_model_and_the_estimate_is_the_score(
    mini_run: MiniRun, tmp_path
):
    params = with_train(mini_run.params, final_fit=False)
    fit = learning_curve.fit_half(
        params, mini_run.split / "train", mini_run.features, mini_run.models, tmp_path / "half"
    )
    assert "skipped" in fit and not list((tmp_path / "half").glob("model*.json"))
    args = ["--train-rows", str(mini_run.split / "train"), "--valid-rows", str(mini_run.split / "valid"),
            "--features", str(mini_run.features), "--models", str(mini_run.models),
            "--half-model", str(tmp_path / "half"), "--metrics", str(tmp_path / "m.json"),
            "--summary", str(tmp_path / "s.json"), "--plots", str(tmp_path / "plots")]  # fmt: skip
    (tmp_path / "params.yaml").write_text(json.dumps(params.model_dump(mode="json")))
    assert evaluate.main([*args, "--params", str(tmp_path / "params.yaml")]) == 0
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["leaderboard_estimate"] == metrics["score"]
    summary = json.loads((tmp_path / "s.json").read_text())
    assert "learning_curve" not in summary
    low, high = summary["bootstrap"]["leaderboard_estimate"]
    score_low, score_high = summary["bootstrap"]["score"]
    assert low <= score_low and high >= score_high  # the leaderboard's own noise widens the score's interval
    assert not math.isnan(low)
