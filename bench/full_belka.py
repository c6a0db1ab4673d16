"""What train and final would need on all of BELKA: train's own memory estimate (``stages.memory.estimate``, the
figure it logs or refuses with before reading a row) applied to BELKA's counts, for the full-BELKA settings and a
few ``train.negatives_per_positive`` and ``train.data_mode`` choices. A script that prints figures; it reads no
data and asserts nothing.

    python bench/full_belka.py                 # the table in docs/scale.md's "Full BELKA"
    python bench/full_belka.py --k 5,20        # other negatives per positive

BELKA's counts (``../shared/design.md``): 98,415,610 molecules x 3 proteins, positives BRD4 0.46%, HSA 0.42%, sEH
0.74%. The split fit reads the train part: the molecules with no held-out building block (0.9^3 of them at
``split.held_out_building_blocks: 0.1``) less the valid share molecules (``split.valid_fraction``); the final fit
reads every labelled row (an upper bound: the split's valid part is all of them). The estimate's coefficients are
calibrated on measured peaks (``bench/estimate.py``; against ``bench/scale.py``'s runs up to 30M rows: within 16%).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from stages import memory  # noqa: E402
from stages.params import Params, load_params  # noqa: E402

GB = 1e9
MOLECULES = 98_415_610
POSITIVE_RATES = {"BRD4": 0.0046, "HSA": 0.0042, "sEH": 0.0074}
FEATURIZE_BATCH_MOLECULES = (
    33_334  # molecules a featurize part holds at featurize.batch_rows 100,000 (3 rows each)
)
BASELINE_BYTES = 400_000_000  # a fit process's RSS before it reads a row (measured: 0.3-0.4 GB)


@dataclass(frozen=True)
class Fit:
    """One fit of the full-BELKA table: which stage, and the share of the molecules it reads."""

    stage: str
    share: float


def full_belka_params(k: int, mode: str) -> Params:
    params = load_params(ROOT / "params.yaml")
    return params.model_copy(
        update={
            "train": params.train.model_copy(
                update={
                    "negatives_per_positive": k,
                    "data_mode": mode,
                    "model": "per_protein",
                    "final_fit": True,
                }
            ),
            "featurize": params.featurize.model_copy(
                update={"fingerprint": params.featurize.fingerprint.model_copy(update={"n_bits": 2048})}
            ),
        }
    )


def belka_counts(share: float) -> memory.Counts:
    molecules = round(MOLECULES * share)
    rows = {protein: molecules for protein in POSITIVE_RATES}
    positives = {protein: round(molecules * rate) for protein, rate in POSITIVE_RATES.items()}
    return memory.Counts(rows, positives)


def fits(held_out: float, valid_fraction: float) -> list[Fit]:
    train_share = (1 - held_out) ** 3 * (1 - valid_fraction)
    return [Fit("train (split fit)", train_share), Fit("final (every labelled row)", 1.0)]


def table(ks: list[int], held_out: float, valid_fraction: float) -> str:
    lines = [
        "| fit | negatives per positive | rows kept, 3 boosters | train.data_mode | peak memory | pages on disk |",
        "|---|---:|---:|---|---:|---:|",
    ]
    for fit in fits(held_out, valid_fraction):
        for k in ks:
            for mode in ("in_memory", "external"):
                params = full_belka_params(k, mode)
                shape = memory.FeatureShape(
                    len(params.featurize.descriptors), 2048, MOLECULES, FEATURIZE_BATCH_MOLECULES
                )
                found = memory.estimate(params, belka_counts(fit.share), shape, BASELINE_BYTES)
                disk = f"{found.disk / GB:.0f} GB" if found.disk else "-"
                lines.append(
                    f"| {fit.stage} | {k} | {found.rows:,} | {mode} | {found.peak / GB:.0f} GB | {disk} |"
                )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--k", default="5,10,20", help="negatives per positive, comma-separated")
    parser.add_argument("--held-out", type=float, default=0.1, help="split.held_out_building_blocks")
    parser.add_argument("--valid-fraction", type=float, default=0.02, help="split.valid_fraction")
    args = parser.parse_args(argv)
    print(table([int(k) for k in args.k.split(",")], args.held_out, args.valid_fraction))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
