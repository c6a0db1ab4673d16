"""Model forms on BELKA's terms: joint and per-protein boosters, with and without early stopping, fingerprints with
and without chirality. For each: Kaggle's score, share and non-share with their bootstrap 95% intervals, and the
train time. A script that prints a markdown table; it asserts nothing.

    python bench/model_forms.py                        # the default generated data (params.yaml)
    python bench/model_forms.py --data ../shared/data/belka_sample/val.csv   # real Kaggle rows

The data is featurized once per fingerprint setting (through a feature cache in the work directory), split once
with the params' split, then each configuration is trained and evaluated by the stages' own functions.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from stages import engine, evaluate, featurize, fitting, generate, split  # noqa: E402
from stages.io import write_parquet  # noqa: E402
from stages.params import parse_params, workers  # noqa: E402

NO_EARLY_STOPPING_ROUNDS = 200  # the rounds a model without early stopping trains
EARLY_STOPPING = {
    "rounds": 50,
    "held_out_building_blocks": 0.05,
    "valid_fraction": 0.05,
}  # patience, inner part
EARLY_STOPPING_MAX_ROUNDS = 1000


@dataclass(frozen=True)
class Config:
    model: str
    early_stopping: bool
    chirality: bool
    negatives_per_positive: float | None = None

    def label(self) -> str:
        parts = [self.model, "early stop" if self.early_stopping else f"{NO_EARLY_STOPPING_ROUNDS} rounds",
                 "chirality" if self.chirality else "no chirality"]  # fmt: skip
        if self.negatives_per_positive:
            parts.append(f"{self.negatives_per_positive:g} negatives a positive")
        return ", ".join(parts)


def params_for(base: dict, config: Config):
    raw = copy.deepcopy(base)
    raw["featurize"]["fingerprint"]["chirality"] = config.chirality
    raw["train"]["model"] = config.model
    raw["train"]["negatives_per_positive"] = config.negatives_per_positive
    if config.early_stopping:
        raw["train"]["early_stopping"] = dict(EARLY_STOPPING)
        raw["xgb"]["n_estimators"] = EARLY_STOPPING_MAX_ROUNDS
    else:
        raw["train"]["early_stopping"]["rounds"] = 0
        raw["xgb"]["n_estimators"] = NO_EARLY_STOPPING_ROUNDS
    return parse_params(raw)


def interval(summary: dict, name: str) -> str:
    low_high = summary.get("bootstrap", {}).get(name)
    return f"[{low_high[0]:.3f}, {low_high[1]:.3f}]" if low_high else "-"


def figure(metrics: dict, summary: dict, name: str) -> str:
    return f"{metrics[name]:.3f} {interval(summary, name)}" if name in metrics else "-"


def run(base: dict, raw_train: Path, work: Path, configs: list[Config]) -> list[dict]:
    results = []
    cache = work / "cache"
    parts = split.SplitOutput.under(work / "split")
    for number, chirality in enumerate(sorted({c.chirality for c in configs})):
        featured = params_for(base, Config("joint", True, chirality))
        features = work / f"features-chirality-{chirality}"
        started = time.perf_counter()
        featurize.featurize_file(raw_train, features, work / "rejects.csv", featured, True, cache)
        print(f"featurized (chirality {chirality}) in {time.perf_counter() - started:.0f} s", file=sys.stderr)
        if number == 0:  # split once: the rows do not depend on the fingerprint
            split.split_rows(features / "rows", parts, featured.split)
        for config in (c for c in configs if c.chirality == chirality):
            params = params_for(base, config)
            models, out = work / "models", work / "out"
            started = time.perf_counter()
            result = fitting.train_model(params, parts.train, features, models, work / "live")
            seconds = time.perf_counter() - started
            out.mkdir(exist_ok=True)
            files = evaluate.EvaluateOutput(out / "metrics.json", out / "summary.json", out / "plots")
            metrics = evaluate.evaluate(
                params.evaluate,
                parts.train,
                parts.valid,
                features,
                models,
                files,
                params.resources.evaluate_memory_mb,
            )
            summary = json.loads(files.summary.read_text())
            kept = sum(best + 1 for best in result["best_iteration"].values())
            results.append({"config": config, "metrics": metrics, "summary": summary, "seconds": seconds,
                            "trees": kept})  # fmt: skip
            print(config.label(), {k: round(v, 4) for k, v in metrics.items() if k in ("score", "share",
                  "non_share")}, f"{seconds:.0f} s", file=sys.stderr)  # fmt: skip
    return results


def table(results: list[dict]) -> str:
    lines = [
        "| model | early stopping | chirality | score [95%] | share [95%] | non_share [95%] | trees | train s |",
        "|---|---|---|---|---|---|---:|---:|",
    ]
    for r in results:
        c, m, s = r["config"], r["metrics"], r["summary"]
        model = c.model + (f", {c.negatives_per_positive:g} neg/pos" if c.negatives_per_positive else "")
        lines.append(
            f"| {model} | {'yes' if c.early_stopping else f'no ({NO_EARLY_STOPPING_ROUNDS} rounds)'} | "
            f"{'on' if c.chirality else 'off'} | {figure(m, s, 'score')} | {figure(m, s, 'share')} | "
            f"{figure(m, s, 'non_share')} | {r['trees']} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--data", type=Path, help="a BELKA-format training file (default: generate it)")
    parser.add_argument("--negatives-per-positive", default="", help="extra per_protein runs, e.g. 2,20")
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    args = parser.parse_args()
    base = yaml.safe_load(args.params.read_text())
    configs = [
        Config(m, e, c)
        for c, m, e in itertools.product((False, True), ("joint", "per_protein"), (True, False))
    ]
    configs += [
        Config("per_protein", True, False, float(k)) for k in args.negatives_per_positive.split(",") if k
    ]
    with tempfile.TemporaryDirectory(prefix="belka-forms-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        raw_train = args.data
        if raw_train is None:
            raw_train = work / "train.parquet"
            params = parse_params(base)
            with engine.executor("local", workers(params)) as pool:
                rows, _ = generate.generate(params.generate, pool)
            write_parquet(generate.to_kaggle_table(rows), raw_train)
        results = run(base, raw_train, work, configs)
    print(f"data: {args.data or 'generated (params.yaml)'}; split: {base['split']}")
    print(table(results))


if __name__ == "__main__":
    main()
