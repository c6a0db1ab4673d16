"""Train the binding model: XGBoost on ``[one-hot protein | scaled descriptors | fingerprint bits]``.

``train.model`` picks the form: ``joint`` (one booster for every protein, the protein one-hot encoded) or
``per_protein`` (one booster per protein on that protein's rows, the form most strong BELKA tree solutions used).
Rows stream from ``data/split/train`` in batches through an ``xgboost.DataIter``; each batch is expanded with its
molecules' features only when XGBoost asks for it. ``train.data_mode`` picks ``QuantileDMatrix`` (the quantised
matrix in memory, about 1 byte a feature value) or ``ExtMemQuantileDMatrix`` (pages on disk, under
``resources.external_memory_dir``, removed when training ends).

Negatives can be down-sampled, weighted so the model still sees BELKA's base rates: a fixed fraction
(``train.negative_sample_rate``, weight 1/rate) or a number of negatives per positive for each protein
(``train.negatives_per_positive``: rate = k x positives / negatives of that protein).

With ``train.early_stopping.rounds`` > 0, an inner part of the training rows is drawn by the split's rule with its
own fractions (molecules with a held-out block, and a random fraction of the others): boosting stops when the mean
of ``xgb.eval_metric`` over its unseen-like and share-like parts has not improved for that many rounds, and the
saved model keeps the best iteration's trees. The part ``evaluate`` scores is never read here.

The booster is trained with the parameters ``XGBClassifier(**xgb)`` would use (its ``get_xgb_params()``), so
``XGBClassifier().load_model("models/model.json")`` gives the same classifier. dvclive logs the per-iteration
curves (fit part and inner parts) and the best iteration to ``metrics/train``.
"""

from __future__ import annotations

import argparse
import logging

from stages.cli import Command
from stages.fitting import train_model
from stages.model import JOINT
from stages.params import Params

log = logging.getLogger("stages.train")


def run(args: argparse.Namespace, params: Params) -> None:
    result = train_model(params, args.rows, args.features, args.models, args.live, summary=args.split_summary)
    rounds = ", ".join(
        f"{key if key != JOINT else 'all'}: {result['best_iteration'][key] + 1} of {boosted}"
        for key, boosted in result["rounds"].items()
    )
    log.info(
        "%s model on %d rows x %d features (%s); trees kept per booster: %s",
        result["model"], result["rows"], result["features"], result["matrix"], rounds,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    command = Command("train", __doc__).fit(
        rows="the split's train part", models="where the JSON artifacts go"
    )
    return command.paths(live="dvclive directory for training curves").main(argv, run)


if __name__ == "__main__":
    raise SystemExit(main())
