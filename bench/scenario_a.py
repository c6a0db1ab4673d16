"""Scenario A, measured: about 10% more training molecules on the default data, featurized where the work really
runs. A script that prints figures; it asserts nothing.

    python bench/scenario_a.py                              # params.yaml as it is, train_molecules x 1.1
    python bench/scenario_a.py --train-molecules 3000       # a quick run on less data

For the appended data's featurize@train (the same bytes everywhere), in each place the work runs:

- from nothing: an empty feature cache;
- warm workspace: the workspace that featurized the base data (`dvc repro`), its user-level cache directory;
- CI job: a fresh clone (what GitLab's `git clean -ffdx` leaves) set up as the `reproduce` job sets it
  (ci/runner_volume.sh, BELKA_FEATURE_CACHE on the runner's volume), after an earlier job on the base data filled
  the volume;
- queued experiment: `dvc exp run --queue -S generate.train_molecules=...` and `dvc queue start` in a clone whose
  user-level cache holds the base data's molecules.

Reused and computed molecules come from featurize's own log line. The time is the wall time of the featurize
process, start to exit (its imports included, a few seconds), whoever starts it (dvc, a job's shell, a queue
worker): a sitecustomize on PYTHONPATH records it for every `python -m stages.featurize`. The last column divides
by the appended data's featurize from nothing. Everything runs in --workdir (removed first, and after unless
--keep), with the real tools: git, dvc, the project's stages.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import publish  # noqa: E402

TRAIN = "data/generated/train.parquet"
FEATURIZED = re.compile(
    r"(?P<source>\S+): \d+ rows, (?P<unique>\d+) unique molecules "
    r"\((?P<reused>\d+) reused from the feature cache, (?P<computed>\d+) computed\)"
)
QUEUE_TIMEOUT_S = 3600

# Records the wall time of every `python -m stages.featurize` process in $BENCH_TIMINGS (one JSON line each).
SITECUSTOMIZE = """\
import atexit, json, os, sys, time
_argv = list(getattr(sys, "orig_argv", []))
if os.environ.get("BENCH_TIMINGS") and "-m" in _argv and _argv[_argv.index("-m") + 1 :][:1] == ["stages.featurize"]:
    _start = time.perf_counter()

    def _record():
        with open(os.environ["BENCH_TIMINGS"], "a") as file:
            file.write(json.dumps({"argv": _argv, "cwd": os.getcwd(), "seconds": time.perf_counter() - _start}) + "\\n")

    atexit.register(_record)
"""


@dataclass
class Featurized:
    """One featurize@train of the appended data: where it ran, what it reused and computed, how long it took."""

    run: str
    cache: str
    unique: int
    reused: int
    computed: int
    seconds: float


@dataclass
class Bench:
    """The work directory, the environment every command gets, and the file the timings go to."""

    work: Path
    env: dict[str, str]
    timings: Path

    def run(self, args: list[str], cwd: Path, **extra_env: str) -> str:
        """Run a command; return its stdout and stderr together (featurize logs to stderr, dvc passes it on)."""
        result = subprocess.run(
            args, cwd=cwd, env=self.env | extra_env, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise SystemExit(f"error: {' '.join(args)} failed in {cwd}:\n{result.stdout}\n{result.stderr}")
        return result.stdout + result.stderr

    def dvc(self, cwd: Path, *args: str, **extra_env: str) -> str:
        return self.run([sys.executable, "-m", "dvc", *args], cwd, **extra_env)

    def git(self, cwd: Path, *args: str) -> str:
        return self.run(["git", *args], cwd)

    def timing_mark(self) -> int:
        return len(self.timings.read_text().splitlines()) if self.timings.exists() else 0

    def train_seconds(self, mark: int) -> float:
        """The wall time of the one featurize of the training side recorded since ``mark``."""
        records = [json.loads(line) for line in self.timings.read_text().splitlines()[mark:]]
        train = [r["seconds"] for r in records if "train" in r["argv"][r["argv"].index("--side") + 1 :][:1]]
        if len(train) != 1:
            raise SystemExit(f"error: expected one timed featurize of the train side, found {records}")
        return train[0]


def counts_of(log: str, source: str = TRAIN) -> dict[str, int]:
    found = [m for m in FEATURIZED.finditer(log) if m["source"] == source]
    if len(found) != 1:
        raise SystemExit(f"error: expected one featurize line for {source} in:\n{log}")
    return {key: int(found[0][key]) for key in ("unique", "reused", "computed")}


def project_files() -> list[str]:
    """The project's files as they are in the working tree (tracked and new), without its data and results."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    skip = ("data/", "models/", "metrics/", "bench/", "dvc.lock")
    return [name for name in listed if not name.startswith(skip) and (ROOT / name).is_file()]


def make_origin(bench: Bench, train_molecules: int | None) -> tuple[Path, int]:
    """A git repository with a copy of the project, params as they are (train_molecules if given): the base."""
    origin = bench.work / "origin"
    for name in project_files():
        (origin / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, origin / name)
    if train_molecules:
        set_train_molecules(origin, train_molecules)
    bench.git(origin, "init", "-q", "-b", "main")
    bench.git(origin, "add", "-A")
    bench.git(origin, "commit", "-q", "-m", "base")
    return origin, yaml.safe_load((origin / "params.yaml").read_text())["generate"]["train_molecules"]


def set_train_molecules(repo: Path, molecules: int) -> None:
    """Change generate.train_molecules alone, leaving the rest of params.yaml (comments too) as it is."""
    path = repo / "params.yaml"
    text, count = re.subn(r"(?m)^(\s+train_molecules:\s*)\d+", rf"\g<1>{molecules}", path.read_text())
    if count != 1:
        raise SystemExit(f"error: {path}: expected one generate.train_molecules line")
    path.write_text(text)


def clone(bench: Bench, origin: Path, name: str) -> Path:
    target = bench.work / name
    bench.git(bench.work, "clone", "-q", str(origin), str(target))
    return target


def featurize_train(bench: Bench, repo: Path, *dvc_args: str, **env: str) -> tuple[dict[str, int], float]:
    """`dvc repro` of ``dvc_args`` in ``repo``: featurize@train's counts and seconds."""
    mark = bench.timing_mark()
    log = bench.dvc(repo, "repro", *dvc_args, **env)
    return counts_of(log), bench.train_seconds(mark)


def warm_workspace(bench: Bench, origin: Path, appended: int) -> tuple[Featurized, Featurized, Path]:
    """The base data featurized from nothing in a workspace, then the appended data in the same workspace. Returns
    both, and a copy of the user-level cache as the base run left it (for the queued experiment)."""
    workspace = clone(bench, origin, "workspace")
    user_cache = {"XDG_CACHE_HOME": str(bench.work / "workspace-user-cache")}
    counts, seconds = featurize_train(bench, workspace, "featurize@train", "featurize@test", **user_cache)
    base_run = Featurized("from nothing, base data", "empty", **counts, seconds=seconds)
    snapshot = bench.work / "base-user-cache"
    shutil.copytree(bench.work / "workspace-user-cache", snapshot)

    set_train_molecules(workspace, appended)
    counts, seconds = featurize_train(bench, workspace, "featurize@train", **user_cache)
    warm = Featurized("warm workspace", "the user's cache directory", **counts, seconds=seconds)
    return base_run, warm, snapshot


def from_nothing(bench: Bench, origin: Path, appended: int) -> Featurized:
    repo = clone(bench, origin, "from-nothing")
    set_train_molecules(repo, appended)
    empty = bench.work / "empty-feature-cache"
    counts, seconds = featurize_train(bench, repo, "featurize@train", BELKA_FEATURE_CACHE=str(empty))
    return Featurized("from nothing, appended data", "empty", **counts, seconds=seconds)


def ci_job(bench: Bench, origin: Path, appended: int) -> Featurized:
    """Two `reproduce` jobs on one runner: each a fresh clone set up by ci/runner_volume.sh, the first on the base
    data (it fills the volume), the second on the appended data (committed, as a merge request would)."""
    volume = bench.work / "runner-volume"
    job_env = {"RUNNER_VOLUME": str(volume), "BELKA_FEATURE_CACHE": str(volume / "features")}
    first = clone(bench, origin, "ci-job-1")
    bench.run(["sh", "ci/runner_volume.sh"], first, **job_env)
    bench.dvc(first, "repro", "featurize@train", "featurize@test", **job_env)

    set_train_molecules(origin, appended)
    bench.git(origin, "commit", "-q", "-am", "10% more training molecules")
    second = clone(bench, origin, "ci-job-2")
    bench.git(second, "clean", "-q", "-ffdx")
    bench.run(["sh", "ci/runner_volume.sh"], second, **job_env)
    counts, seconds = featurize_train(bench, second, "featurize@train", **job_env)
    return Featurized("CI job, cleaned clone", "the runner's volume", **counts, seconds=seconds)


def queued_experiment(bench: Bench, origin: Path, appended: int, base_cache: Path) -> Featurized:
    """One experiment queued on the base commit (origin before the CI job commits the append) with the appended
    data, run by `dvc queue start`."""
    repo = clone(bench, origin, "experiments")
    user_cache = {"XDG_CACHE_HOME": str(bench.work / "experiments-user-cache")}
    shutil.copytree(base_cache, user_cache["XDG_CACHE_HOME"])
    mark = bench.timing_mark()
    bench.dvc(repo, "exp", "run", "--queue", "--name", "appended", "-S", f"generate.train_molecules={appended}",
              "featurize@train", **user_cache)  # fmt: skip
    bench.dvc(repo, "queue", "start", "--jobs", "1", **user_cache)
    deadline = time.monotonic() + QUEUE_TIMEOUT_S
    try:
        while re.search(r"\b(Queued|Running)\b", bench.dvc(repo, "queue", "status", **user_cache)):
            if time.monotonic() > deadline:
                raise SystemExit(f"error: the queued experiment did not finish in {QUEUE_TIMEOUT_S} s")
            time.sleep(1)
    finally:
        subprocess.run([sys.executable, "-m", "dvc", "queue", "stop", "--kill"], cwd=repo, env=bench.env | user_cache,
                       capture_output=True, check=False)  # fmt: skip
    counts = counts_of(bench.dvc(repo, "queue", "logs", "appended", **user_cache))
    seconds = bench.train_seconds(mark)
    return Featurized("queued experiment", "the user's cache directory", **counts, seconds=seconds)


def table(runs: list[Featurized], reference: Featurized) -> str:
    lines = [
        "| featurize@train | feature cache | molecules | reused | computed | featurize s | of from nothing |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        ratio = run.seconds / reference.seconds
        lines.append(
            f"| {run.run} | {run.cache} | {run.unique:,} | {run.reused:,} | {run.computed:,} | {run.seconds:.1f} "
            f"| {ratio:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-molecules", type=int, help="the base data's generate.train_molecules "
                        "(default: params.yaml's)")  # fmt: skip
    parser.add_argument(
        "--append", type=float, default=0.1, help="the fraction of training molecules appended"
    )
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / ".work" / "scenario_a")
    parser.add_argument("--results", type=Path, help="also write the table (markdown) here")
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args(argv)

    work = args.workdir.resolve()
    shutil.rmtree(work, ignore_errors=True)
    (work / "timing").mkdir(parents=True)
    (work / "timing" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {key: value for key, value in os.environ.items() if key != "BELKA_FEATURE_CACHE"}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join(filter(None, [str(work / "timing"), env.get("PYTHONPATH")])),
        BENCH_TIMINGS=str(work / "timings.jsonl"),
        DVC_NO_ANALYTICS="1",
        BELKA_PROGRESS="0",
        GIT_AUTHOR_NAME="bench", GIT_AUTHOR_EMAIL="bench@example.invalid",
        GIT_COMMITTER_NAME="bench", GIT_COMMITTER_EMAIL="bench@example.invalid",
    )  # fmt: skip
    bench = Bench(work, env, work / "timings.jsonl")
    try:
        origin, base = make_origin(bench, args.train_molecules)
        appended = round(base * (1 + args.append))
        print(f"scenario A: generate.train_molecules {base:,} -> {appended:,}, in {work}", flush=True)
        base_run, warm, base_cache = warm_workspace(bench, origin, appended)
        nothing = from_nothing(bench, origin, appended)
        queued = queued_experiment(bench, origin, appended, base_cache)
        job = ci_job(bench, origin, appended)  # last: it commits the append to origin
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    cores = os.cpu_count()
    text = (
        f"Scenario A: {base:,} -> {appended:,} training molecules (+{args.append:.0%}), "
        f"{cores} cores, {time.strftime('%Y-%m-%d')}.\n\n"
        + table([base_run, nothing, warm, job, queued], nothing)
        + "\n"
    )
    publish(text, args.results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
