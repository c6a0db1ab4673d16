"""The Dask engine: real `dask scheduler` and `dask worker` processes on 127.0.0.1 (and LocalClusters) driven
through `dvc repro`; the same output bytes as the local engine; a worker killed mid-run; no leaked process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from tests.conftest import ROOT, Repo, clone, lock_out_hashes, project_env, ran_stages, run, tree_hashes

pytestmark = pytest.mark.slow


def dask_cli() -> list[str]:
    return [str(Path(sys.executable).parent / "dask")]


def alive(pids: list[int]) -> list[int]:
    """The pids of processes still running (zombies, dead but not yet reaped, do not count)."""
    running = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                running.append(pid)
        except psutil.NoSuchProcess:
            pass
    return running


class Cluster:
    """A scheduler and workers as separate processes (each in its own session, so it can be killed whole)."""

    def __init__(self, tmp: Path, n_workers: int) -> None:
        self.file = tmp / "scheduler.json"
        self.env = project_env()
        self.scheduler = self._start("scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                     "--scheduler-file", str(self.file))  # fmt: skip
        self._wait(lambda: self.file.exists(), "the scheduler file")
        self.address = json.loads(self.file.read_text())["address"]
        self.workers = [self.add_worker() for _ in range(n_workers)]
        self.wait_for_workers(n_workers)

    def _start(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([*dask_cli(), *args], cwd=ROOT, env=self.env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip

    def add_worker(self) -> subprocess.Popen:
        return self._start("worker", "--scheduler-file", str(self.file), "--nthreads", "1", "--nworkers", "1",
                           "--host", "127.0.0.1", "--no-dashboard", "--death-timeout", "60")  # fmt: skip

    def n_workers(self) -> int:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            return len(client.scheduler_info()["workers"])

    def wait_for_workers(self, n: int) -> None:
        self._wait(lambda: self.n_workers() == n, f"{n} workers")

    @staticmethod
    def _wait(condition, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def kill(self, process: subprocess.Popen) -> None:
        with_children = [process.pid, *(c.pid for c in psutil.Process(process.pid).children(recursive=True))]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        self._wait(lambda: not alive(with_children), "the killed processes to exit", timeout=30)

    def close(self) -> list[int]:
        """Stop everything; return the pids of anything still alive (nothing may leak)."""
        pids = []
        for process in [*self.workers, self.scheduler]:
            try:
                pids += [process.pid, *(c.pid for c in psutil.Process(process.pid).children(recursive=True))]
                os.killpg(process.pid, signal.SIGTERM)
            except (ProcessLookupError, psutil.NoSuchProcess):
                pass
        for process in [*self.workers, self.scheduler]:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)
        time.sleep(0.5)
        return [
            p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
        ]


@pytest.fixture
def cluster(tmp_path: Path):
    started = Cluster(tmp_path, n_workers=2)
    yield started
    assert started.close() == [], "processes of the cluster leaked"


def dask_env(cluster: Cluster) -> dict[str, str]:
    return {**project_env(), "DASK_SCHEDULER_ADDRESS": cluster.address}


def test_the_engine_is_not_a_stage_param(reproduced_repo: Repo, tmp_path: Path) -> None:
    repo = clone(reproduced_repo, tmp_path / "clone")
    repo.set_params({"resources": {"engine": "dask"}})
    assert repo.dvc("status").stdout.strip() == "Data and pipelines are up to date."


def test_dvc_repro_on_a_real_scheduler_gives_the_local_engines_bytes(
    reproduced_repo: Repo, cluster: Cluster, tmp_path: Path
) -> None:
    repo = clone(reproduced_repo, tmp_path / "clone")
    # an empty feature cache, so every molecule is computed on the cluster's workers
    repo.set_params({"resources": {"engine": "dask", "feature_cache": str(tmp_path / "fresh-cache")}})
    result = run([sys.executable, "-m", "dvc", "repro", "--force"], repo.path, env=dask_env(cluster))
    assert set(ran_stages(result.stdout)) >= {"featurize@train", "featurize@test", "predict"}
    assert f"dask: scheduler {cluster.address}" in result.stderr
    assert "(0 reused from the feature cache, 1500 computed)" in result.stderr
    assert lock_out_hashes(repo) == lock_out_hashes(reproduced_repo)  # featurize, predict: the same bytes


def test_a_worker_killed_mid_featurize(cluster: Cluster, tmp_path: Path) -> None:
    """Dask moves the dead worker's tasks to the other: the run completes with the local engine's bytes (or, if
    it fails, it says so and leaves no output; the rerun then completes)."""
    import copy

    import yaml

    from bench.belka_gen import write_belka
    from tests.conftest import SMALL_PARAMS, deep_update

    source = tmp_path / "raw.parquet"
    write_belka(source, 60_000, str(ROOT / "params.yaml"))  # 20,000 distinct molecules: seconds of RDKit
    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), copy.deepcopy(SMALL_PARAMS))
    params["featurize"]["batch_rows"] = 4000
    for engine in ("local", "dask"):
        params["resources"]["engine"] = engine
        (tmp_path / f"{engine}.yaml").write_text(yaml.safe_dump(params))

    def featurize(engine: str, out: str, env: dict) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "stages.featurize", "--input", str(source), "--output",
                                 str(tmp_path / out), "--params", str(tmp_path / f"{engine}.yaml"), "--cache",
                                 str(tmp_path / f"cache-{out}")], cwd=ROOT, env=env, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip

    local = featurize("local", "local", project_env())
    assert local.wait(timeout=600) == 0, local.stderr.read()
    running = featurize("dask", "dask", dask_env(cluster))
    Cluster._wait(
        lambda: list(tmp_path.glob(".dask.tmp-*/molecules/part-00001.parquet")), "featurize to be running"
    )
    cluster.kill(cluster.workers[0])
    _, stderr = running.communicate(timeout=600)
    if running.returncode != 0:  # a clear error, no output; then the rerun completes
        assert stderr.strip().splitlines()[-1].startswith("error: ") and not (tmp_path / "dask").exists()
        rerun = featurize("dask", "dask", dask_env(cluster))
        assert rerun.wait(timeout=600) == 0, rerun.stderr.read()
    assert tree_hashes(tmp_path / "dask") == tree_hashes(tmp_path / "local")
    assert not list(tmp_path.glob(".dask.tmp-*"))


def test_distributed_training_is_a_train_param_and_reproducible(
    reproduced_repo: Repo, tmp_path: Path
) -> None:
    """train.distributed_workers: 2 trains with xgboost.dask on a LocalCluster of 2: only the model side reruns,
    two runs give the same model bytes, and the model beats chance."""
    repo = clone(reproduced_repo, tmp_path / "clone")
    repo.set_params({"train": {"distributed_workers": 2}})
    result = repo.dvc("repro")
    assert ran_stages(result.stdout) == ["train", "evaluate", "predict"]
    assert "(DaskQuantileDMatrix)" in result.stderr
    first = lock_out_hashes(repo)
    assert first["train:models"] != lock_out_hashes(reproduced_repo)["train:models"]  # another model
    repo.dvc("repro", "--force", "train")
    assert lock_out_hashes(repo)["train:models"] == first["train:models"]
    metrics = json.loads(repo.read("metrics/evaluate.json"))
    summary = json.loads(repo.read("metrics/evaluate-summary.json"))
    assert metrics["score"] > 2 * summary["positives"] / summary["rows"], metrics
