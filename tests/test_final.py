"""The final model (every labelled row, what predict uses) against the split model (what evaluate scores), and the
early-stopping draw's independence from the split's, on the in-process mini pipeline's features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import xgboost as xgb

from stages import final, predict, split
from stages.fitting import train_model
from stages.io import write_parquet
from stages.model import load_model
from stages.params import Params
from stages.train_rows import EARLY_STOPPING_STREAM, inner_rule, part_of
from tests.conftest import MiniRun
from tests.test_train import with_train


def booster_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.glob("model*.json"))}


def with_valid_labels_flipped(mini_run: MiniRun, target: Path) -> Path:
    """A copy of featurize's output whose rows in the split's valid part have every label flipped (0 <-> 1); the
    other rows, and the molecules' features, as they were."""
    shutil.copytree(mini_run.features, target)
    valid_ids = pl.read_parquet(mini_run.split / "valid")["id"]
    for shard in sorted((target / "rows").glob("*.parquet")):
        rows = pl.read_parquet(shard)
        flipped = (
            pl.when(pl.col("id").is_in(valid_ids.implode())).then(1 - pl.col("binds")).otherwise("binds")
        )
        write_parquet(rows.with_columns(flipped.cast(rows["binds"].dtype).alias("binds")), shard)
    return target


def fit_both(params: Params, features: Path, out: Path) -> tuple[Path, Path, Path]:
    """split, the split model and the final model from ``features``: (split dir, split model, final model)."""
    parts = split.SplitOutput.under(out / "split")
    split.split_rows(features / "rows", parts, params.split)
    train_model(params, out / "split" / "train", features, out / "split-model", out / "live")
    final.fit_final(params, features / "rows", features, out / "split-model", out / "final-model")
    return out / "split", out / "split-model", out / "final-model"


def test_the_final_model_learns_the_valid_labels_and_the_split_model_does_not(mini_run: MiniRun, tmp_path):
    params = with_train(mini_run.params, model="per_protein")
    flipped = with_valid_labels_flipped(mini_run, tmp_path / "flipped-features")
    n_valid = len(pl.read_parquet(mini_run.split / "valid"))
    assert n_valid > 0
    split_a, split_model_a, final_a = fit_both(params, mini_run.features, tmp_path / "a")
    split_b, split_model_b, final_b = fit_both(params, flipped, tmp_path / "b")

    # the split's train part and the split model do not see the valid labels: byte for byte the same
    assert pl.read_parquet(split_a / "train").equals(pl.read_parquet(split_b / "train"))
    assert booster_bytes(split_model_a) == booster_bytes(split_model_b)
    # the final model does: other trees, another submission
    assert booster_bytes(final_a) != booster_bytes(final_b)
    submission_a = predict.predict_file(mini_run.test_features, mini_run.test_rejects, final_a, 1000)
    submission_b = predict.predict_file(mini_run.test_features, mini_run.test_rejects, final_b, 1000)
    assert submission_a["id"].equals(submission_b["id"])
    assert not np.allclose(submission_a["binds"].to_numpy(), submission_b["binds"].to_numpy())

    # the manifests say which rows each saw, counted here from the files
    all_rows = pl.read_parquet(mini_run.features / "rows")
    manifest = load_model(final_a).manifest
    assert manifest["fit"]["model"] == "final" and manifest["fit"]["labelled_rows"] == len(all_rows)
    assert sum(manifest["train_rows"].values()) == len(all_rows)
    split_manifest = load_model(split_model_a).manifest
    assert split_manifest["fit"]["model"] == "split"
    assert split_manifest["fit"]["labelled_rows"] == len(pl.read_parquet(split_a / "train"))
    # the same rounds as the split model kept, for every booster
    for protein in ("BRD4", "HSA", "sEH"):
        rounds = xgb.Booster(model_file=str(final_a / f"model-{protein}.json")).num_boosted_rounds()
        assert rounds == split_manifest["best_iteration"][protein] + 1 == params.xgb.n_estimators


def test_the_final_fit_boosts_the_rounds_early_stopping_kept_in_the_split_model(mini_run: MiniRun, tmp_path):
    stopping = mini_run.params.train.early_stopping.model_copy(
        update={"rounds": 3, "held_out_building_blocks": 0.2, "valid_fraction": 0.2}
    )
    params = with_train(mini_run.params, model="joint", early_stopping=stopping)
    params = params.model_copy(update={"xgb": params.xgb.model_copy(update={"n_estimators": 200})})
    train_model(
        params, mini_run.split / "train", mini_run.features, tmp_path / "split-model", tmp_path / "live"
    )
    (best,) = load_model(tmp_path / "split-model").manifest["best_iteration"].values()
    assert best + 1 < 200  # early stopping stopped
    final.fit_final(params, mini_run.features / "rows", mini_run.features, tmp_path / "split-model",
                    tmp_path / "final")  # fmt: skip
    booster = xgb.Booster(model_file=str(tmp_path / "final" / "model.json"))
    assert booster.num_boosted_rounds() == best + 1


def test_without_the_final_fit_the_submission_is_the_split_models(mini_run: MiniRun, tmp_path, capsys):
    params = with_train(mini_run.params, final_fit=False)
    final.fit_final(
        params, mini_run.features / "rows", mini_run.features, mini_run.models, tmp_path / "final"
    )
    assert booster_bytes(tmp_path / "final") == booster_bytes(mini_run.models)
    fit = json.loads((tmp_path / "final" / "manifest.json").read_text())["fit"]
    assert fit["model"] == "split" and fit["final_fit"] is False
    submission = predict.predict_file(mini_run.test_features, mini_run.test_rejects, tmp_path / "final", 1000)
    assert submission.equals(pl.read_csv(mini_run.submission))  # mini_run's submission is the split model's
    out = tmp_path / "submission.csv"
    assert predict.main(["--models", str(tmp_path / "final"), "--features", str(mini_run.test_features),
                         "--rejects", str(mini_run.test_rejects), "--output", str(out)]) == 0  # fmt: skip
    logged = capsys.readouterr().err  # predict's log line says which model scored
    assert "with the split model" in logged and "train.final_fit is false" in logged, logged


def test_early_stopping_with_the_split_seed_still_draws_an_inner_part_and_stops(mini_run: MiniRun, tmp_path):
    """Both draws hash building blocks with a seed and nest their fractions: on the split's own stream, an inner
    fraction below the split's would fall entirely inside what the split already held out. On its own stream,
    the inner part takes about its fractions of the training rows whatever the seeds."""
    seed = mini_run.params.split.seed
    stopping = mini_run.params.train.early_stopping.model_copy(
        update={"rounds": 3, "held_out_building_blocks": 0.05, "valid_fraction": 0.1}
    )
    assert stopping.held_out_building_blocks < mini_run.params.split.held_out_building_blocks
    params = with_train(mini_run.params, model="joint", seed=seed, early_stopping=stopping)
    params = params.model_copy(update={"xgb": params.xgb.model_copy(update={"n_estimators": 300})})
    rows = pl.read_parquet(mini_run.split / "train")

    rule = inner_rule(params)
    assert rule.stream == EARLY_STOPPING_STREAM and rule.seed == seed
    on_the_split_stream = split.HoldOutRule(rule.held_out_building_blocks, rule.valid_fraction, seed)
    assert (part_of(rows, on_the_split_stream) == "fit").all()  # the bug: nothing left to stop on
    parts = part_of(rows, rule)
    held = (parts != "fit").mean()
    expected = 1 - (1 - 0.05) ** 3 * (1 - 0.1)  # some block held out, or drawn at random: ~0.23
    assert abs(held - expected) < 0.08, held
    assert {"stop_share", "stop_unseen"} <= set(parts)

    result = train_model(
        params, mini_run.split / "train", mini_run.features, tmp_path / "m", tmp_path / "live"
    )
    (rounds,) = result["rounds"].values()
    assert rounds < 300  # early stopping stopped boosting


def test_evaluate_refuses_the_final_model(mini_run: MiniRun, tmp_path, capsys):
    """The final model saw the valid part's labels: scoring it there would be no estimate at all."""
    from stages import evaluate
    from stages.cli import setup_logging

    setup_logging()  # log to this test's captured stderr, not to a stream an earlier test's capture closed
    params = with_train(mini_run.params, model="joint")
    final.fit_final(
        params, mini_run.features / "rows", mini_run.features, mini_run.models, tmp_path / "final"
    )
    code = evaluate.main(["--train-rows", str(mini_run.split / "train"), "--valid-rows", str(mini_run.split / "valid"),
                          "--features", str(mini_run.features), "--models", str(tmp_path / "final"), "--half-model", str(tmp_path / "half"),
                          "--metrics", str(tmp_path / "m.json"), "--summary", str(tmp_path / "s.json"),
                          "--plots", str(tmp_path / "plots")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "the final model was fit on every labelled row" in err and "Traceback" not in err, (
        err
    )
    assert not (tmp_path / "m.json").exists()
