"""The S3 remote (`storage` in .dvc/config) against a real S3 endpoint on loopback (moto's server).

The endpoint is never in a committed file: these tests set it through `dvc remote modify --local` (written to the
git-ignored .dvc/config.local) or through AWS_ENDPOINT_URL, which botocore (and so dvc-s3) reads from the
environment. An `endpointurl` in the config wins over AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import polars as pl
import pytest
import yaml

from tests.conftest import Repo, make_repo, project_env, ran_stages, run, tree_hashes
from tests.test_gitlab_ci import (
    GITLAB_ORIGIN,
    MERGE_REQUEST,
    gcl,
    layered_venv,
    needs_gcl,
    set_gitlab_origin,
)

pytestmark = pytest.mark.slow

BUCKET = "belka-dvc"
ACCESS_KEY = "AKIABELKATESTKEY0001"
SECRET_KEY = "belka-FAKE-secret-9f8e7d6c5b4a"  # recognisable, so a leak is easy to spot


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server on a free loopback port with the remote's bucket, and fake credentials in the env."""
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
        mp.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=BUCKET)
        try:
            yield endpoint
        finally:
            server.stop()


@pytest.fixture(scope="module")
def pushed(reproduced_repo: Repo, s3_endpoint: str) -> dict[str, str]:
    """Push the reproduced repository's outputs and run cache; returns the outputs pushed (the command output).

    The endpoint comes from the environment here so that the shared `reproduced_repo` gets no config.local.
    """
    result = run_with_endpoint(reproduced_repo, s3_endpoint, "push", "--run-cache")
    assert "pushed" in result.stdout, result.stdout
    return {"stdout": result.stdout, "stderr": result.stderr}


def run_with_endpoint(
    repo: Repo, endpoint: str, *args: str, check: bool = True
) -> subprocess.CompletedProcess:
    """`dvc ARGS` with the endpoint from AWS_ENDPOINT_URL (botocore reads it; dvc-s3 passes no endpoint then)."""
    env = project_env()
    env["AWS_ENDPOINT_URL"] = endpoint
    return run([sys.executable, "-m", "dvc", *args], repo.path, check=check, env=env)


def clone(source: Repo, target: Path, endpoint: str | None = None, rev: str | None = None) -> Repo:
    run(["git", "clone", "-q", str(source.path), str(target)], target.parent)
    repo = Repo(target)
    if rev:
        repo.git("reset", "-q", "--hard", rev)
    if endpoint:
        repo.dvc("remote", "modify", "--local", "storage", "endpointurl", endpoint)
    return repo


def file_hashes(root: Path, *folders: str) -> dict[str, str]:
    return {
        name: digest
        for name, digest in tree_hashes(root, *folders).items()
        if Path(name).name != ".gitignore"
    }


def workspace_snapshot(root: Path) -> dict[str, str]:
    """Every file outside .git and dvc's own scratch space, with its hash."""
    skip = (".git/", ".dvc/tmp/", ".dvc/cache/")
    return {
        name: digest
        for name, digest in file_hashes(root, ".").items()
        if not name.startswith(skip) and name != ".dvc/config.local"
    }


def test_remote_is_configured_without_endpoint_or_credentials():
    config = (Path(__file__).resolve().parents[2] / ".dvc" / "config").read_text()
    assert "remote = storage" in config
    assert "url = s3://belka-dvc/cache" in config
    for secret_word in ("endpointurl", "access_key", "secret", "credentialpath", "profile"):
        assert secret_word not in config, f"{secret_word} belongs in .dvc/config.local or the environment"


def test_clone_and_pull_gives_identical_outputs(reproduced_repo, pushed, s3_endpoint, tmp_path):
    fresh = clone(reproduced_repo, tmp_path / "clone", s3_endpoint)
    assert not (fresh.path / "models" / "final" / "manifest.json").exists()

    fresh.dvc("pull")

    folders = ("data", "models", "metrics")
    assert file_hashes(fresh.path, *folders) == file_hashes(reproduced_repo.path, *folders)
    assert "models/final/manifest.json" in file_hashes(fresh.path, "models")
    assert "up to date" in fresh.dvc("status").stdout
    assert "in sync" in fresh.dvc("status", "--cloud").stdout


def stages_with_uncached_outputs(repo: Repo) -> set[str]:
    """Stages with a `cache: false` output (metrics, plots): dvc's run cache never restores those."""
    stages = set()
    for name, stage in yaml.safe_load((repo.path / "dvc.yaml").read_text())["stages"].items():
        outs = [out for kind in ("outs", "metrics", "plots") for out in stage.get("do", stage).get(kind, [])]
        if any(isinstance(out, dict) and any(o.get("cache") is False for o in out.values()) for out in outs):
            stages.add(name)
    return stages


def test_repro_pull_with_dvc_lock_restores_every_stage(reproduced_repo, pushed, s3_endpoint, tmp_path):
    fresh = clone(reproduced_repo, tmp_path / "clone", s3_endpoint)

    result = fresh.dvc("repro", "--pull")

    assert ran_stages(result.stdout) == [], result.stdout
    folders = ("data", "models", "metrics")
    assert file_hashes(fresh.path, *folders) == file_hashes(reproduced_repo.path, *folders)
    assert "up to date" in fresh.dvc("status").stdout


def test_repro_pull_without_dvc_lock_uses_remote_run_cache(reproduced_repo, pushed, s3_endpoint, tmp_path):
    """HEAD~1 has no dvc.lock: only the run cache pushed with `dvc push --run-cache` can tell dvc that these exact
    deps, params and commands ran before. Stages with `cache: false` outputs (train, evaluate: their metrics and
    plots live in git) are outside the run cache and rerun; the others are restored, not recomputed."""
    fresh = clone(reproduced_repo, tmp_path / "clone", s3_endpoint, rev="HEAD~1")
    assert not (fresh.path / "dvc.lock").exists()

    result = fresh.dvc("repro", "--pull")

    expected_to_run = stages_with_uncached_outputs(fresh)
    assert set(ran_stages(result.stdout)) == expected_to_run, result.stdout
    restored = re.findall(r"Stage '([^']+)' is cached - skipping run", result.stdout)
    assert "generate" in restored and "predict" in restored, result.stdout
    assert file_hashes(fresh.path, "data", "models") == file_hashes(reproduced_repo.path, "data", "models")
    assert "up to date" in fresh.dvc("status").stdout


def test_unreachable_endpoint_fails_clearly_and_changes_nothing(
    reproduced_repo, s3_endpoint, tmp_path, monkeypatch
):
    # botocore's default retries with backoff take minutes over all the files; one attempt fails the same way
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    closed = f"http://127.0.0.1:{free_port()}"  # bound then released: nothing listens there

    fresh = clone(reproduced_repo, tmp_path / "clone", closed)
    before = workspace_snapshot(fresh.path)
    pulled = fresh.dvc("pull", check=False)
    assert pulled.returncode != 0
    assert "Could not connect to the endpoint URL" in pulled.stderr, pulled.stderr
    assert closed in pulled.stderr
    assert workspace_snapshot(fresh.path) == before

    before = workspace_snapshot(reproduced_repo.path)
    pushed = run_with_endpoint(reproduced_repo, closed, "push", check=False)
    assert pushed.returncode != 0
    assert "Could not connect to the endpoint URL" in pushed.stderr, pushed.stderr
    assert closed in pushed.stderr
    assert workspace_snapshot(reproduced_repo.path) == before


def test_credentials_never_written_or_printed(reproduced_repo, pushed, s3_endpoint, tmp_path, monkeypatch):
    fresh = clone(reproduced_repo, tmp_path / "clone", s3_endpoint)
    outputs = [pushed["stdout"], pushed["stderr"]]
    for args in (
        ("pull", "-v"),
        ("status", "--cloud", "-v"),
        ("push", "-v"),
        ("remote", "list"),
        ("config", "--list"),
        ("config", "--list", "--show-origin"),
        ("doctor",),
    ):
        result = fresh.dvc(*args)
        outputs += [result.stdout, result.stderr]
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    failed = run_with_endpoint(fresh, "http://127.0.0.1:1", "status", "--cloud", "-v", check=False)
    outputs += [failed.stdout, failed.stderr]

    files = [".dvc/config", ".dvc/config.local", "dvc.lock", "dvc.yaml", "params.yaml"]
    texts = outputs + [(fresh.path / name).read_text() for name in files]
    texts += [(reproduced_repo.path / name).read_text() for name in (".dvc/config", "dvc.lock")]
    assert any(s3_endpoint in text for text in texts)  # the checks below look at real output
    for text in texts:
        assert SECRET_KEY not in text
        assert ACCESS_KEY not in text


# The `reproduce` job of .gitlab-ci.yml, run by gitlab-ci-local with the shell executor against the loopback S3.


def remote_keys(*roles: str) -> list[str]:
    """The variables of the DVC keys of ``roles`` (WRITE, READ, MR: ci/dvc_remote.sh), as GitLab would give a job
    (this moto server takes any key: tests/e2e/test_trust.py runs one that checks them)."""
    return [
        f"--variable=DVC_{role}_{name}={value}"
        for role in roles
        for name, value in (("ACCESS_KEY_ID", ACCESS_KEY), ("SECRET_ACCESS_KEY", SECRET_KEY))
    ]


def reproduce_job(project: Path, job_bin: Path, endpoint: str) -> subprocess.CompletedProcess:
    """The default branch's `reproduce`: a protected ref, so the protected keys too."""
    return gcl(
        project, "--force-shell-executor", "--variable=CI_COMMIT_BRANCH=main", "--variable=CI_COMMIT_REF_PROTECTED=true",
        *remote_keys("WRITE", "READ"), "reproduce",
        job_bin=job_bin, env={"AWS_ENDPOINT_URL": endpoint, "BELKA_PROGRESS": "0"}, timeout=600,
    )  # fmt: skip


@needs_gcl
def test_gitlab_ci_local_runs_the_reproduce_job(reproduced_repo, pushed, s3_endpoint, tmp_path):
    project = clone(reproduced_repo, tmp_path / "project")
    set_gitlab_origin(project.path)
    (project.path / ".git" / "info" / "exclude").write_text(".gitlab-ci-local/\n")
    job_bin = layered_venv(tmp_path / "job-venv")

    # The pushed outputs and dvc.lock match: every stage is skipped, nothing is pulled but what is missing.
    result = reproduce_job(project.path, job_bin, s3_endpoint)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "reproduce finished" in log and "FAIL" not in log, log
    assert "Running stage" not in log
    assert "Data and pipelines are up to date" in log

    # A params change committed to the default branch without its dvc.lock: the job reruns what the change
    # touches, pushes it, and fails because the default branch's dvc.lock is not what `dvc repro` gives.
    project.set_params({"xgb": {"max_depth": 3}})
    project.commit("max_depth 3, dvc.lock not updated")
    set_gitlab_origin(project.path)
    # (gitlab-ci-local 4.72 exits 0 here: it takes `allow_failure: exit_codes` for allow_failure: true; GitLab
    # allows only the listed code, 3, so this exit 1 fails the pipeline. The job's own verdict is in its log.)
    result = reproduce_job(project.path, job_bin, s3_endpoint)
    log = result.stdout + result.stderr
    assert "FAIL  reproduce" in log and "FAIL 1" in log, log
    assert sorted(set(ran_stages(log))) == ["evaluate", "final", "learning_curve", "predict", "train"], log
    assert re.search(r"\d+ files? pushed", log), log  # the new model reached the remote before the check
    assert "dvc.lock on main is not what 'dvc repro' gives" in log, log


# Two merge requests' `reproduce` jobs on one self-hosted runner, its persistent volume a temporary directory.

FEATURIZED = re.compile(
    r"(?P<source>\S+): (?P<rows>\d+) rows, (?P<unique>\d+) unique molecules "
    r"\((?P<reused>\d+) reused from the feature cache, (?P<computed>\d+) computed\)"
)


def featurized(log: str, source: str) -> dict[str, int]:
    """The counts of featurize's summary line for ``source`` in a job's log (exactly one such line)."""
    found = [m for m in FEATURIZED.finditer(log) if m["source"] == source]
    assert len(found) == 1, log
    return {key: int(found[0][key]) for key in ("unique", "reused", "computed")}


def molecules(path: Path) -> set[str]:
    return set(pl.read_parquet(path, columns=["molecule_smiles"])["molecule_smiles"].to_list())


def merge_request_reproduce(
    project: Path, job_bin: Path, endpoint: str, volume: Path, home_cache: Path, mr_remote: str
):
    """The `reproduce` job of a merge request pipeline, with the runner's volume at ``volume``, pushing to
    ``mr_remote``; the user-level feature cache (``XDG_CACHE_HOME``) points at ``home_cache``, which the job must
    not use."""
    return gcl(
        project, "--force-shell-executor", *[f"--variable={v}" for v in MERGE_REQUEST if not v.endswith("=")],
        "--unset-variable=CI_COMMIT_BRANCH", f"--variable=RUNNER_VOLUME={volume}", *remote_keys("READ", "MR"),
        f"--variable=DVC_MR_REMOTE_URL={mr_remote}", "reproduce", job_bin=job_bin,
        env={"AWS_ENDPOINT_URL": endpoint, "BELKA_PROGRESS": "0", "XDG_CACHE_HOME": str(home_cache)}, timeout=600,
    )  # fmt: skip


def clean_as_gitlab_does(repo: Repo) -> None:
    """What a runner does to the clone before the next job: check out the new commit (forced), `git clean -ffdx`."""
    repo.git("checkout", "-q", "-f", "HEAD")
    repo.git("clean", "-q", "-ffdx")


@needs_gcl
def test_consecutive_reproduce_jobs_featurize_only_new_molecules(s3_endpoint, tmp_path):
    """Two merge requests on one runner: the first reproduces the pipeline from nothing, the second appends about
    10% training molecules. The clone is cleaned between the jobs as GitLab does, so whatever the second reuses
    came from the runner's volume: only the new molecules are computed. DVC's cache is on the volume too, its
    files linked into the clone where the filesystem allows."""
    # This test's own remote: another test's run cache must not restore its stages.
    bucket = "runner-volume-test"
    boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    project = make_repo(tmp_path / "project")
    project.set_params(
        {"resources": {"feature_cache": None}}
    )  # the default; the job sets BELKA_FEATURE_CACHE
    project.dvc("remote", "modify", "storage", "url", f"s3://{bucket}/cache")
    project.commit("the pipeline, without dvc.lock")
    set_gitlab_origin(project.path)
    # The merge requests' target is an empty main, so every pipeline file counts as changed (rules:changes).
    empty_tree = project.git("hash-object", "-t", "tree", "/dev/null").stdout.strip()
    base = project.git("commit-tree", empty_tree, "-m", "empty main").stdout.strip()
    project.git("update-ref", "refs/remotes/origin/main", base)
    (project.path / ".git" / "info" / "exclude").write_text(".gitlab-ci-local/\n")
    job_bin = layered_venv(tmp_path / "job-venv")
    volume, home_cache = tmp_path / "runner-volume", tmp_path / "home-cache"

    first = merge_request_reproduce(
        project.path, job_bin, s3_endpoint, volume, home_cache, f"s3://{bucket}/mr"
    )
    log = first.stdout + first.stderr
    assert "reproduce finished" in log and "FAIL" not in log, log  # dvc.lock changed: the allowed exit 3
    molecules_train = params_train = project.params()["generate"]["train_molecules"]
    assert featurized(log, "data/generated/train.parquet") == {
        "unique": molecules_train, "reused": 0, "computed": molecules_train,
    }  # fmt: skip
    seen = molecules(project.path / "data/generated/train.parquet")
    seen |= molecules(project.path / "data/generated/test.parquet")
    assert list((volume / "features").rglob("part-*.parquet")), "the feature cache is not on the volume"

    project.commit("dvc.lock of the first merge request (its job's artifact)")
    project.set_params({"generate": {"train_molecules": params_train * 11 // 10}})
    project.commit("10% more training molecules")
    clean_as_gitlab_does(project)
    assert (
        not list((project.path / "data").rglob("*.parquet"))
        and not (project.path / ".dvc" / "cache").exists()
    )

    second = merge_request_reproduce(
        project.path, job_bin, s3_endpoint, volume, home_cache, f"s3://{bucket}/mr"
    )
    log = second.stdout + second.stderr
    assert "reproduce finished" in log and "FAIL" not in log, log
    appended = molecules(project.path / "data/generated/train.parquet")
    counts = featurized(log, "data/generated/train.parquet")
    assert counts == {
        "unique": len(appended),
        "reused": len(appended & seen),
        "computed": len(appended - seen),
    }
    print("second job, featurize@train:", counts)
    assert counts["unique"] == params_train * 11 // 10 and 0 < counts["computed"] <= counts["unique"] // 5, (
        counts
    )
    assert not home_cache.exists()  # every job used the volume's feature cache, never the user's

    # DVC's cache is the volume's, and the clone's outputs are links into it where the filesystem has them.
    assert not (project.path / ".dvc" / "cache").exists()
    assert list((volume / "dvc-cache" / "files" / "md5").rglob("*")), "DVC's cache is not on the volume"
    link_types = re.search(r"Cache types: (.*)", project.dvc("doctor").stdout)[1]
    # (a file output: DVC links the files of a directory output when it checks them out, not after a stage writes
    # them, so a job's freshly written directories stay copies until the next checkout)
    output = project.path / "data" / "generated" / "train.parquet"
    if "reflink" not in link_types:  # a reflink cannot be told from a copy
        assert output.is_symlink() or os.stat(output).st_nlink > 1, link_types


# The `upgrade_check` job: a dependency upgrade reruns everything, on reduced data.


@needs_gcl
def test_gitlab_ci_local_runs_upgrade_check_on_a_sample(s3_endpoint, tmp_path, belka_sample):
    """A merge request that changes uv.lock, in a project whose inputs are real BELKA rows: upgrade_check reruns
    the whole pipeline twice, with the default branch's lock and the merge request's, on one seeded sample of those
    rows by molecule, and reports both runs. Here the two locks are the same, so every output is the same."""
    outside = tmp_path / "downloads"
    outside.mkdir()
    shutil.copy(belka_sample, outside / "train.csv")
    rows = pl.read_csv(belka_sample)
    rows.head(600).drop("binds").with_columns(pl.col("id") + 10**9).write_parquet(outside / "test.parquet")
    project = make_repo(tmp_path / "project")
    (project.path / "data" / "belka").mkdir(parents=True)
    for name in ("train.csv", "test.parquet"):
        project.dvc("import-url", str(outside / name), f"data/belka/{name}")
    project.set_params({"inputs": {"train": "data/belka/train.csv", "test": "data/belka/test.parquet"}})
    project.commit("real inputs")
    run_with_endpoint(project, s3_endpoint, "push", "data/belka/train.csv", "data/belka/test.parquet")
    shutil.rmtree(project.path / ".dvc" / "cache")  # as in a fresh clone: the job pulls them from the remote
    for name in ("train.csv", "test.parquet"):
        (project.path / "data" / "belka" / name).unlink()
    # origin: a bare repository the job can fetch the default branch from; gitlab-ci-local reads the project's
    # GitLab address from the remote gcl-origin first.
    subprocess.run(
        ["git", "clone", "-q", "--bare", str(project.path), str(tmp_path / "gitlab.git")], check=True
    )
    project.git("remote", "add", "origin", str(tmp_path / "gitlab.git"))
    project.git("remote", "add", "gcl-origin", GITLAB_ORIGIN)
    project.git("fetch", "-q", "origin")
    project.git("symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main")
    (project.path / ".git" / "info" / "exclude").write_text(".gitlab-ci-local/\n")

    result = gcl(
        project.path, "--force-shell-executor", *[f"--variable={v}" for v in MERGE_REQUEST if not v.endswith("=")],
        "--unset-variable=CI_COMMIT_BRANCH", "--no-evaluate-rule-changes", "--variable=UPGRADE_CHECK_DATA=sample",
        "--variable=UPGRADE_SAMPLE_FRACTION=0.5", "--variable=UPGRADE_SAMPLE_SEED=3", "upgrade_check",
        job_bin=layered_venv(tmp_path / "job-venv"), env={"AWS_ENDPOINT_URL": s3_endpoint, "BELKA_PROGRESS": "0"},
        timeout=900,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "upgrade_check finished" in log and "FAIL" not in log, log

    sample = pl.read_parquet(project.path / "upgrade-check" / "data" / "train.parquet")
    chosen = sample["molecule_smiles"].unique()
    assert sample.sort("id").equals(rows.filter(pl.col("molecule_smiles").is_in(chosen.implode())).sort("id"))
    assert 0.4 * len(rows) < len(sample) < 0.6 * len(rows)
    assert f"train: {len(sample):,} of {len(rows):,} rows of `data/belka/train.csv`" in log, log
    featurized = [
        (m["rows"], m["unique"], m["reused"], m["computed"])
        for m in FEATURIZED.finditer(log)
        if m["source"].endswith("upgrade-check/data/train.parquet")
    ]
    molecules = str(len(chosen))
    assert featurized == [(str(len(sample)), molecules, "0", molecules)] * 2, log  # both runs, from nothing

    summary = (project.path / "upgrade-check" / "summary.md").read_text()
    assert "Every output is byte-identical" in summary and "No locked version changed." in summary, summary
    changes = re.findall(r"^\| (\w+) \| ([-\d.]+) \| ([-\d.]+) \| ([-\d.]+) \|$", summary, re.M)
    assert changes and {change for *_, change in changes} == {"0.0000"}, summary
    assert all(f"upgrade_check > {line}" in log for line in summary.splitlines() if line), log  # logged too
    assert project.git("status", "--porcelain", "params.yaml").stdout == ""  # the run put params.yaml back
