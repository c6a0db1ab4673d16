"""Featurize and train at BELKA scale: throughput against the naive way and the RDKit ceiling, peak memory of the
whole process tree, the cost of appending rows, and train against its in-memory limit. A script that measures and
reports; it asserts nothing.

    python bench/bench.py run --sizes 1M,4M,16M --json bench/results/bench.json   # measure, print the report
    python bench/bench.py run --sizes 3000,9000 --train-sizes 9000 --trees 5 --results /tmp/r.md   # a smoke run
    python bench/bench.py report bench/results/bench.json                         # the report again, from JSON

``run`` measures and writes its results as JSON (``--json``) and the report as Markdown (``--results``; printed
either way): the first section of ``bench/RESULTS.md``. ``report`` is the pure step from results to Markdown
(``bench/report.py``). Every stage runs as its own ``python -m stages.<name>`` process, and so does each baseline
(``naive``, ``ceiling``: ``bench/baselines.py``) and train's in-memory limit (``limit``, ``agree``:
``bench/train_limit.py``); a thread sums the RSS of that process and all its children (the featurize pool) every
0.2 s, and the peak of the sum is reported.
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if sys.path[0] != str(ROOT):  # before this script's folder, where `bench` would be this file, not the package
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import yaml  # noqa: E402

from bench.common import GB, fastest, human, parse_size, publish, run_measured  # noqa: E402


def helper(args: list[str], log_path: Path) -> dict:
    """Run one of this script's measuring subcommands in its own process; it prints one JSON line last."""
    measured = run_measured([sys.executable, __file__, *args], log_path)
    result = json.loads(log_path.read_text().strip().splitlines()[-1])
    return {**measured, **result}


def write_params(path: Path, args: argparse.Namespace, trees: int) -> Path:
    params = copy.deepcopy(yaml.safe_load((ROOT / "params.yaml").read_text()))
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


class Bench:
    """One ``run``: its arguments, work directory and logs."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args, self.work = args, args.workdir
        self.logs = self.work / "logs"
        self.params = self.work / "params.yaml"

    def featurize_command(self, tag: str) -> list[str]:
        cache = self.work / f"cache-{tag}"
        return [sys.executable, "-m", "stages.featurize", "--params", str(self.params), "--cache", str(cache)]

    def baselines(self, data: Path) -> tuple[dict, dict]:
        args, params = self.args, str(self.params)
        naive = helper(["naive", str(data), str(args.naive_rows), params], self.logs / "naive.log")
        ceilings = helper(
            ["ceiling", str(data), str(args.ceiling_molecules), params], self.logs / "ceiling.log"
        )
        print(f"naive: {naive['rows_per_s']:,.0f} rows/s on {naive['rows']:,} rows", flush=True)
        print(
            f"ceilings on one core: {ceilings['default']['molecules_per_s']:,.0f} molecules/s (default parse), "
            f"{ceilings['fast']['molecules_per_s']:,.0f} (fast parse)",
            flush=True,
        )
        return naive, {name: ceilings[name] for name in ("default", "fast")}

    def featurize(self, tag: str, data: Path, out: Path) -> dict:
        feat = run_measured(
            [*self.featurize_command(tag), "--input", str(data), "--output", str(out)],
            self.logs / f"featurize-{tag}.log",
        )
        print(
            f"[{tag}] featurize {feat['seconds']:.1f}s, peak RSS {feat['peak_rss'] / GB:.2f} GB", flush=True
        )
        return feat

    def append(self, size: int, tag: str) -> dict:
        """featurize on the input grown by ``--append-fraction``, with the full run's feature cache."""
        from bench.belka_gen import write_belka

        bigger, out = self.work / f"input-{tag}-appended.parquet", self.work / f"features-{tag}-appended"
        more = write_belka(bigger, int(size * (1 + self.args.append_fraction)))
        log = self.logs / f"append-{tag}.log"
        app = run_measured([*self.featurize_command(tag), "--input", str(bigger), "--output", str(out)], log)
        app["rows"] = more["rows"]
        app["log"] = log.read_text().strip().splitlines()[-1]
        print(
            f"[{tag}] +{self.args.append_fraction:.0%} appended: {app['seconds']:.1f}s; {app['log']}",
            flush=True,
        )
        bigger.unlink()
        shutil.rmtree(out)
        return app

    def split(self, params: Path, features: Path, split: Path) -> None:
        command = [sys.executable, "-m", "stages.split", "--params", str(params), "--rows", str(features / "rows"),
                   "--train", str(split / "train"), "--valid", str(split / "valid"),
                   "--summary", str(split / "summary.json")]  # fmt: skip
        subprocess.run(command, cwd=ROOT, check=True, capture_output=True)

    def train(self, size: int, tag: str, features: Path) -> tuple[dict, dict]:
        """train and its in-memory limit on the same split, alternated ``--train-repeats`` times (so a burst of
        load hits both alike); the fastest of each, and both models scored on the valid part."""
        args, work, logs = self.args, self.work, self.logs
        trees = args.trees if size <= args.sizes[0] else args.trees_large
        params = write_params(work / f"params-{tag}.yaml", args, trees)
        split, models, limit_dir = work / f"split-{tag}", work / f"models-{tag}", work / f"limit-model-{tag}"
        self.split(params, features, split)
        train_cmd = [sys.executable, "-m", "stages.train", "--params", str(params), "--rows", str(split / "train"),
                     "--features", str(features), "--models", str(models), "--live", str(work / f"live-{tag}")]  # fmt: skip
        limit_cmd = ["limit", str(params), str(split), str(features), str(limit_dir)]
        trains, limits = [], []
        for _ in range(args.train_repeats):
            trains.append(run_measured(train_cmd, logs / f"train-{tag}.log"))
            limits.append(helper(limit_cmd, logs / f"limit-{tag}.log"))
        train, lim = fastest(trains), fastest(limits)
        train["trees"] = trees
        # manifest.json's train_rows counts rows before negative sampling; train's log has the sampled rows
        trained = re.search(r"model on (\d+) rows", (logs / f"train-{tag}.log").read_text())
        train["train_rows"] = int(trained.group(1)) if trained else None
        print(f"[{tag}] train {train['seconds']:.1f}s, peak RSS {train['peak_rss'] / GB:.2f} GB", flush=True)
        batch_rows = yaml.safe_load(params.read_text())["featurize"]["batch_rows"]
        agree = ["agree", str(split), str(features), str(models), str(limit_dir), str(batch_rows)]
        lim["agree"] = helper(agree, logs / f"agree-{tag}.log")
        print(
            f"[{tag}] in-memory limit {lim['seconds']:.1f}s, peak RSS {lim['peak_rss'] / GB:.2f} GB "
            f"(train/limit: time {train['seconds'] / lim['seconds']:.2f}x, "
            f"RSS {train['peak_rss'] / lim['peak_rss']:.2f}x)",
            flush=True,
        )
        shutil.rmtree(split)
        return train, lim

    def size(self, size: int, baselines: dict) -> dict:
        """Everything measured at one input size; the baselines on the smallest."""
        from bench.belka_gen import write_belka

        args, tag = self.args, human(size)
        data = self.work / f"input-{tag}.parquet"
        start = time.perf_counter()
        counts = write_belka(data, size)
        run = {
            "rows": counts["rows"],
            "molecules": counts["molecules"],
            "generate_s": time.perf_counter() - start,
        }
        print(f"[{tag}] generated {counts['rows']:,} rows in {run['generate_s']:.1f}s", flush=True)
        if not baselines:
            baselines["naive"], baselines["ceilings"] = self.baselines(data)
        out = self.work / f"features-{tag}"
        run["featurize"] = self.featurize(tag, data, out)
        if size in args.append_sizes:
            run["append"] = self.append(size, tag)
        if size in args.train_sizes:
            run["train"], run["limit"] = self.train(size, tag, out)
        data.unlink()
        shutil.rmtree(out)
        shutil.rmtree(self.work / f"cache-{tag}")
        return run

    def run(self) -> dict:
        from stages.params import available_cores

        args = self.args
        cores = args.workers or available_cores()
        if self.work.exists():
            shutil.rmtree(self.work)
        self.logs.mkdir(parents=True)
        print(
            f"bench: {cores} cores, sizes {[human(s) for s in args.sizes]}, work dir {self.work}", flush=True
        )
        params = yaml.safe_load(write_params(self.params, args, args.trees).read_text())
        baselines: dict = {}
        runs = {size: self.size(size, baselines) for size in args.sizes}
        return {
            "cores": cores,
            "ram_bytes": psutil.virtual_memory().total,
            "date": time.strftime("%Y-%m-%d"),
            "append_fraction": args.append_fraction,
            "negative_sample_rate": args.negative_sample_rate,
            "n_bits": params["featurize"]["fingerprint"]["n_bits"],
            "batch_rows": params["featurize"]["batch_rows"],
            **baselines,
            "runs": runs,
        }


def sizes(text: str) -> list[int]:
    return sorted(parse_size(s) for s in text.split(","))


def run_command(args: argparse.Namespace) -> int:
    from bench.report import report

    args.train_sizes = args.train_sizes or args.sizes
    args.append_sizes = args.append_sizes or args.sizes
    results = Bench(args).run()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    publish(report(results), args.results)
    if not args.keep:
        shutil.rmtree(args.workdir)
    return 0


def report_command(args: argparse.Namespace) -> int:
    from bench.report import report

    publish(report(json.loads(args.results_json.read_text())), args.results)
    return 0


def measure_command(args: argparse.Namespace) -> int:
    """A baseline or the limit, in this process; its result is the last line printed, as JSON."""
    from bench import baselines, train_limit

    if args.command == "naive":
        result = baselines.naive(args.source, args.rows, args.params)
    elif args.command == "ceiling":
        result = baselines.ceiling(args.source, args.molecules, args.params)
    elif args.command == "limit":
        result = train_limit.limit(args.params, args.split, args.features, args.model)
    else:
        result = train_limit.agree(
            args.split, args.features, args.pipeline_model, args.limit_model, args.batch_rows
        )
    print(json.dumps(result))
    return 0


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = top.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="measure featurize and train at each size; print the report")
    run.add_argument(
        "--sizes", type=sizes, default=sizes("1M,4M,16M"), help="input sizes in rows, e.g. 1M,4M,16M"
    )
    run.add_argument("--train-sizes", type=sizes, help="sizes to train on (default: all)")
    run.add_argument(
        "--append-sizes", type=sizes, help="sizes to append 10%% to and refeaturize (default: all)"
    )
    run.add_argument("--append-fraction", type=float, default=0.1)
    run.add_argument("--naive-rows", type=parse_size, default=30_000, help="rows the naive way parses")
    run.add_argument("--ceiling-molecules", type=parse_size, default=20_000)
    run.add_argument("--workers", type=int, default=0, help="resources.workers (0 = every core)")
    run.add_argument(
        "--batch-rows", type=parse_size, default=0, help="featurize.batch_rows (default: params)"
    )
    run.add_argument("--trees", type=int, default=50, help="xgb.n_estimators at the smallest size")
    run.add_argument("--trees-large", type=int, default=20, help="xgb.n_estimators at the larger sizes")
    run.add_argument("--negative-sample-rate", type=float, default=0.05)
    run.add_argument("--train-repeats", type=int, default=1,
                     help="run train and its in-memory limit this many times each, alternated; report the fastest of each")  # fmt: skip
    run.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work")
    run.add_argument("--json", type=Path, help="write the results here (the input of `report`)")
    run.add_argument("--results", type=Path, help="write the Markdown report here too")
    run.add_argument("--keep", action="store_true", help="keep the work directory")
    run.set_defaults(func=run_command)

    report = sub.add_parser("report", help="the Markdown report of a run's JSON results")
    report.add_argument("results_json", type=Path)
    report.add_argument("--results", type=Path, help="write the report here too")
    report.set_defaults(func=report_command)

    naive = sub.add_parser("naive", help="the naive way's rows/s (polars map_elements calling RDKit)")
    naive.add_argument("source")
    naive.add_argument("rows", type=int)
    naive.add_argument("params")
    ceiling = sub.add_parser("ceiling", help="RDKit's ceilings on one core, default and fast parse")
    ceiling.add_argument("source")
    ceiling.add_argument("molecules", type=int)
    ceiling.add_argument("params")
    limit = sub.add_parser("limit", help="train's rows as one in-memory array given to XGBoost")
    for name in ("params", "split", "features", "model"):
        limit.add_argument(name)
    agree = sub.add_parser("agree", help="train's model and the limit's, scored on the valid part")
    for name in ("split", "features", "pipeline_model", "limit_model"):
        agree.add_argument(name)
    agree.add_argument("batch_rows", type=int)
    for measure in (naive, ceiling, limit, agree):
        measure.set_defaults(func=measure_command)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
