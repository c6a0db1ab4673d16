"""Training the model: which fit a run makes (:class:`FitPlan`: the split model, or the final model on every labelled
row), the boosters it fits (one joint, or one per protein) through the runner the params choose, and what it
writes: the model's JSON artifacts and manifest, and dvclive's training curves.

:mod:`stages.train` (the split model) and :mod:`stages.final` (the final model) are its command lines.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import xgboost as xgb
from dvclive import Live

from stages.atomic import atomic_dir
from stages.boosting import FitJob, Fitted, Runner
from stages.fit_dask import fit_distributed
from stages.fit_local import fit_local
from stages.io import write_csv
from stages.memory import check_fit
from stages.model import JOINT, feature_names, save_model
from stages.molecules import MoleculeStore
from stages.params import Params, threads
from stages.train_rows import fit_preprocessing, part_selections


def split_model_rounds(split_manifest: dict) -> dict[str, int]:
    """The rounds each booster of the split model kept (best iteration + 1): what the final and half fits boost,
    without early stopping."""
    return {key: int(best) + 1 for key, best in split_manifest["best_iteration"].items()}


@dataclass(frozen=True)
class FitPlan:
    """Which model a run of train makes, recorded in its manifest: the split model (the split's train part, early
    stopping as the params say: what ``evaluate`` scores) or the final model (every labelled row, each booster
    boosted for the rounds the split model kept: what ``predict`` and on-demand scoring use)."""

    name: str  # "split" | "final"
    rows: str  # which rows, in words
    sides: tuple[str, ...] = ("train",)  # the split's parts it fits on, as its summary counts them
    rounds: dict[str, int] | None = (
        None  # booster key -> rounds, fixed (no early stopping); None: the params'
    )

    def params_for(self, params: Params, key: str) -> Params:
        """The params one booster trains with: the final fit boosts the split model's rounds, without early
        stopping (every labelled row is fit: there is no inner part left to stop on)."""
        if self.rounds is None:
            return params
        stopping = params.train.early_stopping.model_copy(update={"rounds": 0})
        return params.model_copy(
            update={
                "train": params.train.model_copy(update={"early_stopping": stopping}),
                "xgb": params.xgb.model_copy(
                    update={"n_estimators": self.rounds.get(key, params.xgb.n_estimators)}
                ),
            }
        )

    def record(self, params: Params, rows: int) -> dict:
        """What the manifest says of this fit: which model, which rows and how many, where its rounds came from."""
        if self.rounds is not None:
            rounds = "the split model's kept rounds (best iteration + 1) of each booster"
        elif params.train.early_stopping.rounds:
            rounds = "early stopping on an inner part, at most xgb.n_estimators"
        else:
            rounds = "xgb.n_estimators"
        return {"model": self.name, "rows": self.rows, "labelled_rows": rows, "rounds": rounds}


SPLIT_FIT = FitPlan("split", "the split's train part")


def fitter(params: Params) -> Runner:
    """Where the boosters are fit: XGBoost's collective on the Dask cluster with ``train.distributed_workers``,
    else this machine. Both take a :class:`FitJob` and give a :class:`Fitted`."""
    return fit_distributed if params.train.distributed_workers else fit_local


def train_model(
    params: Params,
    rows_dir: Path,
    features_dir: Path,
    model_dir: Path,
    live_dir: Path | None,
    plan: FitPlan = SPLIT_FIT,
    summary: Path | None = None,
) -> dict:
    """Train on ``rows_dir`` (the split's train part, or every labelled row for the final model: ``plan``) and
    write the model's JSON artifacts and, with ``live_dir``, the training curves. First, before any row is read,
    the memory it needs is estimated from the split's ``summary`` (else the rows' labels): logged, or refused."""
    settings = params.train
    check_fit(params, summary, plan.sides, rows_dir, features_dir, f"{plan.name} fit")
    store = MoleculeStore(features_dir)
    prep = fit_preprocessing(plan.params_for(params, JOINT), rows_dir, store)
    classifier = xgb.XGBClassifier(**params.xgb.classifier_kwargs(threads(params)))
    booster_params = classifier.get_xgb_params()
    keys = [JOINT] if settings.model == "joint" else prep.counts.proteins
    fit = fitter(params)
    fitted: dict[str, Fitted] = {}
    for key in keys:
        protein = None if key == JOINT else key
        encoder = prep.encoder if key == JOINT else None
        key_params = plan.params_for(params, key)
        selections = part_selections(key_params, prep, protein)
        job = FitJob(
            key_params, booster_params, rows_dir, features_dir, store, encoder, prep.scaler, selections
        )
        fitted[key] = fit(job)
    n_features = next(iter(fitted.values())).features
    fit_record = plan.record(params, prep.counts.of()[0])
    with contextlib.ExitStack() as outputs:
        if live_dir is not None:
            stopping = any(
                len(result.history) > 1 for result in fitted.values()
            )  # an early-stopping part ran
            write_curves(outputs.enter_context(atomic_dir(live_dir)), fitted, stopping)
        model_tmp = outputs.enter_context(atomic_dir(model_dir))
        categories = [str(c) for c in prep.encoder.categories_[0]]
        save_model(
            model_tmp,
            prep.encoder,
            prep.scaler,
            {key: result.booster for key, result in fitted.items()},
            {
                "model": settings.model,
                "fit": fit_record,
                "features": store.spec,
                "feature_names": feature_names(
                    categories if settings.model == "joint" else None, store.descriptors, store.n_bits
                ),
                "base_rate": prep.counts.base_rate(),
                "train_rows": {p: prep.counts.of(protein=p)[0] for p in prep.counts.proteins},
                "negative_rate": dict(sorted(prep.rates.items())),
                "best_iteration": {key: result.best_iteration for key, result in fitted.items()},
                "distributed_workers": settings.distributed_workers,
                "xgboost": xgb.__version__,
            },
        )
    return {
        "model": settings.model,
        "rows": sum(f.rows for f in fitted.values()),
        "features": n_features,
        "rounds": {key: f.rounds for key, f in fitted.items()},
        "best_iteration": {key: f.best_iteration for key, f in fitted.items()},
        "matrix": next(iter(fitted.values())).matrix,
        "fit": fit_record,
    }


CURVES = (
    "curves.csv"  # every booster's metric by round and part, one table: the pipeline's training-curves plot
)


def curves_table(fitted: dict[str, Fitted], early_stopping: bool) -> pl.DataFrame:
    """Every booster's evaluation metric by round (1-based) and part (``train``: the rows it fits; ``stop_share``,
    ``stop_unseen``: the early-stopping parts), long format, one row per (booster, part, metric, round), with the
    booster's best round where early stopping chose it (null otherwise)."""
    frames = []
    for key, result in fitted.items():
        booster = "all" if key == JOINT else key
        best = result.best_iteration + 1 if early_stopping else None
        for part, metrics in result.history.items():
            for metric, values in metrics.items():
                frames.append(
                    pl.DataFrame(
                        {
                            "round": np.arange(1, len(values) + 1, dtype=np.int64),
                            "booster": booster,
                            "part": part,
                            "metric": metric,
                            "value": np.asarray(values, dtype=np.float64),
                            "best_round": pl.Series([best] * len(values), dtype=pl.Int64),
                        }
                    )
                )
    return pl.concat(frames) if frames else pl.DataFrame()


def write_curves(live_dir: Path, fitted: dict[str, Fitted], early_stopping: bool) -> None:
    """dvclive's curves of every booster (each part it watched, by round), with its rounds and best round, and the
    same curves as one table (``curves.csv``) for the one training-curves plot of ``dvc plots`` and the MR note."""
    live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None)
    log_curves(live, {curve_name(k, data): m for k, f in fitted.items() for data, m in f.history.items()})
    for key, result in fitted.items():
        live.summary[curve_name(key, "best_iteration")] = result.best_iteration
        live.summary[curve_name(key, "rounds")] = result.rounds
    live.end()
    write_csv(curves_table(fitted, early_stopping), live_dir / CURVES)


def log_curves(live: Live, history: dict) -> None:
    """Every evaluation metric of every boosting round, as dvclive steps (series of unequal length end early)."""
    series = [
        (f"{data}/{name}", values) for data, metrics in history.items() for name, values in metrics.items()
    ]
    for step in range(max((len(values) for _, values in series), default=0)):
        for name, values in series:
            if step < len(values):
                live.log_metric(name, float(values[step]))
        live.next_step()


def curve_name(key: str, name: str) -> str:
    """A booster's curves and figures: under the protein's name for a per-protein booster."""
    return name if key == JOINT else f"{key}/{name}"
