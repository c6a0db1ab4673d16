"""The whole DAG at a given size, stage by stage: `dvc repro` from nothing, then scenario A (append 10% new training
rows), B (`dvc exp run -S xgb.max_depth=8`) and C (new test data). A script that prints figures; it asserts nothing.

    python bench/scale.py run --rows 1M,3M             # writes bench/results/scale-1M.json, scale-3M.json
    python bench/scale.py report                        # the tables of every bench/results/scale-*.json
    python bench/scale.py run --rows 30k --set xgb.n_estimators=5 --results-dir /tmp/r   # a smoke run

For each size, in a fresh copy of the project (``bench/scenario_a.py``'s: the working tree's files, committed in a
new git repository): BELKA-shaped data (``bench/belka_gen.py``: 271 / 693 / 872 building blocks, 3 proteins a
molecule, ~0.5% positives, a test file like Kaggle's) under ``data/raw/``, ``inputs`` pointing at it, and the
README's full-BELKA settings (``SETTINGS``), then the scenarios, each one real `dvc` command over every stage but
``generate`` (its data is not read).

How it measures, and why:

- Each stage's wall and CPU time come from the stage's own process: a ``sitecustomize`` on ``PYTHONPATH`` records,
  at exit of every ``python -m stages.<name>`` however it was started (`dvc repro`, `dvc exp run`), its wall time
  and its ``getrusage`` CPU time (user + sys) of itself and of its children, which are exact (the kernel's
  accounting, no sampling): the RDKit pool's workers are joined before the interpreter's exit handlers run. CPU on
  the main thread (``time.thread_time()``) is recorded apart: the rest (XGBoost's and polars' threads, featurize's
  worker processes) is the work that more cores share, which the projection uses.
- Peak RSS is sampled from outside every ``SAMPLE_S`` seconds: the VmRSS of every process under the `dvc` command,
  each attributed to the stage whose ``python -m stages.<name>`` is it or its ancestor, summed per stage and for
  the whole tree (`dvc` included). ``ru_maxrss`` cannot give this: it is one process's peak, not a tree's sum at one
  moment. Shared pages count once per process (an upper bound); a spike shorter than the interval can be missed.
- Bytes written: each stage's outputs as `dvc.lock` records them (``size``), and the growth of the feature cache
  (a private, empty one per size, shared by the scenarios of that size) and of DVC's cache.
- rows/s: the training rows for the training side's stages, the test rows for ``featurize@test`` and ``predict``.

Results go to ``bench/results/scale-<rows>.json``; ``report`` (the pure function ``markdown``) turns them into the
tables: per stage, the growth exponents across sizes, and the projection to BELKA's 295,246,830 rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
import yaml  # noqa: E402

from bench import belka_gen  # noqa: E402
from bench.common import BELKA_ROWS, GB, TreeRss, human, markdown_table, parse_size, publish  # noqa: E402
from bench.scenario_a import FEATURIZED, Bench, make_origin  # noqa: E402

BELKA_TEST_ROWS = 1_674_896
TRAIN_FILE, TEST_FILE = "data/raw/train.parquet", "data/raw/test.parquet"
SETTINGS = {  # the README's settings for full BELKA
    "inputs.train": TRAIN_FILE,
    "inputs.test": TEST_FILE,
    "featurize.fingerprint.n_bits": 2048,
    "split.held_out_building_blocks": 0.1,
    "split.valid_fraction": 0.02,
    "train.negatives_per_positive": 20,
    "train.final_fit": True,
}
SCENARIOS = ("from nothing", "A: append 10%", "B: xgb.max_depth=8", "C: new test data")
TEST_SIDE = ("featurize@test", "predict")  # their rows are the test rows
BELKA_TEST_MOLECULES = 878_022
FIT_ESTIMATE = re.compile(  # stages.memory's line before a fit reads any row
    r"(?P<fit>split|final|half) fit: [\d,]+ rows kept x [\d,]+ features .*? needs about (?P<gb>[\d.]+) GB in memory"
)
FIT_STAGES = {"split": "train", "final": "final", "half": "learning_curve"}
OPENMP_STAGES = (
    "train",
    "final",
    "learning_curve",
    "evaluate",
    "predict",
)  # XGBoost's threads: the main thread is one of them
PROXIES = {"featurize@test": ("featurize@train", 3 * BELKA_TEST_MOLECULES)}  # stage -> (runs to fit, at rows)
# Where more cores help (the projection's assumption): featurize's RDKit pool, XGBoost's threads (train, final,
# predict and evaluate's scoring), polars' threads. Measured, not assumed: the CPU off the main thread.
CORES = (2, 16, 64)
SAMPLE_S = 0.2
DEFAULT_RESULTS = ROOT / "bench" / "results"

# Records every `python -m stages.<name>` process's wall and CPU time at its exit, one JSON line in $SCALE_RECORDS.
SITECUSTOMIZE = """\
import atexit, json, os, resource, sys, time
_argv = list(getattr(sys, "orig_argv", []))
if os.environ.get("SCALE_RECORDS") and "-m" in _argv and _argv[_argv.index("-m") + 1 :][:1] != [] \\
        and _argv[_argv.index("-m") + 1].startswith("stages."):
    _start = time.perf_counter()

    def _record():
        own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        record = {
            "argv": _argv,
            "wall_s": time.perf_counter() - _start,
            "cpu_s": own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime,
            "main_thread_cpu_s": time.thread_time(),
        }
        with open(os.environ["SCALE_RECORDS"], "a") as file:
            file.write(json.dumps(record) + "\\n")

    atexit.register(_record)
"""


def stage_name(argv: list[str]) -> str | None:
    """The dvc stage a command line runs: ``python -m stages.featurize --side train`` is featurize@train."""
    if (
        "-m" not in argv
        or not argv[argv.index("-m") + 1 :][:1]
        or not argv[argv.index("-m") + 1].startswith("stages.")
    ):
        return None
    name = argv[argv.index("-m") + 1].removeprefix("stages.")
    side = argv[argv.index("--side") + 1 :][:1] if "--side" in argv else []
    return f"{name}@{side[0]}" if side else name


# ---------------------------------------------------------------------------------------------- measuring


class StageRss(TreeRss):
    """Peak summed RSS of a process tree, in all and per stage (a process belongs to the stage whose
    ``python -m stages.<name>`` is it or its nearest such ancestor), sampled every ``SAMPLE_S`` seconds."""

    def __init__(self, pid: int, progress: str) -> None:
        super().__init__(pid, SAMPLE_S)
        self.progress, self.stages = progress, {}  # stage -> peak RSS
        self.names: dict[int, str | None] = {}  # pid -> its own stage (None: not a stage command)

    def _own_stage(self, proc: psutil.Process) -> str | None:
        if proc.pid not in self.names:
            with contextlib.suppress(psutil.Error):
                self.names[proc.pid] = stage_name(proc.cmdline())
                if self.names[proc.pid]:
                    print(f"  {self.progress}: {self.names[proc.pid]} started", file=sys.stderr, flush=True)
        return self.names.get(proc.pid)

    def sample(self, procs: list[psutil.Process]) -> None:
        rss, parent = {}, {}
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                rss[proc.pid], parent[proc.pid] = proc.memory_info().rss, proc.ppid()
                self._own_stage(proc)
        per_stage: dict[str, int] = {}
        for pid, size in rss.items():
            owner = pid
            while owner in rss and not self.names.get(owner):
                owner = parent[owner]
            if self.names.get(owner):
                per_stage[self.names[owner]] = per_stage.get(self.names[owner], 0) + size
        self.peak = max(self.peak, sum(rss.values()))
        for stage, size in per_stage.items():
            self.stages[stage] = max(self.stages.get(stage, 0), size)


def tree_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (0 when it does not exist)."""
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def lock_outputs(repo: Path) -> dict[str, int]:
    """Bytes of each stage's outputs, as dvc.lock records them."""
    lock = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {stage: sum(out.get("size", 0) for out in entry.get("outs", [])) for stage, entry in lock.items()}


class Pipeline:
    """One size's project copy, its caches and its data, and the measured scenarios."""

    def __init__(self, work: Path, rows: int, overrides: dict[str, object]) -> None:
        self.work, self.rows_asked = work, rows
        self.records = work / "stage-records.jsonl"
        self.feature_cache = work / "feature-cache"
        (work / "timing").mkdir(parents=True)
        (work / "timing" / "sitecustomize.py").write_text(SITECUSTOMIZE)
        env = {key: value for key, value in os.environ.items() if not key.startswith(("BELKA_", "DASK_"))}
        env.update(
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            PYTHONPATH=str(work / "timing"),
            SCALE_RECORDS=str(self.records),
            BELKA_FEATURE_CACHE=str(self.feature_cache),
            BELKA_PROGRESS="0",
            XDG_CACHE_HOME=str(work / "user-cache"),
            DVC_NO_ANALYTICS="1",
            GIT_AUTHOR_NAME="bench",
            GIT_AUTHOR_EMAIL="bench@example.invalid",
            GIT_COMMITTER_NAME="bench",
            GIT_COMMITTER_EMAIL="bench@example.invalid",
        )
        self.bench = Bench(work, env, work / "unused-timings.jsonl")
        self.repo, _ = make_origin(self.bench, None)
        params = yaml.safe_load((self.repo / "params.yaml").read_text())
        for key, value in {**SETTINGS, **overrides}.items():
            *path, last = key.split(".")
            section = params
            for part in path:
                section = section[part]
            if last not in section:
                raise SystemExit(f"error: params.yaml has no {key}")
            section[last] = value
        (self.repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        with (self.repo / ".gitignore").open("a") as ignore:
            ignore.write("/data/raw/\n")
        self.bench.git(self.repo, "commit", "-q", "-am", "scale benchmark settings")
        stages = self.bench.dvc(self.repo, "stage", "list", "--name-only").split()
        self.targets = [name for name in stages if name != "generate"]  # generate's data is not read
        self.train_rows = self.test_rows = self.molecules = 0

    def write_train(self, rows: int) -> float:
        start = time.perf_counter()
        counts = belka_gen.write_shaped_train(self.repo / TRAIN_FILE, rows)
        self.train_rows, self.molecules = counts["rows"], counts["molecules"]
        return time.perf_counter() - start

    def write_test(self, version: int) -> float:
        start = time.perf_counter()
        self.test_rows = belka_gen.write_shaped_test(self.repo / TEST_FILE, self.molecules, version)["rows"]
        return time.perf_counter() - start

    def measure(self, scenario: str, command: list[str]) -> dict:
        """Run one dvc command in the project; the scenario's figures and each stage's."""
        log_path = self.work / f"{scenario.split(':')[0].replace(' ', '-')}.log"
        mark = len(self.records.read_text().splitlines()) if self.records.exists() else 0
        caches = {name: tree_bytes(path) for name, path in self.caches().items()}
        outputs = lock_outputs(self.repo) if (self.repo / "dvc.lock").exists() else {}
        children, load = resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0]
        print(f"[{human(self.rows_asked)}] {scenario}: {' '.join(command)}", file=sys.stderr, flush=True)
        start = time.perf_counter()
        with log_path.open("w") as log:
            proc = subprocess.Popen(
                command, cwd=self.repo, env=self.bench.env, stdout=log, stderr=subprocess.STDOUT
            )
            with StageRss(proc.pid, f"[{human(self.rows_asked)}] {scenario}") as rss:
                code = proc.wait()
        wall = time.perf_counter() - start
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code != 0:
            raise SystemExit(
                f"error: {' '.join(command)} failed ({code}); see {log_path}:\n{log_path.read_text()[-3000:]}"
            )
        log = log_path.read_text()
        written = lock_outputs(self.repo)
        estimates = {FIT_STAGES[m["fit"]]: round(float(m["gb"]) * GB) for m in FIT_ESTIMATE.finditer(log)}
        stages = []
        for line in self.records.read_text().splitlines()[mark:]:
            record = json.loads(line)
            name = stage_name(record["argv"])
            rows = self.test_rows if name in TEST_SIDE else self.train_rows
            featurized = [
                m.group(0)
                for m in FEATURIZED.finditer(log)
                if name.startswith("featurize")
                and m["source"] == (TEST_FILE if name in TEST_SIDE else TRAIN_FILE)
            ]
            stages.append(
                {
                    "stage": name,
                    "rows": rows,
                    "wall_s": record["wall_s"],
                    "cpu_s": record["cpu_s"],
                    "main_thread_cpu_s": record["main_thread_cpu_s"],
                    "peak_rss": rss.stages.get(name, 0),
                    "output_bytes": written.get(name, 0),
                    "log": featurized[0] if featurized else "",
                    "memory_estimate": estimates.get(name),
                }
            )
            print(
                f"  {name}: {record['wall_s']:.1f} s, {record['cpu_s']:.1f} CPU s, "
                f"{rss.stages.get(name, 0) / GB:.2f} GB",
                file=sys.stderr,
                flush=True,
            )
        grown = {name: tree_bytes(path) - caches[name] for name, path in self.caches().items()}
        changed = sum(size for name, size in written.items() if size != outputs.get(name))
        return {
            "scenario": scenario,
            "command": " ".join(command[2:] if command[1:2] == ["-m"] else command),
            "train_rows": self.train_rows,
            "test_rows": self.test_rows,
            "wall_s": wall,
            "cpu_s": after.ru_utime + after.ru_stime - children.ru_utime - children.ru_stime,
            "peak_rss": rss.peak,
            "output_bytes": changed,
            "feature_cache_bytes": grown["feature cache"],
            "dvc_cache_bytes": grown["DVC cache"],
            "load": [load, os.getloadavg()[0]],
            "stages": stages,
        }

    def caches(self) -> dict[str, Path]:
        return {"feature cache": self.feature_cache, "DVC cache": self.repo / ".dvc" / "cache"}

    def run(self, save: Callable[[dict], None], scenario_count: int = len(SCENARIOS)) -> None:
        """Write the data, run the scenarios in turn, and ``save`` the result after each (a long run that stops
        keeps what it measured; ``complete`` says whether every scenario ran)."""
        dvc, commit = [sys.executable, "-m", "dvc"], git_head()
        seconds = {"train data": self.write_train(self.rows_asked), "test data": self.write_test(0)}
        base = {"rows": self.train_rows, "molecules": self.molecules, "test_rows": self.test_rows}
        changes = {
            SCENARIOS[1]: lambda: seconds.update(
                {"appended train data": self.write_train(round(base["rows"] * 1.1))}
            ),
            SCENARIOS[3]: lambda: seconds.update({"new test data": self.write_test(1)}),
        }
        commands = {SCENARIOS[2]: [*dvc, "exp", "run", "-S", "xgb.max_depth=8", *self.targets]}
        scenarios = []
        for scenario in SCENARIOS[:scenario_count]:
            changes.get(scenario, lambda: None)()
            scenarios.append(self.measure(scenario, commands.get(scenario, [*dvc, "repro", *self.targets])))
            params = yaml.safe_load((self.repo / "params.yaml").read_text())
            save({
                **base, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
                "memory_bytes": psutil.virtual_memory().total, "commit": commit,
                "settings": {key: lookup(params, key) for key in [*SETTINGS, "xgb.n_estimators", "train.model"]},
                "data_seconds": seconds, "complete": len(scenarios) == len(SCENARIOS), "scenarios_asked": scenario_count,
                "scenarios": scenarios,
            })  # fmt: skip


def completeness(result: dict) -> str:
    """What a size's heading says of its scenarios: nothing when all ran, how many when fewer were asked for
    (``--scenarios``), or that the run stopped."""
    if result.get("complete", True):
        return ""
    ran = len(result["scenarios"])
    if result.get("scenarios_asked") == ran:
        return f", the first {ran} of {len(SCENARIOS)} scenarios (--scenarios {ran})"
    return ", stopped before the end"


def lookup(params: dict, key: str) -> object:
    for part in key.split("."):
        params = params[part]
    return params


def git_head() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    return done.stdout.strip() + ("+changes" if dirty else "")


# ---------------------------------------------------------------------------------------------- the report


def exponent(xs: list[float], ys: list[float]) -> float | None:
    """The least-squares slope of log y against log x (None for fewer than two sizes or a non-positive value)."""
    if len(xs) < 2 or min(ys) <= 0:
        return None
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((x - mx) ** 2 for x in lx)
    return sum((x - mx) * (y - my) for x, y in zip(lx, ly, strict=True)) / var if var else None


def project(xs: list[float], ys: list[float], target: float) -> float:
    """``y`` at ``target`` rows from two sizes or more: a fixed part plus a part per row, fitted by least squares
    (start-up costs stay fixed), or a power law of the fitted exponent from the largest size where growth is faster
    than linear (an exponent over 1.1, or a negative fixed part)."""
    growth = exponent(xs, ys)
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)
    fixed = my - slope * mx
    if (growth is not None and growth > 1.1) or fixed < 0:
        return ys[-1] * (target / xs[-1]) ** max(growth or 1.0, 1.0)
    return fixed + slope * target if slope > 0 else ys[-1]


def fmt_exp(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    return f"{n / 1e6:,.0f} MB" if n < GB else f"{n / GB:,.2f} GB"


def fmt_hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def opt(value: float | None, spec: str, scale: float = 1.0) -> str:
    """A figure that a stopped run may lack (None: "n/a")."""
    return "n/a" if value is None else format(value / scale, spec)


def own_dvc(scenario: dict) -> dict:
    """DVC's own share of a scenario (checking, hashing and caching): the command's figures less its stages'."""
    return {
        key: None if scenario[key] is None else scenario[key] - sum(s[key] for s in scenario["stages"])
        for key in ("wall_s", "cpu_s")
    }


def size_section(result: dict) -> list[str]:
    stages = [
        [scenario["scenario"], s["stage"], f"{s['wall_s']:.1f}", f"{s['cpu_s']:.1f}", f"{s['peak_rss'] / GB:.2f}",
         fmt_bytes(s["output_bytes"]), f"{s['rows']:,}", f"{s['rows'] / s['wall_s']:,.0f}"]
        for scenario in result["scenarios"]
        for s in scenario["stages"]
    ]  # fmt: skip
    summary = [
        [s["scenario"], opt(s["wall_s"], ".1f"), opt(own_dvc(s)["wall_s"], ".1f"), opt(s["cpu_s"], ".1f"),
         opt(s["peak_rss"], ".2f", GB), fmt_bytes(s["output_bytes"]),
         fmt_bytes(s["feature_cache_bytes"]),
         fmt_bytes(s["dvc_cache_bytes"]), " / ".join(opt(x, ".1f") for x in s["load"]), f"`{s['command']}`"]
        for s in result["scenarios"]
    ]  # fmt: skip
    settings = ", ".join(f"`{key}: {json.dumps(value)}`" for key, value in result["settings"].items())
    return [
        f"### {human(result['rows'])} rows ({result['rows']:,} rows, {result['molecules']:,} molecules; test "
        f"{result['test_rows']:,} rows)" + completeness(result),
        "",
        f"{result['date']}, {result['cores']} cores, {result['memory_bytes'] / GB:.0f} GB RAM, code "
        f"{result['commit']}; settings: {settings}.",
        "",
        *markdown_table(
            ["scenario", "stage", "wall s", "CPU s", "peak RSS GB", "outputs", "rows", "rows/s"],
            stages,
            leading_text=2,
        ),
        "",
        *markdown_table(
            [
                "scenario",
                "wall s",
                "of it dvc's own",
                "CPU s",
                "peak RSS GB, with dvc",
                "outputs changed",
                "feature cache +",
                "DVC cache +",
                "load avg start / end",
                "command",
            ],
            summary,
            text_columns=1,
            leading_text=1,
        ),
        "",
    ]


def from_nothing(result: dict) -> dict[str, dict]:
    return {s["stage"]: s for s in result["scenarios"][0]["stages"]}


def runs_of(results: list[dict], stage: str) -> list[dict]:
    return [from_nothing(r)[stage] for r in results if stage in from_nothing(r)]


def growth_section(results: list[dict]) -> list[str]:
    sizes = " / ".join(human(r["rows"]) for r in results)
    rows = []
    for stage in from_nothing(results[-1]):
        runs = runs_of(results, stage)
        xs = [s["rows"] for s in runs]
        rows.append(
            [stage, *(fmt_exp(exponent(xs, [s[key] for s in runs])) for key in ("wall_s", "cpu_s", "peak_rss")),
             " / ".join(f"{s['peak_rss'] / GB:.2f}" for s in runs)]
        )  # fmt: skip
    return [
        f"Growth from nothing (`dvc repro`): the least-squares slope of log figure against log rows over {sizes} "
        "rows (1: linear, 0: flat; fixed start-up costs pull it below 1 at small sizes).",
        "",
        *markdown_table(
            ["stage", "wall exponent", "CPU exponent", "peak RSS exponent", f"peak RSS GB at {sizes}"],
            rows,
            leading_text=1,
        ),
        "",
    ]


def projection(results: list[dict], stage: str) -> dict:
    """A stage's figures at BELKA's size (the test side's at Kaggle's test size): CPU on the main thread (serial)
    and off it (shared by the cores) by ``project``, and peak RSS both by ``project`` and by the power law of its
    fitted exponent (at least 0) from the largest size. featurize@test is featurize@train's code on a test set too
    small here to fit: it is projected from featurize@train's runs, at Kaggle's test molecules x 3 rows."""
    proxy, target = PROXIES.get(stage, (stage, BELKA_TEST_ROWS if stage in TEST_SIDE else BELKA_ROWS))
    runs = runs_of(results, proxy)
    xs = [s["rows"] for s in runs]
    threads = max(results[-1]["cores"] - 1, 1) if proxy in OPENMP_STAGES else None
    main = [s["main_thread_cpu_s"] for s in runs]
    off = [max(s["cpu_s"] - s["main_thread_cpu_s"], 1e-3) for s in runs]
    if threads:  # the main thread is one of OpenMP's team: its share of the parallel work is not serial
        main, off = (
            [max(m - o / threads, 1e-3) for m, o in zip(main, off, strict=True)],
            [o + o / threads for o in off],
        )
    serial, parallel = project(xs, main, target), project(xs, off, target)
    rss = [s["peak_rss"] for s in runs]
    return {
        "rows": BELKA_TEST_ROWS if stage in TEST_SIDE else BELKA_ROWS,
        "cpu_s": serial + parallel,
        "serial_share": serial / (serial + parallel),
        "wall_s": {cores: serial + parallel / cores for cores in CORES},
        "peak_rss": project(xs, rss, target),
        "peak_rss_power": rss[-1] * (target / xs[-1]) ** max(exponent(xs, rss) or 0.0, 0.0),
    }


def projection_section(results: list[dict]) -> list[str]:
    rows, totals = [], dict.fromkeys(CORES, 0.0)
    for stage in from_nothing(results[-1]):
        proxy = PROXIES.get(stage, (stage,))[0]
        if len({s["rows"] for s in runs_of(results, proxy)}) < 2:  # a stage new since the smaller runs
            rows.append([stage, "n/a (measured at one size)", *[""] * (4 + len(CORES))])
            continue
        p = projection(results, stage)
        for cores in CORES:
            totals[cores] += p["wall_s"][cores]
        rows.append([stage, f"{p['rows']:,}", fmt_hours(p["cpu_s"]), f"{p['serial_share']:.0%}",
                     *(fmt_hours(p["wall_s"][c]) for c in CORES), fmt_bytes(p["peak_rss"]),
                     fmt_bytes(p["peak_rss_power"])])  # fmt: skip
    xs = [r["rows"] for r in results]
    own = [own_dvc(r["scenarios"][0])["cpu_s"] for r in results]
    dvc_cpu = None if None in own else project(xs, [max(cpu, 1e-3) for cpu in own], BELKA_ROWS)
    if dvc_cpu is not None:
        rows.append(["dvc's own work (serial)", f"{BELKA_ROWS:,}", fmt_hours(dvc_cpu), "100%",
                     *(fmt_hours(dvc_cpu) for _ in CORES), "", ""])  # fmt: skip
    label = "all, `dvc repro` from nothing" + ("" if dvc_cpu is not None else " (stages only)")
    rows.append([label, "", "", "", *(fmt_hours(totals[c] + (dvc_cpu or 0.0)) for c in CORES), "", ""])
    sizes = " / ".join(human(r["rows"]) for r in results)
    return [
        f"Projection to BELKA ({BELKA_ROWS:,} training rows, {BELKA_TEST_ROWS:,} test rows) from the runs from "
        f"nothing at {sizes} rows:",
        "",
        *markdown_table(
            [
                "stage",
                "rows",
                "CPU",
                "serial share",
                *(f"{c} cores" for c in CORES),
                "peak RSS, per-row fit",
                "peak RSS, power law",
            ],
            rows,
            leading_text=1,
        ),
        "",
        "Assumptions: the projection uses CPU time, not wall time, which on a shared machine measures the other jobs "
        "too. A stage's CPU on its main thread is serial; the rest, featurize's RDKit worker processes and the "
        "threads of XGBoost (train, final, and the scoring in evaluate and predict) and of polars, divides by the "
        "cores (Amdahl's law with no overlap of the two parts: an upper bound; perfect scaling of the rest: a lower "
        "one; I/O is assumed not to be the limit). XGBoost's OpenMP runs its parallel work on the main thread too: "
        "for train, final, evaluate and predict the main thread's CPU beyond each other thread's (the work shared "
        "evenly) counts as serial. Each part is a fixed part plus a part per row, fitted by least "
        "squares over the sizes, or a power law of the fitted exponent where growth is faster than linear. "
        "featurize@test is projected from featurize@train's runs (the same code), at 3 rows for each of Kaggle's "
        f"{BELKA_TEST_MOLECULES:,} test molecules: its own test sets here are too small to fit. Peak RSS two ways, "
        "which bracket different failures: a fixed part plus a part per row (right for memory that holds the data, "
        "such as train's quantised matrix; too high for memory that saturates once a batch is full) and the power "
        "law of the fitted exponent (the reverse). Peak RSS is as measured with 2 featurize workers: each more "
        "worker adds its own RSS (about 0.2-0.3 GB). DVC's own work (checking, hashing and caching outputs: the "
        "command's CPU less its stages') is serial.",
        "",
    ]


def compared_size(results: list[dict]) -> dict:
    """The size the largest is compared with for memory: the one nearest a tenth of its rows (30M against 3M),
    so that the ratio reads as growth over ten times the data."""
    large = results[-1]
    return min(results[:-1], key=lambda r: abs(math.log(r["rows"] * 10 / large["rows"])))


def memory_section(results: list[dict]) -> list[str]:
    small, large = compared_size(results), results[-1]
    rows = []
    for stage, s in from_nothing(large).items():
        before = from_nothing(small).get(stage)
        ratio = f"{s['peak_rss'] / before['peak_rss']:.2f}" if before and before["peak_rss"] else "n/a"
        rows.append(
            [stage, f"{before['peak_rss'] / GB:.2f}" if before else "n/a", f"{s['peak_rss'] / GB:.2f}", ratio]
        )
    return [
        f"Peak RSS from nothing, {human(large['rows'])} against {human(small['rows'])} rows "
        f"({large['rows'] / small['rows']:.1f}x the rows):",
        "",
        *markdown_table(
            ["stage", f"{human(small['rows'])} GB", f"{human(large['rows'])} GB", "ratio"],
            rows,
            leading_text=1,
        ),
        "",
    ]


def estimate_section(results: list[dict]) -> list[str]:
    """The fits' memory estimates, logged before any row was read, against their measured peak RSS."""
    rows = [
        [human(r["rows"]), scenario["scenario"], s["stage"], fmt_bytes(s["memory_estimate"]), fmt_bytes(s["peak_rss"]),
         f"{s['memory_estimate'] / s['peak_rss'] - 1:+.0%}"]
        for r in results
        for scenario in r["scenarios"]
        for s in scenario["stages"]
        if s.get("memory_estimate") and s["peak_rss"]
    ]  # fmt: skip
    if not rows:
        return []
    return [
        "Train's memory estimate (`stages.memory`, logged before the fit reads a row) against the fit's measured "
        "peak RSS:",
        "",
        *markdown_table(
            ["rows", "scenario", "stage", "estimate", "measured peak", "error"], rows, leading_text=3
        ),
        "",
    ]


def markdown(results: list[dict]) -> str:
    """The report of one or more sizes' results (any order): a table per size, then, with two sizes or more, the
    growth exponents, peak RSS of the largest against a tenth of it (or the nearest size) and the projection to BELKA's size."""
    results = sorted(results, key=lambda r: r["rows"])
    lines = [
        "## The whole DAG by size (bench/scale.py)",
        "",
        f"Sizes: {', '.join(human(r['rows']) for r in results)} rows.",
        "",
    ]
    for result in results:
        lines += size_section(result)
    if len(results) > 1:
        lines += growth_section(results) + memory_section(results) + projection_section(results)
    lines += estimate_section(results)
    return "\n".join(lines)


def result_path(results_dir: Path, rows: int) -> Path:
    return results_dir / f"scale-{human(rows)}.json"


# ---------------------------------------------------------------------------------------------- commands


def save_json(path: Path, result: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.rename(path)
    print(f"wrote {path}", file=sys.stderr, flush=True)


def run_sizes(args: argparse.Namespace) -> int:
    overrides = dict(parse_setting(text) for text in args.set)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    for rows in args.rows:
        work = args.workdir / human(rows)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            Pipeline(work, rows, overrides).run(
                lambda result, rows=rows: save_json(result_path(args.results_dir, rows), result),
                args.scenarios,
            )
        finally:
            if not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    publish(
        markdown([json.loads(result_path(args.results_dir, rows).read_text()) for rows in args.rows]), None
    )
    return 0


def report(args: argparse.Namespace) -> int:
    files = args.files or sorted(args.results_dir.glob("scale-*.json"))
    if not files:
        raise SystemExit(f"error: no results in {args.results_dir}")
    publish(markdown([json.loads(Path(f).read_text()) for f in files]), args.output)
    return 0


def parse_setting(text: str) -> tuple[str, object]:
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, yaml.safe_load(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the scenarios at each size; write a JSON file per size")
    run.add_argument(
        "--rows",
        type=lambda t: [parse_size(s) for s in t.split(",")],
        required=True,
        help="training rows per size, e.g. 1M,3M",
    )
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another params.yaml value, after the full-BELKA settings (e.g. xgb.n_estimators=5)",
    )
    run.add_argument(
        "--scenarios",
        type=int,
        choices=range(1, len(SCENARIOS) + 1),
        default=len(SCENARIOS),
        help=f"run the first N of: {'; '.join(SCENARIOS)} (default: all)",
    )
    run.add_argument("--workdir", type=Path, default=Path("/tmp/belka-scale"), help="removed first and after")
    run.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    run.add_argument("--keep", action="store_true", help="keep the work directories")
    run.set_defaults(handler=run_sizes)
    rep = commands.add_parser("report", help="the Markdown tables of the results")
    rep.add_argument("files", nargs="*", type=Path, help="results files (default: every scale-*.json)")
    rep.add_argument("--results-dir", type=Path, default=DEFAULT_RESULTS)
    rep.add_argument("--output", type=Path, help="also write the Markdown here")
    rep.set_defaults(handler=report)
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    raise SystemExit(main())
