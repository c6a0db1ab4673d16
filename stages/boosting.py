"""One booster's fit, whatever runs it: what it is given (:class:`FitJob`), what comes back (:class:`Fitted`), and
XGBoost's boosting with early stopping on the inner parts (:func:`boost`), which both runners call.

The runners are :func:`stages.fit_local.fit_local` (one machine) and :func:`stages.fit_dask.fit_distributed` (XGBoost's
collective on a Dask cluster): each takes a :class:`FitJob` and returns a :class:`Fitted`; :func:`stages.fitting.fitter`
picks one from the params.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xgboost as xgb
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from stages.molecules import MoleculeStore
from stages.params import Params
from stages.train_rows import FIT, RowSelection


@dataclass
class Fitted:
    """One booster and how it was trained."""

    booster: xgb.Booster | None  # None only in the result of a rank of the collective other than 0
    history: dict
    rows: int
    features: int
    matrix: str
    rounds: int  # rounds boosted
    best_iteration: int  # the last round the saved model keeps (rounds - 1 without early stopping)


@dataclass(frozen=True)
class FitJob:
    """One booster's fit, described so that either runner can do it: its params (the plan's rounds applied),
    XGBoost's params, the rows and features, the fitted preprocessing (no encoder for a per-protein booster) and
    the matrices it trains with (the fit part, and the early-stopping parts)."""

    params: Params
    booster_params: dict
    rows_dir: Path
    features_dir: Path
    store: MoleculeStore
    encoder: OneHotEncoder | None
    scaler: StandardScaler
    selections: dict[str, RowSelection]


Runner = Callable[[FitJob], Fitted]  # fit_local.fit_local, fit_dask.fit_distributed


class ProgressBar(xgb.callback.TrainingCallback):
    """Advances the progress bar after each boosting round."""

    def __init__(self, bar) -> None:
        super().__init__()
        self.bar = bar

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        self.bar.update(1)
        return False


class InnerEarlyStopping(xgb.callback.TrainingCallback):
    """Stops boosting when the mean of ``metric`` over the early-stopping parts has not improved for ``rounds``
    rounds; a part whose metric is undefined (no positive) is left out of the mean."""

    def __init__(self, rounds: int, metric: str, parts: list[str]) -> None:
        super().__init__()
        self.rounds, self.metric, self.parts = rounds, metric, parts
        self.maximize = metric in ("aucpr", "auc")
        self.best_score: float | None = None
        self.best_iteration = -1

    def after_iteration(self, model, epoch: int, evals_log: dict) -> bool:
        values = [float(evals_log[part][self.metric][-1]) for part in self.parts if part in evals_log]
        values = [v for v in values if np.isfinite(v)]
        if not values:
            return False
        score = float(np.mean(values))
        better = self.best_score is None or (
            score > self.best_score if self.maximize else score < self.best_score
        )
        if better:
            self.best_score, self.best_iteration = score, epoch
        return epoch - self.best_iteration >= self.rounds


def boost(params: Params, booster_params: dict, matrices: dict[str, xgb.DMatrix], callbacks: list) -> Fitted:
    """XGBoost on the fit matrix, watching the others; with early stopping when there are early-stopping parts.
    The booster keeps the best round's trees; the rows and features are the fit matrix's (on a rank of the
    collective, that rank's share). The same on one machine and on every rank of the collective (whose metrics are
    reduced over the ranks, so each stops at the same round)."""
    stopper = None
    if len(matrices) > 1:
        parts = [part for part in matrices if part != FIT]
        stopper = InnerEarlyStopping(params.train.early_stopping.rounds, params.xgb.eval_metric, parts)
    history: dict = {}
    booster = xgb.train(
        booster_params,
        matrices[FIT],
        num_boost_round=params.xgb.n_estimators,
        evals=[(matrix, "train" if part == FIT else part) for part, matrix in matrices.items()],
        evals_result=history,
        callbacks=[*callbacks, *([stopper] if stopper else [])],
        verbose_eval=False,
    )
    rounds = booster.num_boosted_rounds()
    best = stopper.best_iteration if stopper is not None and stopper.best_iteration >= 0 else rounds - 1
    # the best round's trees, in a copy that holds no reference to the matrices (their pages can go)
    kept = xgb.Booster(model_file=bytearray(booster[: best + 1].save_raw("json")))
    fit = matrices[FIT]
    return Fitted(kept, history, fit.num_row(), fit.num_col(), type(fit).__name__, rounds, best)
