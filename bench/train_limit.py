"""Train against its in-memory limit: the same rows and features given to XGBoost as one numpy array
(``bench/bench.py limit``), and both models scored on the valid part (``bench/bench.py agree``)."""

from __future__ import annotations

import time
from pathlib import Path


def limit(params_file: str, split_dir: str, features_dir: str, model_dir: str) -> dict:
    """Train's limit: the same sampled rows and features as ``stages.train`` (a joint model without early stopping,
    as ``write_params`` sets it), but as one in-memory numpy array given straight to XGBoost (no data iterator, no
    batches). Same encoder/scaler fitting, same booster params, rounds and per-round eval (the fit rows); the model
    is saved like train saves it."""
    import polars as pl
    import xgboost as xgb

    from stages.io import BINDS, list_shards
    from stages.model import JOINT, design_matrix, save_model
    from stages.molecules import MoleculeStore
    from stages.params import load_params, threads
    from stages.train_rows import FIT, fit_preprocessing, part_selections

    params = load_params(params_file)
    store = MoleculeStore(Path(features_dir))
    rows_dir = Path(split_dir) / "train"
    phases: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        phases[name] = now - clock
        clock = now

    prep = fit_preprocessing(params, rows_dir, store)
    fit = part_selections(params, prep, None)[FIT]  # what train's fit matrix holds (no early stopping here)
    train_rows = fit.apply(pl.concat([pl.read_parquet(path) for path in list_shards(rows_dir)]))
    lap("rows")
    x_train = design_matrix(train_rows, store, prep.encoder, prep.scaler)
    lap("matrix")
    label, weight = train_rows[BINDS].to_numpy().astype("float32"), train_rows["weight"].to_numpy()
    dtrain = xgb.QuantileDMatrix(x_train, label=label, weight=weight, max_bin=params.xgb.max_bin)
    matrix_bytes = x_train.nbytes
    del x_train  # the quantised matrix holds what boosting needs
    lap("dmatrix")
    booster_params = xgb.XGBClassifier(**params.xgb.classifier_kwargs(threads(params))).get_xgb_params()
    evals: dict = {}
    booster = xgb.train(
        booster_params,
        dtrain,
        num_boost_round=params.xgb.n_estimators,
        evals=[(dtrain, "train")],
        evals_result=evals,
        verbose_eval=False,
    )
    lap("boost")
    save_model(Path(model_dir), prep.encoder, prep.scaler, {JOINT: booster}, {"features": store.spec})
    lap("save")
    return {
        "rows": dtrain.num_row(),
        "features": dtrain.num_col(),
        "rounds": booster.num_boosted_rounds(),
        "matrix_bytes": matrix_bytes,
        "phases": phases,
        "train_metric": {name: values[-1] for name, values in evals["train"].items()},
    }


def agree(split_dir: str, features_dir: str, pipeline_dir: str, limit_dir: str, batch_rows: int) -> dict:
    """Score every valid row (unsampled, unweighted) with train's model and the limit's, each through its own
    encoder and scaler (``stages.model.load_model``): trees, ROC AUC and average precision of each."""
    import numpy as np
    from sklearn.metrics import average_precision_score, roc_auc_score

    from stages.dataset import iter_row_batches
    from stages.io import BINDS
    from stages.model import load_model
    from stages.molecules import MoleculeStore

    store = MoleculeStore(Path(features_dir))
    models = {"pipeline": load_model(Path(pipeline_dir)), "limit": load_model(Path(limit_dir))}
    labels: list[np.ndarray] = []
    scores: dict[str, list[np.ndarray]] = {name: [] for name in models}
    for rows in iter_row_batches(Path(split_dir) / "valid", batch_rows):
        labels.append(rows[BINDS].to_numpy())
        for name, model in models.items():
            scores[name].append(model.predict(rows, store))
    y = np.concatenate(labels)
    both_classes = 0 < y.sum() < len(y)
    result: dict = {"valid_rows": len(y), "positives": int(y.sum())}
    for name, model in models.items():
        p = np.concatenate(scores[name])
        result[name] = {
            "trees": sum(booster.num_boosted_rounds() for booster in model.boosters.values()),
            "roc_auc": float(roc_auc_score(y, p)) if both_classes else None,
            "ap": float(average_precision_score(y, p)) if both_classes else None,
        }
    diff = np.abs(np.concatenate(scores["pipeline"]) - np.concatenate(scores["limit"]))
    result["mean_abs_diff"], result["max_abs_diff"] = float(diff.mean()), float(diff.max())
    return result
