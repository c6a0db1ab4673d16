"""Model forms, negative sampling and early stopping, on the in-process mini pipeline's split and features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import xgboost as xgb

from stages.fitting import train_model
from stages.model import load_model
from stages.molecules import MoleculeStore
from stages.params import EarlyStopping, Params, load_params
from stages.train_rows import LabelCounts, negative_rates, sample_negatives
from tests.conftest import ROOT, MiniRun


def with_train(params: Params, **changes) -> Params:
    train = params.train.model_copy(update=changes)
    return params.model_copy(update={"train": train})


def quick_stopping(params: Params) -> EarlyStopping:
    """``params``' early stopping with a patience of 3 rounds and inner parts of 20% (held-out building blocks, and
    the other molecules)."""
    return params.train.early_stopping.model_copy(
        update={"rounds": 3, "held_out_building_blocks": 0.2, "valid_fraction": 0.2}
    )


def independent_design(rows: pl.DataFrame, mini_run: MiniRun, models: Path) -> np.ndarray:
    """The per-protein design matrix built here, not by stages.model: the molecules' stored features read
    directly, scaled with the scaler JSON's numbers, fingerprint bits unpacked with numpy."""
    molecules = pl.read_parquet(mini_run.features / "molecules")
    scaler = json.loads((models / "scaler.json").read_text())
    joined = rows.select("molecule_key").join(molecules, on="molecule_key", how="left", maintain_order="left")
    descriptors = joined.select(scaler["features"]).to_numpy()
    scaled = (descriptors - np.array(scaler["mean"])) / np.array(scaler["scale"])
    n_bytes = len(joined["fp"][0])
    bits = np.unpackbits(
        np.frombuffer(b"".join(joined["fp"].to_list()), np.uint8).reshape(-1, n_bytes), axis=1
    )
    return np.hstack([scaled, bits]).astype(np.float32)


def test_per_protein_predictions_are_each_proteins_own_booster(mini_run: MiniRun):
    assert mini_run.params.train.model == "per_protein"  # params.yaml's default: mini_run trained this model
    model = load_model(mini_run.models)
    assert not model.joint and model.manifest["model"] == "per_protein"
    assert sorted(model.boosters) == ["BRD4", "HSA", "sEH"]  # one booster per protein
    rows = pl.read_parquet(mini_run.split / "valid")
    predicted = model.predict(rows, MoleculeStore(mini_run.features))
    design = independent_design(rows, mini_run, mini_run.models)
    for protein in ("BRD4", "HSA", "sEH"):
        mask = (rows["protein_name"] == protein).to_numpy()
        booster = xgb.Booster(model_file=str(mini_run.models / f"model-{protein}.json"))
        np.testing.assert_allclose(predicted[mask], booster.inplace_predict(design[mask]), rtol=1e-6)
    # the boosters differ: each learned its own protein
    a, b = (xgb.Booster(model_file=str(mini_run.models / f"model-{p}.json")) for p in ("BRD4", "sEH"))
    assert not np.allclose(a.inplace_predict(design), b.inplace_predict(design))


def test_negatives_per_positive_keeps_k_negatives_a_positive_weighted_back_to_the_base_rate():
    counts = LabelCounts(
        rows={("fit", "BRD4"): 800, ("stop_share", "BRD4"): 200, ("fit", "HSA"): 900, ("fit", "sEH"): 10},
        positives={("fit", "BRD4"): 8, ("stop_share", "BRD4"): 2, ("fit", "HSA"): 0, ("fit", "sEH"): 6},
    )
    params = with_train(load_params(ROOT / "params.yaml"), negatives_per_positive=2.0)
    # by hand: BRD4 keeps 2 x 8 of 792 negatives; HSA has no positive and sEH fewer negatives than 2 a positive:
    # both keep every negative
    assert negative_rates(params, counts) == {"BRD4": pytest.approx(16 / 792), "HSA": 1.0, "sEH": 1.0}
    rng = np.random.default_rng(0)
    n = 40_000
    rows = pl.DataFrame(
        {"id": np.arange(n), "protein_name": rng.choice(["BRD4", "sEH"], n), "binds": (rng.random(n) < 0.01)}
    ).with_columns(pl.col("binds").cast(pl.Int8))
    rates = {"BRD4": 0.1, "sEH": 0.5}
    sampled = sample_negatives(rows, rates, seed=3)
    for protein, rate in rates.items():
        mine, kept = (
            rows.filter(pl.col("protein_name") == protein),
            sampled.filter(pl.col("protein_name") == protein),
        )
        negatives, positives = (mine["binds"] == 0).sum(), (mine["binds"] == 1).sum()
        assert (kept["binds"] == 1).sum() == positives  # every positive kept, weight 1
        assert kept.filter(pl.col("binds") == 1)["weight"].unique().to_list() == [1.0]
        assert kept.filter(pl.col("binds") == 0)["weight"].unique().to_list() == [pytest.approx(1 / rate)]
        assert (kept["binds"] == 0).sum() == pytest.approx(rate * negatives, rel=0.08)
        # weighted, the kept rows have the protein's base rate: the model still sees BELKA's rates
        assert kept["weight"].sum() == pytest.approx(len(mine), rel=0.08)


def test_early_stopping_stops_keeps_the_best_round_and_never_reads_the_valid_part(
    mini_run: MiniRun, tmp_path
):
    split = tmp_path / "split"
    shutil.copytree(mini_run.split, split)
    shutil.rmtree(split / "valid")  # the part evaluate scores: training must not need it
    params = with_train(mini_run.params, model="joint", early_stopping=quick_stopping(mini_run.params))
    params = params.model_copy(update={"xgb": params.xgb.model_copy(update={"n_estimators": 300})})
    result = train_model(params, split / "train", mini_run.features, tmp_path / "models", tmp_path / "live")
    (best,) = result["best_iteration"].values()
    (rounds,) = result["rounds"].values()
    assert rounds < 300 and rounds == best + 4  # three rounds without improvement after the best
    booster = xgb.Booster(model_file=str(tmp_path / "models" / "model.json"))
    assert booster.num_boosted_rounds() == best + 1  # the saved model keeps the best round's trees
    assert load_model(tmp_path / "models").manifest["best_iteration"] == {"*": best}
    summary = json.loads((tmp_path / "live" / "metrics.json").read_text())
    assert summary["best_iteration"] == best and summary["rounds"] == rounds
    assert {"train", "stop_share", "stop_unseen"} <= set(summary)  # the curves of the parts it watched
    # the same curves as one table for the training-curves plot: dvclive's own step files are the reference
    curves = pl.read_csv(tmp_path / "live" / "curves.csv")
    assert set(curves["part"]) == {"train", "stop_share", "stop_unseen"} and set(curves["booster"]) == {"all"}
    for part in ("train", "stop_share", "stop_unseen"):
        steps = pl.read_csv(tmp_path / "live" / "plots" / "metrics" / part / "aucpr.tsv", separator="\t")
        mine = curves.filter(pl.col("part") == part).sort("round")
        assert mine["round"].to_list() == list(range(1, rounds + 1))
        np.testing.assert_allclose(mine["value"].to_numpy(), steps["aucpr"].to_numpy(), rtol=1e-6)
    assert curves["best_round"].unique().to_list() == [
        best + 1
    ]  # early stopping's choice, marked on every row
