"""Shared fixtures: small params, temporary copies of this repository driven by real git and dvc."""

from __future__ import annotations

import copy
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from stages.params import Params, parse_params

ROOT = Path(__file__).resolve().parents[1]
SHARED_SAMPLE = ROOT.parent / "shared" / "data" / "belka_sample" / "val.csv"

# Small enough that a full `dvc repro` takes seconds, big enough that every stage has real work.
SMALL_PARAMS = {
    "generate": {"train_molecules": 1500, "test_shared_molecules": 150, "test_unseen_molecules": 150,
                 "positive_rate": 0.03},
    "featurize": {"batch_rows": 1000, "fingerprint": {"n_bits": 256}},
    "train": {"batch_rows": 1000, "model": "joint"},  # the per-protein default is tested on the default data
    "xgb": {"n_estimators": 25, "max_depth": 4},
    "resources": {"workers": 2, "threads": 2},
}  # fmt: skip


def deep_update(base: dict, changes: dict) -> dict:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def project_env() -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin first, so `python` and `dvc` are the venv's."""
    env = dict(os.environ)
    env.pop("BELKA_FEATURE_CACHE", None)  # a developer's or runner's cache must not leak into the tests
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_AUTHOR_NAME", "test")
    env.setdefault("GIT_AUTHOR_EMAIL", "test@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "test")
    env.setdefault("GIT_COMMITTER_EMAIL", "test@example.invalid")
    env["DVC_NO_ANALYTICS"] = "1"
    env["BELKA_PROGRESS"] = "0"
    return env


def run(args: list[str] | str, cwd: Path, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=cwd, env=kwargs.pop("env", project_env()), capture_output=True, text=True,
        shell=isinstance(args, str), **kwargs,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"{args} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def ran_stages(output: str) -> list[str]:
    """Stages a `dvc repro` / `dvc exp run` ran (not skipped, not restored)."""
    return re.findall(r"Running stage '([^']+)'", output)


class Repo:
    """A temporary git + dvc repository holding a copy of this project."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(list(args), self.path, check=check)

    def dvc(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", "dvc", *args, check=check)

    def git(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("git", *args, check=check)

    def repro(self, *args: str) -> list[str]:
        result = self.dvc("repro", *args)
        return ran_stages(result.stdout)

    def commit(self, message: str) -> None:
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)

    def params(self) -> dict:
        return yaml.safe_load((self.path / "params.yaml").read_text())

    def set_params(self, changes: dict) -> None:
        params = deep_update(self.params(), changes)
        (self.path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def read(self, relative: str) -> bytes:
        return (self.path / relative).read_bytes()


def run_queue(dvc: Callable[..., subprocess.CompletedProcess], timeout: float) -> str:
    """`dvc queue start --jobs 1`, then wait until no experiment is queued or running; the final `dvc queue
    status`. dvc-task's worker leaves once it believes the queue empty for 10 s, which a loaded machine can fake
    while an experiment is still queued: a queue with experiments and no worker gets its worker started again (what
    a user does). A failed experiment stops the wait with its log."""
    dvc("queue", "start", "--jobs", "1")
    deadline = time.monotonic() + timeout
    status = ""
    try:
        while time.monotonic() < deadline:
            status = dvc("queue", "status").stdout
            failed = re.search(r"^\S+\s+(\S+)\s.*\bFailed\s*$", status, re.M)
            if failed:
                logs = dvc("queue", "logs", failed.group(1), check=False)
                raise AssertionError(f"{status}\n{logs.stdout}{logs.stderr}")
            if not re.search(r"\b(Queued|Running)\b", status):
                return status
            if "Worker status: 0 active, 0 idle" in status and re.search(r"\bQueued\b", status):
                dvc("queue", "start", "--jobs", "1")
            time.sleep(2)
        raise AssertionError(f"the queue did not finish in {timeout} s:\n{status}")
    finally:
        dvc("queue", "stop", "--kill", check=False)  # nothing to stop once the worker is done


def tree_hashes(root: Path, *names: str) -> dict[str, str]:
    """sha256 of each file named, or under each directory named (default: all of ``root``), by path from root."""
    hashes = {}
    for name in names or (".",):
        target = root / name
        for path in [target] if target.is_file() else sorted(target.rglob("*")):
            if path.is_file():
                hashes[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return [line for line in out.splitlines() if line and (ROOT / line).is_file()]


def make_repo(path: Path, params: dict | None = None) -> Repo:
    """Copy the project's source files (not its data) into ``path``, with small params, and commit."""
    path.mkdir(parents=True)
    for name in tracked_files():
        if name == "dvc.lock" or name.startswith(("metrics/", "data/", "models/", "bench/results")):
            continue
        target = path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    repo = Repo(path)
    repo.set_params(deep_update(yaml.safe_load(yaml.safe_dump(SMALL_PARAMS)), params or {}))
    repo.set_params({"resources": {"feature_cache": str(path / ".cache" / "features")}})
    repo.git("init", "-q", "-b", "main")
    repo.commit("project copy")
    return repo


def clone(source: Repo, target: Path) -> Repo:
    """A git clone of ``source`` that shares its DVC cache, with the outputs checked out."""
    run(["git", "clone", "-q", str(source.path), str(target)], cwd=target.parent)
    repo = Repo(target)
    repo.dvc("cache", "dir", "--local", str(source.path / ".dvc" / "cache"))
    repo.dvc("checkout", "-q")
    return repo


def lock_out_hashes(repo: Repo) -> dict[str, str]:
    """``stage:path`` -> md5 of every output in the repository's dvc.lock."""
    lock = yaml.safe_load((repo.path / "dvc.lock").read_text())
    return {
        f"{stage}:{out['path']}": out["md5"]
        for stage, body in lock["stages"].items()
        for out in body.get("outs", [])
    }


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return make_repo(tmp_path / "repo")


@pytest.fixture(scope="session")
def reproduced_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """One repository with a full `dvc repro` done and committed; tests must not modify it."""
    repo = make_repo(tmp_path_factory.mktemp("reproduced") / "repo")
    repo.repro()
    repo.commit("repro")
    return repo


@dataclass
class MiniRun:
    """The pipeline's outputs from an in-process run of the stage functions on tiny data (no dvc)."""

    root: Path
    params: Params

    def __getattr__(self, name: str) -> Path:
        paths = {"raw_train": "raw/train.parquet", "raw_test": "raw/test.parquet", "features": "features/train",
                 "test_features": "features/test", "test_rejects": "features/test-rejects.csv", "split": "split",
                 "models": "models", "submission": "submission.csv"}  # fmt: skip
        if name not in paths:
            raise AttributeError(name)
        return self.root / paths[name]


MINI_PARAMS = {
    "generate": {"train_molecules": 600, "test_shared_molecules": 60, "test_unseen_molecules": 60,
                 "positive_rate": 0.05},
    "featurize": {"batch_rows": 1000, "fingerprint": {"n_bits": 128}},
    "split": {"held_out_building_blocks": 0.1, "valid_fraction": 0.2},
    "train": {"batch_rows": 1000},
    "xgb": {"n_estimators": 8, "max_depth": 3},
    "resources": {"workers": 1, "threads": 1},
}  # fmt: skip


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory: pytest.TempPathFactory) -> MiniRun:
    """generate, featurize, split, train and predict called in-process on 1,800 rows: seconds, not a dvc repro.
    Tests must not modify it (copy what they change)."""
    from stages import featurize, fitting, generate, predict, split
    from stages.io import write_csv, write_parquet

    raw = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), copy.deepcopy(MINI_PARAMS))
    run = MiniRun(tmp_path_factory.mktemp("mini"), parse_params(raw))
    cache = run.root / "cache"
    train_rows, test_rows = generate.generate(run.params.generate)
    write_parquet(generate.to_kaggle_table(train_rows), run.raw_train)
    write_parquet(generate.to_kaggle_table(test_rows), run.raw_test)
    featurize.featurize_file(run.raw_train, run.features, run.root / "features/train-rejects.csv", run.params,
                             True, cache)  # fmt: skip
    featurize.featurize_file(run.raw_test, run.test_features, run.test_rejects, run.params, False, cache)
    split.split_rows(run.features / "rows", split.SplitOutput.under(run.split), run.params.split)
    fitting.train_model(run.params, run.split / "train", run.features, run.models, run.root / "live")
    submission = predict.predict_file(run.test_features, run.test_rejects, run.models, 1000)
    write_csv(submission, run.submission)
    return run


@pytest.fixture
def belka_sample() -> Path:
    if not SHARED_SAMPLE.exists():
        pytest.skip(f"{SHARED_SAMPLE} not present (it is a fixture from ../shared, never copied here)")
    return SHARED_SAMPLE


@pytest.fixture
def gitlab():
    """A stand-in for GitLab's notes API on loopback (tests/test_mr_report.py's FakeGitLab): (fake, API URL)."""
    import threading
    from http.server import ThreadingHTTPServer

    from tests.test_mr_report import FakeGitLab

    fake = FakeGitLab()
    server = ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake, f"http://127.0.0.1:{server.server_address[1]}/api/v4"
    finally:
        server.shutdown()
        thread.join()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The slow tier first, each tier in collection order: its minutes-long tests (real dvc, git, CI jobs) start
    while the fast tier's seconds-long ones are left to fill the workers' last minutes (pytest -n with
    --dist worksteal, ci/test.sh), instead of one long test starting last and running alone."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
