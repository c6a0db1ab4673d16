"""Train's memory estimate against its measured peak: rows, estimate, measured peak RSS, ratio. A script that
prints figures; it asserts nothing.

    python bench/estimate.py                                   # the table in the README's memory paragraph
    python bench/estimate.py --molecules 3000 --tiles 1,2 --configs joint --rounds 2     # a smoke run

A base data set (``generate.train_molecules`` molecules, the default params otherwise) is generated and featurized
once under ``--work``; larger sizes tile its rows (each row again with a new id, so negative sampling draws
afresh; the molecules, and the molecule store's index, stay the base set's). Each size is split with the default
params, and each configuration runs ``python -m stages.train --split-summary ...`` (or ``stages.final``) as its own
process: its estimate is the one it logs before reading a row, its peak the process's max RSS from ``wait4``. The
train part is what the split leaves (about 31% of the rows at the default split); the final fit reads every row.
Timings would be distorted by other jobs on the machine; memory is not, and only memory is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import yaml  # noqa: E402

GB = 1e9
# name -> train (and xgb) params over the defaults; "final" configurations run the final fit on every row
CONFIGS = {
    "joint": {"train": {"model": "joint"}},
    "joint-k20": {"train": {"model": "joint", "negatives_per_positive": 20}},
    "joint-rate0.1": {"train": {"model": "joint", "negative_sample_rate": 0.1}},
    "per_protein": {"train": {"model": "per_protein"}},
    "joint-external": {"train": {"model": "joint", "data_mode": "external"}},
    "per_protein-external": {"train": {"model": "per_protein", "data_mode": "external"}},
    "final-joint": {"train": {"model": "joint"}},
}
ESTIMATE_LINE = re.compile(r"(\S+): ([\d,]+) rows kept .*? needs about ([\d.]+) GB in memory")


def base_params(molecules: int, work: Path, rounds: int, threads: int) -> dict:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    changes = {
        "generate": {"train_molecules": molecules},
        "xgb": {"n_estimators": rounds},
        "resources": {"threads": threads, "feature_cache": str(work / "cache"),
                      "external_memory_dir": str(work / "pages")},
    }  # fmt: skip
    for section, values in changes.items():
        params[section].update(values)
    return params


def prepare_base(work: Path, params_file: Path) -> Path:
    """Generate and featurize the base set once (kept under ``work``): the featurize output's directory."""
    from stages import featurize, generate
    from stages.io import write_parquet
    from stages.params import load_params

    features = work / "features"
    if (features / "manifest.json").exists():
        return features
    params = load_params(params_file)
    train_rows, _ = generate.generate(params.generate)
    write_parquet(generate.to_kaggle_table(train_rows), work / "raw" / "train.parquet")
    featurize.featurize_file(work / "raw" / "train.parquet", features, work / "rejects.csv", params, True,
                             work / "cache")  # fmt: skip
    return features


def tile_rows(rows_dir: Path, factor: int, target: Path) -> Path:
    """The rows ``factor`` times, each copy with new ids (shards of the base's size, in order)."""
    from stages.io import list_shards, shard_name, write_parquet

    if target.exists():
        return target
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shards = list_shards(rows_dir)
    offset = 1 + max(int(pl.read_parquet(s, columns=["id"])["id"].max()) for s in shards)
    number = 0
    for copy_number in range(factor):
        for shard in shards:
            rows = pl.read_parquet(shard)
            write_parquet(rows.with_columns(pl.col("id") + copy_number * offset), tmp / shard_name(number))
            number += 1
    tmp.rename(target)
    return target


@dataclass
class Measured:
    size: str
    config: str
    rows: int  # rows the fit read
    kept: int  # rows kept after sampling, as the estimate counts them
    estimate: float  # GB
    peak: float  # GB

    @property
    def ratio(self) -> float:
        return self.estimate / self.peak


def measure(cmd: list[str]) -> tuple[str, float]:
    """(stderr, peak RSS in GB) of one process."""
    env = {**os.environ, "BELKA_PROGRESS": "0"}
    env.pop("BELKA_MEMORY_LIMIT_GB", None)
    with open(os.devnull, "w") as null:
        process = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=null, stderr=subprocess.PIPE, text=True)
        stderr = process.stderr.read()
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({process.returncode}):\n{stderr}")
    return stderr, usage.ru_maxrss * 1024 / GB


def run_config(
    work: Path,
    size: str,
    name: str,
    params: dict,
    rows: Path,
    split: Path,
    features: Path,
    record: Path | None,
) -> Measured:
    from stages.dataset import count_rows

    params = copy.deepcopy(params)
    for section, values in CONFIGS[name].items():
        params[section].update(values)
    out = work / "runs" / f"{size}-{name}"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    (out / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    py = [sys.executable, "-m"]
    common = ["--params", str(out / "params.yaml"), "--features", str(features),
              "--split-summary", str(split / "summary.json")]  # fmt: skip
    if name.startswith("final"):
        if not (work / "runs" / f"{size}-split-model").exists():
            measure([*py, "stages.train", *common, "--rows", str(split / "train"),
                     "--models", str(work / "runs" / f"{size}-split-model"), "--live", str(out / "live")])  # fmt: skip
        cmd = [*py, "stages.final", *common, "--rows", str(rows), "--split-model",
               str(work / "runs" / f"{size}-split-model"), "--models", str(out / "models")]  # fmt: skip
        read = count_rows(rows)
    else:
        cmd = [*py, "stages.train", *common, "--rows", str(split / "train"), "--models", str(out / "models"),
               "--live", str(out / "live")]  # fmt: skip
        read = count_rows(split / "train")
    stderr, peak = measure(cmd)
    found = ESTIMATE_LINE.search(stderr)
    if not found:
        raise SystemExit(f"no estimate in the log of {' '.join(cmd)}:\n{stderr}")
    shutil.rmtree(out / "models", ignore_errors=True)
    result = Measured(size, name, read, int(found.group(2).replace(",", "")), float(found.group(3)), peak)
    if record is not None:  # the estimate's terms, for calibrating its coefficients
        from stages import memory
        from stages.params import load_params

        final = name.startswith("final")
        sides, read_dir = (("train", "valid"), rows) if final else (("train",), split / "train")
        inputs = memory.fit_inputs(split / "summary.json", sides, read_dir, features)
        terms = memory.estimate(load_params(out / "params.yaml"), *inputs, 0)
        line = {**vars(result), "terms": vars(terms), "baseline": result.estimate - terms.peak / GB}
        with record.open("a") as f:
            f.write(json.dumps(line) + "\n")
    return result


def table(results: list[Measured]) -> str:
    lines = [
        "| size | config | rows read | rows kept | estimate GB | measured peak GB | estimate / peak |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(f"| {r.size} | {r.config} | {r.rows:,} | {r.kept:,} | {r.estimate:.2f} | {r.peak:.2f} | "
                     f"{r.ratio:.2f} |")  # fmt: skip
    ratios = np.array([r.ratio for r in results])
    lines.append(f"\nestimate / peak: {ratios.min():.2f} to {ratios.max():.2f} over {len(results)} runs")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/belka-estimate"), help="data and runs (kept)")
    parser.add_argument(
        "--molecules", type=int, default=20_000, help="generate.train_molecules of the base set"
    )
    parser.add_argument("--tiles", default="1,4,16", help="sizes: the base rows repeated this many times")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"of {', '.join(CONFIGS)}")
    parser.add_argument(
        "--rounds", type=int, default=5, help="xgb.n_estimators (the peak comes in round one)"
    )
    parser.add_argument("--threads", type=int, default=2, help="resources.threads")
    parser.add_argument(
        "--record", type=Path, help="append each run's figures and the estimate's terms (JSON lines)"
    )
    args = parser.parse_args(argv)
    from stages import split
    from stages.params import load_params

    work = args.work / f"m{args.molecules}"
    work.mkdir(parents=True, exist_ok=True)
    params = base_params(args.molecules, work, args.rounds, args.threads)
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    features = prepare_base(work, work / "params.yaml")
    results = []
    for factor in (int(t) for t in args.tiles.split(",")):
        size = f"x{factor}"
        rows = tile_rows(features / "rows", factor, work / size / "rows")
        parts = split.SplitOutput.under(work / size / "split")
        if not parts.summary.exists():
            split.split_rows(rows, parts, load_params(work / "params.yaml").split)
        for name in args.configs.split(","):
            result = run_config(work, size, name, params, rows, work / size / "split", features, args.record)
            print(f"{size} {name}: {result.kept:,} rows kept, estimate {result.estimate:.2f} GB, peak "
                  f"{result.peak:.2f} GB, ratio {result.ratio:.2f}", flush=True)  # fmt: skip
            results.append(result)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
