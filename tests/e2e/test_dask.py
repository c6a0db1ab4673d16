"""The Dask engine: real `dask scheduler` and `dask worker` processes on 127.0.0.1 (and LocalClusters) driven
through `dvc repro`; the same output bytes as the local engine; a worker killed mid-run; no leaked process.

Workers are killed at points the tests choose, not after a sleep: a worker plugin (:class:`DieAt`) makes a worker
SIGKILL itself the moment it reports a given event (a rank reading a partition, rank 0 finishing a round, a shard
starting), so every run exercises the same moment."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import yaml
from distributed.diagnostics.plugin import WorkerPlugin

from tests.conftest import (
    ROOT,
    Repo,
    clone,
    deep_update,
    lock_out_hashes,
    project_env,
    ran_stages,
    run,
    tree_hashes,
)
from tests.test_distributed import train_cli

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
        self.env = {**project_env(), "PYTHONPATH": str(ROOT)}  # workers unpickle this module's DieAt plugin
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

    def worker_addresses(self) -> list[str]:
        from distributed import Client

        with Client(self.address, timeout="30s") as client:
            return sorted(client.scheduler_info()["workers"])

    def n_workers(self) -> int:
        return len(self.worker_addresses())

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


@pytest.fixture(scope="module")
def distributed_repo(reproduced_repo: Repo, tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """A clone with ``train.distributed_workers: 2`` and `dvc repro` done (on a LocalCluster of 2): its models are
    the undisturbed run that runs on another cluster, with workers killed, must reproduce."""
    repo = clone(reproduced_repo, tmp_path_factory.mktemp("distributed") / "clone")
    repo.set_params({"train": {"distributed_workers": 2}})
    repo.stages_ran = ran_stages(repo.dvc("repro").stdout)
    return repo


def test_distributed_training_is_a_train_param_and_reproducible(
    reproduced_repo: Repo, distributed_repo: Repo
) -> None:
    """train.distributed_workers: 2 trains XGBoost's collective on a LocalCluster of 2: only the model side reruns,
    two runs give the same model bytes, and the model beats chance."""
    repo = distributed_repo
    assert set(repo.stages_ran) == {
        "train",
        "final",
        "learning_curve",
        "evaluate",
        "predict",
    }  # every fit distributed
    first = lock_out_hashes(repo)
    assert (
        first["train:models/split"] != lock_out_hashes(reproduced_repo)["train:models/split"]
    )  # another model
    assert first["final:models/final"] != lock_out_hashes(reproduced_repo)["final:models/final"]
    result = repo.dvc("repro", "--force", "train")
    assert "(collective QuantileDMatrix)" in result.stderr
    assert lock_out_hashes(repo)["train:models/split"] == first["train:models/split"]
    metrics = json.loads(repo.read("metrics/evaluate.json"))
    summary = json.loads(repo.read("metrics/evaluate-summary.json"))
    assert metrics["score"] > 2 * summary["positives"] / summary["rows"], metrics


@dataclass
class DieAt(WorkerPlugin):
    """Makes a worker SIGKILL itself the moment it reports an event of ``topic`` whose message has ``fields``
    (:func:`stages.engine.report`): its worker process only (its nanny starts a new one), or with ``with_nanny``
    its whole `dask worker` process group (nothing replaces it). With ``marker``, only the first worker to get
    there dies (it creates the file); without, every one does."""

    topic: str
    fields: dict
    with_nanny: bool
    marker: str | None = None
    name = "die-at"

    def setup(self, worker) -> None:
        send = worker.log_event

        def log_event(topic, msg) -> None:
            if topic == self.topic and self.fields.items() <= msg.items() and self.first():
                os.killpg(0, signal.SIGKILL) if self.with_nanny else os.kill(os.getpid(), signal.SIGKILL)
            send(topic, msg)

        worker.log_event = log_event

    def first(self) -> bool:
        if self.marker is None:
            return True
        try:
            Path(self.marker).touch(exist_ok=False)
        except FileExistsError:
            return False
        return True


@contextlib.contextmanager
def plugin(cluster: Cluster, die: DieAt):
    from distributed import Client

    with Client(cluster.address, timeout="30s") as client:
        client.register_plugin(die)
        try:
            yield
        finally:
            client.unregister_worker_plugin(die.name)


def replace_dead_workers(cluster: Cluster, n: int) -> None:
    for process in [p for p in cluster.workers if p.poll() is not None]:
        cluster.workers.remove(process)
    cluster.workers += [cluster.add_worker() for _ in range(n - len(cluster.workers))]
    cluster.wait_for_workers(n)


def train(repo: Repo, tmp_path: Path, cluster: Cluster, worker_wait: float) -> subprocess.CompletedProcess:
    """`python -m stages.train` on the cluster with the repository's params and split and features, and
    ``resources.worker_wait``; the models go to ``tmp_path / "models"``."""
    params = deep_update(repo.params(), {"resources": {"worker_wait": worker_wait}})
    return train_cli(
        params, repo.path / "data/split/train", repo.path / "data/features/train", tmp_path, dask_env(cluster)
    )


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and [line for line in lines if line.startswith("error:")] == lines[-1:], (
        lines
    )
    assert "Traceback" not in result.stderr
    return lines[-1]


def test_a_worker_lost_while_partitions_are_built_is_replaced_and_training_starts_over(
    distributed_repo: Repo, cluster: Cluster, tmp_path: Path
) -> None:
    """Rank 1's worker dies as it reads its first partition; its nanny starts a new worker (the run waits up to
    resources.worker_wait for it), and training starts over on the two workers: the model of the undisturbed run
    (a LocalCluster), byte for byte."""
    from stages.fit_dask import TRAIN_EVENTS

    died = tmp_path / "died"
    with plugin(cluster, DieAt(TRAIN_EVENTS, {"rank": 1, "side": "fit", "partition": 0}, False, str(died))):
        result = train(distributed_repo, tmp_path, cluster, worker_wait=300)
    assert result.returncode == 0, result.stderr
    assert died.exists() and "training starts over" in result.stderr
    assert tree_hashes(tmp_path / "models") == tree_hashes(distributed_repo.path / "models/split")


def test_a_worker_lost_while_boosting_and_not_replaced_fails_with_one_error_then_the_rerun_completes(
    distributed_repo: Repo, reproduced_repo: Repo, cluster: Cluster, tmp_path: Path
) -> None:
    """Rank 0's worker and its nanny die after round 5 of 25: after resources.worker_wait (2 s) without a second
    worker, one error line names the lost worker, and the models of an earlier run are untouched. With a new
    worker, the rerun gives the undisturbed model."""
    from stages.fit_dask import TRAIN_EVENTS

    shutil.copytree(reproduced_repo.path / "models/split", tmp_path / "models")  # an earlier run's models
    earlier = tree_hashes(tmp_path / "models")
    rank0 = cluster.worker_addresses()[0]
    with plugin(cluster, DieAt(TRAIN_EVENTS, {"rank": 0, "round": 5}, True, str(tmp_path / "died"))):
        error = one_error_line(train(distributed_repo, tmp_path, cluster, worker_wait=2))
    # rank 0's worker; under load the other rank's can be lost too (its nanny replaces it) and is then named as well
    named = re.search(r"lost Dask worker\(s\) (.+?) during distributed training", error)
    lost = named.group(1).split(", ") if named else []
    assert rank0 in lost and len(set(lost)) == len(lost), error  # each lost worker named once
    assert "has 1 worker(s) after waiting 2 s (resources.worker_wait); 2 needed" in error
    assert error.endswith("no model written")
    assert tree_hashes(tmp_path / "models") == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["died", "models", "params.yaml", "scheduler.json"]

    replace_dead_workers(cluster, 2)
    rerun = train(distributed_repo, tmp_path, cluster, worker_wait=300)
    assert rerun.returncode == 0, rerun.stderr
    assert tree_hashes(tmp_path / "models") == tree_hashes(distributed_repo.path / "models/split")


def test_a_worker_lost_while_predicting(reproduced_repo: Repo, cluster: Cluster, tmp_path: Path) -> None:
    """A worker that dies as it starts scoring a shard: the other scores it, and the submission is the local
    engine's. Every worker dead: one error line after resources.worker_wait, no submission. Workers back: the
    rerun completes."""
    from stages.scoring import PREDICT_EVENTS

    params = deep_update(reproduced_repo.params(), {"resources": {"engine": "dask", "worker_wait": 2}})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    repo = reproduced_repo.path

    def predict() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "stages.predict", "--params", str(tmp_path / "params.yaml"),
                               "--models", str(repo / "models/final"), "--features", str(repo / "data/features/test"),
                               "--rejects", str(repo / "data/features/test-rejects.csv"),
                               "--output", str(tmp_path / "submission.csv")],
                              cwd=ROOT, env=dask_env(cluster), capture_output=True, text=True, timeout=600)  # fmt: skip

    with plugin(cluster, DieAt(PREDICT_EVENTS, {}, True, str(tmp_path / "died"))):
        result = predict()
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "died").exists()
    assert (tmp_path / "submission.csv").read_bytes() == reproduced_repo.read("data/submission.csv")

    (tmp_path / "submission.csv").unlink()
    with plugin(cluster, DieAt(PREDICT_EVENTS, {}, True)):
        error = one_error_line(predict())
    assert "has had no workers for 2 s (resources.worker_wait)" in error
    assert not list(tmp_path.glob("*submission*"))

    replace_dead_workers(cluster, 2)
    assert predict().returncode == 0
    assert (tmp_path / "submission.csv").read_bytes() == reproduced_repo.read("data/submission.csv")
