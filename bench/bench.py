"""Featurize and train at BELKA scale: throughput against the naive way and the RDKit ceiling, peak memory of the
whole process tree, the cost of appending rows, and train's memory. A script that prints figures; it asserts
nothing.

    python bench/bench.py --sizes 1M,4M,16M            # writes bench/RESULTS.md
    python bench/bench.py --sizes 3000,9000 --train-sizes 9000 --trees 5 --results /tmp/r.md   # a smoke run

Every stage runs as its own ``python -m stages.<name>`` process; a thread sums the RSS of that process and all its
children (the featurize pool) every 0.2 s, and the peak of the sum is reported. Train is also compared with its
in-memory limit (``_limit``: the same rows and features as one numpy array given straight to XGBoost) and the two
models' valid AUC/AP (``_agree``).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import yaml  # noqa: E402

T = TypeVar("T")

BELKA_ROWS = 295_246_830
BELKA_MOLECULES = 98_415_610
GB = 1e9


def publish(text: str, results: Path | None) -> None:
    """Print a benchmark's report, and write it to ``results`` when given."""
    print(text)
    if results:
        results.write_text(text)


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1_000, "M": 1_000_000, "G": 1_000_000_000}.get(text[-1:], 1)
    return int(float(text[:-1] if scale > 1 else text) * scale)


def human(n: float) -> str:
    n = float(f"{n:.2g}")  # 999,999 rows (333,333 molecules) reads as 1M
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:g}{unit}"
    return f"{n:.0f}"


# ---------------------------------------------------------------------------------------------- measuring


class TreeRss:
    """Peak of the summed RSS of a process and all its descendants, sampled every ``every`` seconds."""

    def __init__(self, pid: int, every: float = 0.2) -> None:
        self.pid, self.every, self.peak = pid, every, 0
        self.cpu: dict[int, float] = {}  # last CPU seconds seen per process of the tree
        self.load: list[float] = []  # the machine's 1-minute load average: other jobs show here
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            self.sample(procs)
            self.stop.wait(self.every)

    def sample(self, procs: list[psutil.Process]) -> None:
        """One sample of the tree's processes."""
        total = 0
        for proc in procs:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied), proc.oneshot():
                total += proc.memory_info().rss
                times = proc.cpu_times()
                self.cpu[proc.pid] = times.user + times.system
        self.peak = max(self.peak, total)
        self.load.append(os.getloadavg()[0])

    def __enter__(self) -> TreeRss:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def run_measured(args: list[str], log_path: Path, root: Path = ROOT) -> dict:
    """Run a command in ``root`` (the project's code: this checkout, or another commit's tree); return wall seconds
    and the peak RSS of its process tree. Fails loudly on a non-zero exit."""
    env = {**os.environ, "BELKA_PROGRESS": "1", "PYTHONPATH": str(root)}
    start = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.Popen(args, cwd=root, stdout=log, stderr=subprocess.STDOUT, env=env)
        with TreeRss(proc.pid) as rss:
            code = proc.wait()
    seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"{' '.join(args)} failed ({code}); see {log_path}:\n{log_path.read_text()[-3000:]}")
    load = sum(rss.load) / len(rss.load) if rss.load else os.getloadavg()[0]
    return {"seconds": seconds, "peak_rss": rss.peak, "cpu_seconds": sum(rss.cpu.values()), "load": load}


def helper(args: list[str], log_path: Path) -> dict:
    """Run one of this script's measuring subcommands in its own process; it prints one JSON line last."""
    measured = run_measured([sys.executable, __file__, *args], log_path)
    result = json.loads(log_path.read_text().strip().splitlines()[-1])
    return {**measured, **result}


# ---------------------------------------------------------------------------------------------- baselines


def timed(work: Callable[[], T]) -> tuple[T, float, float]:
    """``work()``'s result, its wall-clock seconds and this process's CPU seconds."""
    start, cpu = time.perf_counter(), time.process_time()
    result = work()
    return result, time.perf_counter() - start, time.process_time() - cpu


def naive(source: str, rows: int, params_file: str) -> dict:
    """The naive way: polars ``map_elements`` calling RDKit on every row, one process."""
    import numpy as np
    import polars as pl
    from rdkit import Chem
    from rdkit.Chem import Descriptors, rdFingerprintGenerator, rdMolDescriptors

    from stages.params import load_params

    fp = load_params(params_file).featurize.fingerprint
    generator = rdFingerprintGenerator.GetMorganGenerator(
        radius=fp.radius, fpSize=fp.n_bits, includeChirality=fp.chirality
    )
    frame = pl.scan_parquet(source).head(rows).collect()

    def featurize(smiles: str) -> dict:
        mol = Chem.MolFromSmiles(smiles.replace("[Dy]", ""))
        if mol is None:
            return {"mw": None, "hbd": None, "hba": None, "fp": None}
        return {
            "mw": Descriptors.MolWt(mol),
            "hbd": rdMolDescriptors.CalcNumHBD(mol),
            "hba": rdMolDescriptors.CalcNumHBA(mol),
            "fp": np.packbits(generator.GetFingerprintAsNumPy(mol)).tobytes(),
        }

    dtype = pl.Struct({"mw": pl.Float64, "hbd": pl.Int64, "hba": pl.Int64, "fp": pl.Binary})
    out, seconds, cpu = timed(
        lambda: frame.with_columns(
            pl.col("molecule_smiles").map_elements(featurize, return_dtype=dtype).alias("f")
        )
    )
    return {
        "rows": len(out),
        "compute_seconds": seconds,
        "compute_cpu": cpu,
        "rows_per_s": len(out) / seconds,
    }


def unique_cleaned(source: str, molecules: int, max_length: int) -> list[str]:
    """The first ``molecules`` distinct molecules of a BELKA-format file, cleaned as featurize cleans them."""
    import polars as pl

    from stages import chem

    cleaned_expr, _ = chem.clean_smiles_expr(pl.col("molecule_smiles"), max_length)
    unique = pl.scan_parquet(source).select("molecule_smiles").head(4 * molecules).unique(maintain_order=True)
    return unique.head(molecules).select(cleaned_expr).collect().to_series().drop_nulls().to_list()


CEILING_CHUNK = 500  # molecules timed at a time, alternating the two parses


def alternating(work: dict[str, Callable[[list], object]], items: list, chunk: int = CEILING_CHUNK) -> dict:
    """Seconds and CPU seconds of each of ``work``'s functions over ``items``, timed chunk by chunk with the
    functions taking turns (and going first in turn), so a burst of load from other jobs hits them alike."""
    totals = {name: [0.0, 0.0] for name in work}
    for number, start in enumerate(range(0, len(items), chunk)):
        part = items[start : start + chunk]
        names = list(work) if number % 2 == 0 else list(reversed(work))
        for name in names:
            _, seconds, cpu = timed(lambda: work[name](part))  # noqa: B023
            totals[name][0] += seconds
            totals[name][1] += cpu
    return {name: {"seconds": seconds, "cpu": cpu} for name, (seconds, cpu) in totals.items()}


def ceilings(cleaned: list[str], config) -> dict[str, dict]:
    """The two RDKit ceilings on one core, on the same molecules: ``chem.featurize_smiles`` in a plain loop with
    RDKit's default parse (``default``) and with the fast parse (``fast``), alternating chunk by chunk."""
    from stages import chem

    chem.featurize_smiles(cleaned[:50], config)  # warm up RDKit's lazy initialisation
    timing = alternating(
        {
            "default": lambda part: chem.featurize_smiles(part, config, fast=False),
            "fast": lambda part: chem.featurize_smiles(part, config),
        },
        cleaned,
    )
    return {
        name: {
            "molecules": len(cleaned),
            "compute_seconds": t["seconds"],
            "compute_cpu": t["cpu"],
            "molecules_per_s": len(cleaned) / t["seconds"],
            "molecules_per_cpu_s": len(cleaned) / t["cpu"],
        }
        for name, t in timing.items()
    }


def ceiling(source: str, molecules: int, params_file: str) -> dict:
    """RDKit's ceilings on one core (default and fast parse) on unique cleaned SMILES of the file."""
    from stages.featurize import feature_config
    from stages.params import load_params

    params = load_params(params_file)
    cleaned = unique_cleaned(source, molecules, params.featurize.max_smiles_length)
    return ceilings(cleaned, feature_config(params))


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
    from stages.train import FIT, fit_preprocessing, part_selections

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


# ---------------------------------------------------------------------------------------------- the run


def write_params(path: Path, args: argparse.Namespace, trees: int) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params = copy.deepcopy(params)
    params["resources"]["workers"] = args.workers
    if args.batch_rows:
        params["featurize"]["batch_rows"] = args.batch_rows
    params["train"]["negative_sample_rate"] = args.negative_sample_rate
    params["train"]["model"] = "joint"  # the in-memory limit trains the same joint model, every round
    params["train"]["early_stopping"]["rounds"] = 0
    params["xgb"]["n_estimators"] = trees
    params["resources"]["threads"] = 0
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def fastest(runs: list[dict]) -> dict:
    """The fastest of repeated measurements, with every run's seconds and the highest peak RSS of them all."""
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["all_seconds"] = [r["seconds"] for r in runs]
    best["peak_rss"] = max(r["peak_rss"] for r in runs)
    return best


def trees_for(size: int, args: argparse.Namespace) -> int:
    return args.trees if size <= args.sizes[0] else args.trees_large


def main(argv: list[str] | None = None) -> int:
    if argv is None:
        argv = sys.argv[1:]
    if argv and argv[0] in ("_naive", "_ceiling"):
        func = naive if argv[0] == "_naive" else ceiling
        print(json.dumps(func(argv[1], int(argv[2]), argv[3])))
        return 0
    if argv and argv[0] == "_limit":
        print(json.dumps(limit(*argv[1:5])))
        return 0
    if argv and argv[0] == "_agree":
        print(json.dumps(agree(*argv[1:5], int(argv[5]))))
        return 0

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,4M,16M", help="input sizes in rows, e.g. 1M,4M,16M")
    parser.add_argument("--train-sizes", help="sizes to train on (default: all)")
    parser.add_argument("--append-sizes", help="sizes to append 10%% to and refeaturize (default: all)")
    parser.add_argument("--append-fraction", type=float, default=0.1)
    parser.add_argument("--naive-rows", type=parse_size, default=30_000, help="rows the naive way parses")
    parser.add_argument("--ceiling-molecules", type=parse_size, default=20_000)
    parser.add_argument("--workers", type=int, default=0, help="resources.workers (0 = every core)")
    parser.add_argument(
        "--batch-rows", type=parse_size, default=0, help="featurize.batch_rows (default: params)"
    )
    parser.add_argument("--trees", type=int, default=50, help="xgb.n_estimators at the smallest size")
    parser.add_argument("--trees-large", type=int, default=20, help="xgb.n_estimators at the larger sizes")
    parser.add_argument("--negative-sample-rate", type=float, default=0.05)
    parser.add_argument(
        "--train-repeats",
        type=int,
        default=1,
        help="run train and its in-memory limit this many times each, alternated; report the fastest of each",
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)
    args.sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    train_sizes = [parse_size(s) for s in args.train_sizes.split(",")] if args.train_sizes else args.sizes
    append_sizes = [parse_size(s) for s in args.append_sizes.split(",")] if args.append_sizes else args.sizes

    from bench.belka_gen import write_belka
    from stages.params import available_cores

    cores = args.workers or available_cores()
    work = args.workdir
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    logs = work / "logs"
    logs.mkdir()
    py = sys.executable
    runs: dict[int, dict] = {}
    print(f"bench: {cores} cores, sizes {[human(s) for s in args.sizes]}, work dir {work}", flush=True)

    base_params = write_params(work / "params.yaml", args, args.trees)
    n_bits = yaml.safe_load(base_params.read_text())["featurize"]["fingerprint"]["n_bits"]
    batch_rows = yaml.safe_load(base_params.read_text())["featurize"]["batch_rows"]

    for size in args.sizes:
        tag = human(size)
        data = work / f"input-{tag}.parquet"
        start = time.perf_counter()
        counts = write_belka(data, size)
        run = {
            "rows": counts["rows"],
            "molecules": counts["molecules"],
            "generate_s": time.perf_counter() - start,
        }
        print(f"[{tag}] generated {counts['rows']:,} rows in {run['generate_s']:.1f}s", flush=True)

        if size == args.sizes[0]:
            first = data
            n = helper(["_naive", str(data), str(args.naive_rows), str(base_params)], logs / "naive.log")
            c = helper(
                ["_ceiling", str(data), str(args.ceiling_molecules), str(base_params)], logs / "ceiling.log"
            )
            naive_result, ceiling_result = n, c
            print(f"naive: {n['rows_per_s']:,.0f} rows/s on {n['rows']:,} rows", flush=True)
            print(
                f"ceilings on one core: {c['default']['molecules_per_s']:,.0f} molecules/s (default parse), "
                f"{c['fast']['molecules_per_s']:,.0f} (fast parse)",
                flush=True,
            )

        cache = work / f"cache-{tag}"
        out = work / f"features-{tag}"
        cmd = [py, "-m", "stages.featurize", "--params", str(base_params), "--cache", str(cache)]
        feat = run_measured([*cmd, "--input", str(data), "--output", str(out)], logs / f"featurize-{tag}.log")
        run["featurize"] = feat
        print(
            f"[{tag}] featurize {feat['seconds']:.1f}s, peak RSS {feat['peak_rss'] / GB:.2f} GB", flush=True
        )

        if size in append_sizes:
            bigger = work / f"input-{tag}-appended.parquet"
            more = write_belka(bigger, int(size * (1 + args.append_fraction)))
            app = run_measured(
                [*cmd, "--input", str(bigger), "--output", str(work / f"features-{tag}-appended")],
                logs / f"append-{tag}.log",
            )
            app["rows"] = more["rows"]
            app["log"] = (logs / f"append-{tag}.log").read_text().strip().splitlines()[-1]
            run["append"] = app
            print(
                f"[{tag}] +{args.append_fraction:.0%} appended: {app['seconds']:.1f}s; {app['log']}",
                flush=True,
            )
            bigger.unlink()
            shutil.rmtree(work / f"features-{tag}-appended")

        if size in train_sizes:
            trees = trees_for(size, args)
            params = write_params(work / f"params-{tag}.yaml", args, trees)
            split = work / f"split-{tag}"
            subprocess.run(
                [
                    py,
                    "-m",
                    "stages.split",
                    "--params",
                    str(params),
                    "--rows",
                    str(out / "rows"),
                    "--train",
                    str(split / "train"),
                    "--valid",
                    str(split / "valid"),
                    "--summary",
                    str(split / "summary.json"),
                ],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            train_cmd = [py, "-m", "stages.train", "--params", str(params), "--rows", str(split / "train")]
            train_cmd += ["--features", str(out), "--models", str(work / f"models-{tag}")]
            train_cmd += ["--live", str(work / f"live-{tag}")]
            limit_dir = work / f"limit-model-{tag}"
            limit_cmd = ["_limit", str(params), str(split), str(out), str(limit_dir)]
            trains, limits = [], []
            for _ in range(args.train_repeats):  # alternated, so a burst of load hits both alike
                trains.append(run_measured(train_cmd, logs / f"train-{tag}.log"))
                limits.append(helper(limit_cmd, logs / f"limit-{tag}.log"))
            train, lim = fastest(trains), fastest(limits)
            train["trees"] = trees
            # manifest.json's train_rows counts rows before negative sampling; train's log has the sampled rows
            trained = re.search(r"model on (\d+) rows", (logs / f"train-{tag}.log").read_text())
            train["train_rows"] = int(trained.group(1)) if trained else None
            run["train"] = train
            print(
                f"[{tag}] train {train['seconds']:.1f}s, peak RSS {train['peak_rss'] / GB:.2f} GB", flush=True
            )
            lim["agree"] = helper(
                [
                    "_agree",
                    str(split),
                    str(out),
                    str(work / f"models-{tag}"),
                    str(limit_dir),
                    str(batch_rows),
                ],
                logs / f"agree-{tag}.log",
            )
            run["limit"] = lim
            print(
                f"[{tag}] in-memory limit {lim['seconds']:.1f}s, peak RSS {lim['peak_rss'] / GB:.2f} GB "
                f"(train/limit: time {train['seconds'] / lim['seconds']:.2f}x, "
                f"RSS {train['peak_rss'] / lim['peak_rss']:.2f}x)",
                flush=True,
            )
            shutil.rmtree(split)

        runs[size] = run
        if size != args.sizes[0]:
            data.unlink()
        shutil.rmtree(out)
        shutil.rmtree(cache)
    first.unlink()

    text = report(args, cores, runs, naive_result, ceiling_result, n_bits, batch_rows)
    publish(text, args.results)
    if not args.keep:
        shutil.rmtree(work)
    return 0


# ---------------------------------------------------------------------------------------------- the report


def markdown_table(
    columns: list[str], rows: list[list[str]], text_columns: int = 0, leading_text: int = 0
) -> list[str]:
    """A markdown table: numbers right-aligned, the first ``leading_text`` and the last ``text_columns`` columns
    left-aligned."""
    numeric = len(columns) - text_columns - leading_text
    rule = ["---"] * leading_text + ["---:"] * numeric + ["---"] * text_columns
    return ["| " + " | ".join(columns) + " |", "|" + "|".join(rule) + "|"] + [
        "| " + " | ".join(row) + " |" for row in rows
    ]


def count(n: int | None) -> str:
    return "?" if n is None else f"{n:,}"


def metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def limit_section(runs: dict, sizes: list[int]) -> list[str]:
    """Train's process against the same rows and features given to XGBoost as one in-memory numpy array."""
    lines = [
        "## Train against the in-memory limit",
        "",
        "The limit is the same training done the simplest way XGBoost allows when everything fits in memory: "
        "the same split rows after the same negative sampling, the encoder and scaler fitted by the same "
        "`stages.train.fit_preprocessing`, the whole design matrix built once by `stages.model.design_matrix` "
        "as one float32 numpy array (train and the sampled valid part), given straight to "
        "`xgboost.QuantileDMatrix(X, label, weight, max_bin)` (no `DataIter`, no batches; the arrays are "
        "freed once quantised), then `xgboost.train` with the booster params of "
        "`XGBClassifier(**xgb).get_xgb_params()`, the same rounds and the same per-round evals on train and "
        "valid, and the model saved with `stages.model.save_model`. Both run as their own process (`bench.py "
        "_limit`); seconds are the process's wall clock (start-up and imports included), peak RSS is sampled "
        "like the stages'. `time x` and `RSS x` are train / limit; `start-up s` is the limit's wall clock outside its timed phases "
        "(interpreter start, imports, reading params, exit); `time x less start-up` subtracts it from both (both "
        "import `stages.train`, so train's is about the same). `CPU s` is the CPU time of the process tree, which other jobs' load distorts less "
        "than wall time. With `--train-repeats` N > 1, train and the limit ran N times each, alternated: the "
        "fastest run of each is shown (every run's seconds below the table) with the highest peak RSS of its runs.",
        "",
    ]
    rows = []
    for size in sizes:
        r, t, lim = runs[size], runs[size]["train"], runs[size]["limit"]
        ph = lim["phases"]
        same = "yes" if t["train_rows"] == lim["rows"] else f"**no** ({count(t['train_rows'])})"
        startup = lim["seconds"] - sum(ph.values())  # start-up, imports and exit: all but the timed phases
        compute_ratio = (t["seconds"] - startup) / max(lim["seconds"] - startup, 1e-9)
        rows.append(
            [f"{r['rows']:,}", f"{lim['rows']:,}", same, f"{lim['features']:,}", str(t["trees"]),
             f"{t['seconds']:.1f}", f"{lim['seconds']:.1f}", f"{t['seconds'] / lim['seconds']:.2f}x",
             f"{startup:.1f}", f"{compute_ratio:.2f}x", f"{t['cpu_seconds']:.0f} / {lim['cpu_seconds']:.0f}",
             f"{t['cpu_seconds'] / lim['cpu_seconds']:.2f}x",
             f"{t['peak_rss'] / GB:.2f} GB", f"{lim['peak_rss'] / GB:.2f} GB",
             f"{t['peak_rss'] / lim['peak_rss']:.2f}x", f"{lim['matrix_bytes'] / GB:.2f} GB",
             f"{ph['rows']:.1f} / {ph['matrix']:.1f} / {ph['dmatrix']:.1f} / {ph['boost']:.1f}",
             f"{t['load']:.1f} / {lim['load']:.1f}"]
        )  # fmt: skip
    lines += markdown_table(
        ["input rows", "train rows (limit)", "same rows in train", "features", "rounds", "train s", "limit s",
         "time x", "start-up s", "time x less start-up", "CPU s (train / limit)", "CPU x", "train peak RSS", "limit peak RSS", "RSS x", "limit's float32 arrays",
         "limit phases s: rows+fit / matrix / quantise / boost", "load"],
        rows,
    )  # fmt: skip
    repeated = [size for size in sizes if len(runs[size]["train"].get("all_seconds", [])) > 1]
    if repeated:
        lines.append("")
    for size in repeated:
        t, lim = runs[size]["train"], runs[size]["limit"]
        lines.append(
            f"- {human(runs[size]['rows'])} rows, seconds of each run: train "
            f"{', '.join(f'{x:.1f}' for x in t['all_seconds'])}; limit "
            f"{', '.join(f'{x:.1f}' for x in lim['all_seconds'])}"
        )
    lines += [
        "",
        "Agreement: both models score every valid row (unsampled, unweighted), each through its own encoder and "
        "scaler; the two are built differently (batched vs one-array quantile sketch), so their trees are not "
        "byte-equal and small metric differences are expected.",
        "",
    ]
    rows = []
    for size in sizes:
        a = runs[size]["limit"]["agree"]
        p, lim = a["pipeline"], a["limit"]
        auc_diff = "n/a" if p["roc_auc"] is None else f"{abs(p['roc_auc'] - lim['roc_auc']):.4f}"
        rows.append(
            [f"{runs[size]['rows']:,}", f"{a['valid_rows']:,}", f"{a['positives']:,}",
             f"{p['trees']} / {lim['trees']}", f"{metric(p['roc_auc'])} / {metric(lim['roc_auc'])}", auc_diff,
             f"{metric(p['ap'])} / {metric(lim['ap'])}", f"{a['mean_abs_diff']:.1e}", f"{a['max_abs_diff']:.1e}"]
        )  # fmt: skip
    lines += markdown_table(
        ["input rows", "valid rows", "positives", "trees (train / limit)", "ROC AUC (train / limit)",
         "AUC abs diff", "AP (train / limit)",
         "mean abs prob diff", "max abs prob diff"],
        rows,
    )  # fmt: skip
    return lines


FEATURIZE_COLUMNS = ["seconds", "rows/s", "vs default ceiling", "vs fast ceiling", "CPU s (tree)",
                     "per CPU-s vs fast ceiling", "load", "peak RSS (tree)"]  # fmt: skip


def featurize_cells(rows: int, run: dict, ceiling_rows: dict[str, float], fast_cpu_rows: float) -> list[str]:
    """A featurize run's figures (``FEATURIZE_COLUMNS``): ``ceiling_rows`` are the all-core rows/s of the default
    and fast ceilings, ``fast_cpu_rows`` the fast ceiling's rows per CPU second of one core."""
    rate = rows / run["seconds"]
    return [f"{run['seconds']:.1f}", f"{rate:,.0f}", f"{rate / ceiling_rows['default']:.2f}",
            f"{rate / ceiling_rows['fast']:.2f}", f"{run['cpu_seconds']:.0f}",
            f"{rows / run['cpu_seconds'] / fast_cpu_rows:.2f}", f"{run['load']:.1f}",
            f"{run['peak_rss'] / GB:.2f} GB"]  # fmt: skip


def all_core_rows(ceilings: dict[str, dict], rows_per_molecule: float, cores: int) -> dict[str, float]:
    """Each ceiling's rows/s on every core: its one-core molecules/s x rows a molecule x cores."""
    return {name: c["molecules_per_s"] * rows_per_molecule * cores for name, c in ceilings.items()}


def ceiling_line(
    name: str, what: str, ceiling: dict, cores: int, rows_per_molecule: float, rows: float
) -> str:
    """A ceiling's line in the report; ``rows``: its all-core rows/s (:func:`all_core_rows`)."""
    return (
        f"- {name}: `chem.featurize_smiles` with {what} on {ceiling['molecules']:,} unique cleaned SMILES in a "
        f"plain loop: {ceiling['molecules_per_s']:,.0f} molecules/s on one core "
        f"({1e6 / ceiling['molecules_per_s']:,.0f} us a molecule); x {cores} cores x {rows_per_molecule:.0f} rows "
        f"a molecule = **{rows:,.0f} rows/s** ({ceiling['molecules_per_cpu_s']:,.0f} molecules per CPU second)."
    )


def report(
    args, cores: int, runs: dict, naive_r: dict, ceilings_r: dict, n_bits: int, batch_rows: int
) -> str:
    sizes = sorted(runs)
    small, large = runs[sizes[0]], runs[sizes[-1]]
    rows_per_molecule = small["rows"] / small["molecules"]
    ceiling_r, fast_r = ceilings_r["default"], ceilings_r["fast"]
    per_s = all_core_rows(
        {"default": ceiling_r, "fast": fast_r}, rows_per_molecule, cores
    )  # not the helper's RSS
    ceiling_cpu_rows = fast_r["molecules_per_cpu_s"] * rows_per_molecule
    lines = [
        "# Benchmark: featurize and train at BELKA scale",
        "",
        f"Written by `python bench/bench.py --sizes {','.join(human(s) for s in sizes)}` on {cores} cores "
        f"({psutil.virtual_memory().total / GB:.0f} GB RAM), {time.strftime('%Y-%m-%d')}. Inputs from "
        f"`bench/belka_gen.py`: BELKA's format, {rows_per_molecule:.0f} adjacent rows (BRD4, HSA, sEH) per "
        f"molecule; featurize.batch_rows={batch_rows:,}, Morgan {n_bits} bits, a fresh feature cache per size. "
        "Peak RSS is the sum over the process tree (the stage and its pool workers) sampled every 0.2 s.",
        "",
        "## Baselines (on the smallest input)",
        "",
        f"- naive: polars `map_elements` calling RDKit per row, one process, every row parsed: "
        f"**{naive_r['rows_per_s']:,.0f} rows/s** (timed on the first {naive_r['rows']:,} rows; "
        f"{naive_r['rows'] / naive_r['compute_cpu']:,.0f} rows per CPU second).",
        ceiling_line(
            "RDKit ceiling, default parse",
            "`Chem.MolFromSmiles` (`fast=False`)",
            ceiling_r,
            cores,
            rows_per_molecule,
            per_s["default"],
        ),
        ceiling_line(
            "RDKit ceiling, fast parse", "`chem.parse`", fast_r, cores, rows_per_molecule, per_s["fast"]
        ),
        f"- The two alternate chunk by chunk in one process: the fast parse makes `featurize_smiles` "
        f"{fast_r['molecules_per_s'] / ceiling_r['molecules_per_s']:.2f}x faster.",
        "",
        "## Featurize",
        "",
        "`vs default ceiling` and `vs fast ceiling` compare wall-clock rows/s with each all-core ceiling's; "
        "`per CPU-s vs fast ceiling` compares rows per CPU second of the whole process tree with the fast "
        "ceiling's rows per CPU second of one core, which other jobs on the machine do not distort (`load`: the "
        f"machine's mean 1-minute load average during the run; {cores} means the cores were exactly busy).",
        "",
    ]
    featurize_rows = []
    for size in sizes:
        r, f = runs[size], runs[size]["featurize"]
        cells = featurize_cells(r["rows"], f, per_s, ceiling_cpu_rows)
        rate = r["rows"] / f["seconds"]
        featurize_rows.append(
            [f"{r['rows']:,}", f"{r['molecules']:,}", *cells, f"{rate / naive_r['rows_per_s']:.1f}x"]
        )
    lines += markdown_table(["rows", "molecules", *FEATURIZE_COLUMNS, "vs naive"], featurize_rows)
    appended = [s for s in sizes if "append" in runs[s]]
    if appended:
        lines += [
            "",
            f"## Appending {args.append_fraction:.0%} new rows (feature cache of the full run present, fresh output)",
            "",
        ]
        append_rows = []
        for size in appended:
            r, a = runs[size], runs[size]["append"]
            cost = a["seconds"] / r["featurize"]["seconds"]
            log_tail = a["log"].split(": ", 1)[-1]
            append_rows.append(
                [f"{r['rows']:,}", f"{a['rows']:,}", f"{a['seconds']:.1f}", f"{cost:.2f}",
                 f"{a['peak_rss'] / GB:.2f} GB", log_tail]
            )  # fmt: skip
        lines += markdown_table(
            ["rows before", "rows after", "seconds", "vs full run", "peak RSS", "featurize's log"],
            append_rows,
            text_columns=1,
        )
    trained = [s for s in sizes if "train" in runs[s]]
    if trained:
        lines += [
            "",
            f"## Train (train.negative_sample_rate={args.negative_sample_rate}, split.valid_fraction from params, "
            "QuantileDMatrix in memory)",
            "",
        ]
        train_rows = []
        for size in trained:
            r, t = runs[size], runs[size]["train"]
            train_rows.append(
                [f"{r['rows']:,}", count(t["train_rows"]), str(t["trees"]), f"{t['seconds']:.1f}",
                 f"{t['cpu_seconds']:.0f}", f"{t['load']:.1f}", f"{t['peak_rss'] / GB:.2f} GB"]
            )  # fmt: skip
        lines += markdown_table(
            ["input rows", "sampled train rows", "trees", "seconds", "CPU s", "load", "peak RSS (tree)"],
            train_rows,
        )
    limited = [s for s in trained if "limit" in runs[s]]
    if limited:
        lines += ["", *limit_section(runs, limited)]

    large_rate = large["rows"] / large["featurize"]["seconds"]
    rss_ratio = large["featurize"]["peak_rss"] / small["featurize"]["peak_rss"]
    targets: list[list[str]] = []

    def target(name: str, measured: str, met: bool) -> None:
        targets.append([name, measured, "yes" if met else "**no**"])

    ratio = large_rate / per_s["fast"]
    target(
        f"featurize rows/s >= 0.8 x fast ceiling ({human(large['rows'])} rows)", f"{ratio:.2f}", ratio >= 0.8
    )
    old = large_rate / per_s["default"]
    target("featurize rows/s >= 1.3 x default-parse ceiling", f"{old:.2f}", old >= 1.3)
    cpu_ratio = large["rows"] / large["featurize"]["cpu_seconds"] / ceiling_cpu_rows
    target("... the same per CPU second (contention-free)", f"{cpu_ratio:.2f}", cpu_ratio >= 0.8)
    speedup = large_rate / naive_r["rows_per_s"]
    target("featurize vs naive (about 5x on 2 cores)", f"{speedup:.1f}x", speedup >= 2.5 * cores * 0.8)
    if len(sizes) > 1:
        target(
            f"peak RSS at {human(large['rows'])} <= 1.5 x at {human(small['rows'])}",
            f"{rss_ratio:.2f} ({large['featurize']['peak_rss'] / GB:.2f} / "
            f"{small['featurize']['peak_rss'] / GB:.2f} GB)",
            rss_ratio <= 1.5,
        )
    peak = large["featurize"]["peak_rss"]
    target(f"peak RSS at {human(large['rows'])} < 4 GB", f"{peak / GB:.2f} GB", peak < 4 * GB)
    for size in appended:
        cost = runs[size]["append"]["seconds"] / runs[size]["featurize"]["seconds"]
        target(
            f"append {args.append_fraction:.0%} to {human(size)} <= 0.2 x full run",
            f"{cost:.2f}",
            cost <= 0.2,
        )
    if len(trained) > 1:
        t0, t1 = runs[trained[0]], runs[trained[-1]]
        rss_growth = t1["train"]["peak_rss"] / t0["train"]["peak_rss"]
        input_growth = t1["rows"] / t0["rows"]
        target(
            "train peak RSS grows slower than its input",
            f"RSS x{rss_growth:.2f} for input x{input_growth:.1f}",
            rss_growth < input_growth,
        )

    lines += ["", "## Targets", "", *markdown_table(["target", "measured", "met"], targets, text_columns=3)]

    per_core = large_rate / cores
    fp_bytes = n_bits // 8
    sampled = (0.0054 + args.negative_sample_rate) * BELKA_ROWS * 0.7
    growth = (peak - small["featurize"]["peak_rss"]) / max(large["molecules"] - small["molecules"], 1)
    lines += [
        "",
        f"## Projection to BELKA's {BELKA_ROWS:,} rows ({BELKA_MOLECULES:,} molecules)",
        "",
        f"- featurize at {large_rate:,.0f} rows/s ({per_core:,.0f} rows/s a core): "
        f"{BELKA_ROWS / large_rate / 3600:.1f} h on these {cores} cores, "
        f"{BELKA_ROWS / per_core / 16 / 3600:.1f} h on 16 cores, {BELKA_ROWS / per_core / 32 / 3600:.1f} h on 32 "
        "(linear in cores: the pipeline keeps every worker busy, but more than 2 cores were not measured).",
        f"- featurize memory: a batch of {batch_rows:,} rows and the pool are fixed; what grows is the set of "
        f"molecules seen (16 B each, key and check hash: {BELKA_MOLECULES * 16 / GB:.2f} GB) and the "
        f"feature-cache index (16 B each, key, part and row: {BELKA_MOLECULES * 16 / GB:.2f} GB, only when the "
        f"cache holds them). Measured growth of peak RSS: {growth:.0f} B per extra molecule.",
        f"- features on disk: {BELKA_MOLECULES / 1e6:.0f}M molecules x {n_bits} bits packed = {fp_bytes} B each "
        f"= {BELKA_MOLECULES * fp_bytes / GB:.0f} GB (at 2048 bits: 256 B each = "
        f"{BELKA_MOLECULES * 256 / GB:.0f} GB), against {BELKA_ROWS * 2048 / GB:.0f} GB for one byte per bit per "
        f"row at 2048 bits ({BELKA_ROWS * n_bits / GB:.0f} GB at {n_bits}).",
        "- train: XGBoost's quantised matrix holds about 1 byte per feature value of the (sampled) train rows: "
        f"at negative_sample_rate={args.negative_sample_rate}, about {sampled / 1e6:.0f}M rows x "
        f"{n_bits + 6} features = {sampled * (n_bits + 6) / GB:.0f} GB in memory; train.data_mode=external pages "
        "it to disk instead.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
