"""The merge-request `sweep` job of .gitlab-ci.yml, run by gitlab-ci-local with the shell executor: real dvc and
git, a moto S3 server on loopback holding the trusted and the merge-request remotes, a bare git repository as the
remote the experiments go to; the GitLab API (the note) is the one thing mocked (tests/test_mr_report.py's
stand-in). Then a second clone pulls and applies the best experiment."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import Repo, make_repo, project_env, run
from tests.e2e.test_remote import ACCESS_KEY, SECRET_KEY
from tests.test_gitlab_ci import GITLAB_ORIGIN, MERGE_REQUEST, gcl, layered_venv, needs_gcl, set_gitlab_origin
from tests.test_mr_report import TOKEN
from tests.test_sweep import tables

pytestmark = pytest.mark.slow

TRUSTED, MR_BUCKET = "belka-dvc", "belka-dvc-mr"  # .dvc/config's remote, .gitlab-ci.yml's DVC_MR_REMOTE_URL
TINY = {  # a few seconds a run: two experiments and the base in one job
    "generate": {"train_molecules": 800},
    "xgb": {"n_estimators": 10},
    "train": {"final_fit": False},  # the final model is the split model: one fit an experiment
    "evaluate": {"bootstrap_samples": 100},
    "resources": {"feature_cache": None},
}
GRID = "# two experiments\n-S xgb.max_depth=2,6\n"


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY)  # fmt: skip
    for bucket in (TRUSTED, MR_BUCKET):
        client.create_bucket(Bucket=bucket)
    try:
        yield endpoint
    finally:
        server.stop()


def objects(endpoint: str, bucket: str) -> set[str]:
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=ACCESS_KEY,
                          aws_secret_access_key=SECRET_KEY)  # fmt: skip
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return {item["Key"] for page in pages for item in page.get("Contents", [])}


def aws(endpoint: str) -> dict[str, str]:
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip


def main_with_a_run(tmp_path: Path, endpoint: str) -> Repo:
    """main, reproduced and committed (dvc.lock, metrics), its outputs on the trusted remote."""
    main = make_repo(tmp_path / "main", TINY)
    env = project_env() | aws(endpoint) | {"BELKA_FEATURE_CACHE": str(tmp_path / "main-features")}
    for args in (["repro"], ["push"]):
        run([sys.executable, "-m", "dvc", *args], main.path, env=env)
    main.commit("main's run")
    return main


def merge_request(main: Repo, path: Path, files: dict[str, str]) -> Repo:
    """A merge request on top of main: ``files`` committed, origin/main at main's head, as gitlab-ci-local wants."""
    run(["git", "clone", "-q", str(main.path), str(path)], path.parent)
    mr = Repo(path)
    for name, text in files.items():
        (mr.path / name).write_text(text)
    mr.commit("a sweep")
    set_gitlab_origin(mr.path)
    mr.git("update-ref", "refs/remotes/origin/main", main.git("rev-parse", "HEAD").stdout.strip())
    (mr.path / ".git" / "info" / "exclude").write_text(".gitlab-ci-local/\n")
    return mr


def rows_compared(result: dict) -> str:
    return f"{result['difference']['rows_common']:,}"


def sweep_job(mr: Repo, main: Repo, job_bin: Path, endpoint: str, api: str, *variables: str):
    """The merge request pipeline's `sweep` job, started by SWEEP=true. The jobs' git reads GitLab's project (the
    target branch's fetch) from main's repository (insteadOf, in the jobs' environment only)."""
    return gcl(
        mr.path, "--force-shell-executor", *[f"--variable={v}" for v in MERGE_REQUEST if not v.endswith("=")],
        "--unset-variable=CI_COMMIT_BRANCH", "--variable=SWEEP=true",
        "--variable=CI_MERGE_REQUEST_TARGET_BRANCH_NAME=main", "--variable=CI_MERGE_REQUEST_IID=7",
        "--variable=CI_PROJECT_ID=42", f"--variable=CI_API_V4_URL={api}", f"--variable=GITLAB_API_TOKEN={TOKEN}",
        *[f"--variable=DVC_{role}_{name}={value}" for role in ("READ", "MR")
          for name, value in (("ACCESS_KEY_ID", ACCESS_KEY), ("SECRET_ACCESS_KEY", SECRET_KEY))],
        "--variable=GIT_CONFIG_COUNT=1", f"--variable=GIT_CONFIG_KEY_0=url.{main.path}.insteadOf",
        f"--variable=GIT_CONFIG_VALUE_0={GITLAB_ORIGIN}", *variables, "sweep",
        job_bin=job_bin, timeout=600, env={"AWS_ENDPOINT_URL": endpoint, "BELKA_PROGRESS": "0",
        "GCL_IGNORE_PREDEFINED_VARS": "CI_PIPELINE_SOURCE,CI_COMMIT_BRANCH,CI_PROJECT_ID,CI_API_V4_URL"},
    )  # fmt: skip


@needs_gcl
def test_the_sweep_job_runs_pushes_and_compares_the_experiments(s3, gitlab, tmp_path):
    fake, api = gitlab
    main = main_with_a_run(tmp_path, s3)
    mr = merge_request(main, tmp_path / "mr", {"ci/sweep.grid": GRID})
    experiments_remote = tmp_path / "experiments.git"
    run(["git", "init", "-q", "--bare", str(experiments_remote)], tmp_path)
    trusted_before = objects(s3, TRUSTED)

    result = sweep_job(mr, main, layered_venv(tmp_path / "job-venv"), s3, api,
                       f"--variable=SWEEP_GIT_REMOTE={experiments_remote}")  # fmt: skip
    log = result.stdout + result.stderr
    assert "sweep finished" in log and "FAIL" not in log, log
    print(*re.findall(r"sweep: \S+ done in .*|sweep finished in .*", log), sep="\n")  # times (pytest -s)
    assert "sweep: 2 experiment(s), params valid (cap 8)" in log, log
    assert "Running stage 'featurize" not in log and "Running stage 'generate'" not in log, log  # restored
    assert log.count("Running stage 'train'") == 2, log  # once per experiment, never for the MR's own run

    # the experiments' refs in the git remote, their outputs in the merge-request remote, nothing in the trusted
    refs = run(["git", "for-each-ref", "--format=%(refname)", "refs/exps"], experiments_remote).stdout.split()
    names = sorted(ref.rsplit("/", 1)[1] for ref in refs)
    assert len(names) == 2 and all(name.startswith("mr7-j") for name in names), refs
    assert sorted(name.rsplit("-", 1)[1] for name in names) == ["1", "2"], names
    pushed = objects(s3, MR_BUCKET)
    for ref in refs:
        lock = yaml.safe_load(run(["git", "show", f"{ref}:dvc.lock"], experiments_remote).stdout)
        for stage in ("train", "final", "evaluate"):
            for out in lock["stages"][stage]["outs"]:
                if "md5" in out and out.get("path", "").startswith(("models/", "data/")):
                    md5 = out["md5"].removesuffix(".dir")
                    suffix = ".dir" if out["md5"].endswith(".dir") else ""
                    assert f"cache/files/md5/{md5[:2]}/{md5[2:]}{suffix}" in pushed, (stage, out)
    assert objects(s3, TRUSTED) == trusted_before

    # the note: one table, the base first, then the runs by score; the paired differences
    notes = [note["body"] for note in fake.notes if "<!-- belka-dvc-sweep -->" in note["body"]]
    assert len(notes) == 1, fake.notes
    print(notes[0])  # the rendered note (pytest -s shows it)
    runs, paired = tables(notes[0])
    head, *rows = runs
    assert head[5:] == ["`max_depth`"], head  # the only param that differs
    assert rows[0][0] == "main (base)" and rows[0][5] == "4"
    summary = json.loads((main.path / "metrics/evaluate-summary.json").read_text())
    score = json.loads((main.path / "metrics/evaluate.json").read_text())["score"]
    low, high = summary["bootstrap"]["score"]
    assert rows[0][1] == f"{score:.3f} [{low:.3f}, {high:.3f}]"
    results = {row["name"]: row for row in json.loads(Path(mr.path / "sweep/results.json").read_text())}
    scores = [results[cells[0]]["figures"]["score"] for cells in rows[1:]]
    assert scores == sorted(scores, reverse=True) and len(rows) == 4
    assert {cells[0]: cells[5] for cells in rows[1:]} == {
        "this MR": "4",
        **{
            name: str(results[name]["params"]["xgb"]["max_depth"])
            for name in results
            if name.startswith("mr7")
        },
    }
    by_run = {cells[0]: cells[1:] for cells in paired[1:]}
    # the merge request changes no param: its run is main's, restored; against main, exactly zero
    assert by_run["this MR"] == ["+0.000 [+0.000, +0.000]"] * 3 + [rows_compared(results["this MR"])]
    assert set(by_run) == set(results) - {"main"}

    # a second clone pulls the best experiment and applies it: the same metrics, every output there
    best = max((n for n in results if n.startswith("mr7")), key=lambda n: results[n]["figures"]["score"])
    assert f"dvc exp apply {best}" in notes[0]
    second = Repo(tmp_path / "second")
    run(["git", "clone", "-q", str(mr.path), str(second.path)], tmp_path)
    second.dvc("remote", "add", "--local", "mr", f"s3://{MR_BUCKET}/cache")
    env = project_env() | aws(s3)
    run([sys.executable, "-m", "dvc", "exp", "pull", "--remote", "mr", str(experiments_remote), best],
        second.path, env=env)  # fmt: skip
    run([sys.executable, "-m", "dvc", "exp", "apply", best], second.path, env=env)
    metrics = json.loads((second.path / "metrics/evaluate.json").read_text())
    assert {name: metrics[name] for name in ("score", "share", "non_share") if name in metrics} == results[
        best
    ]["figures"]
    assert (
        yaml.safe_load((second.path / "params.yaml").read_text())["xgb"]["max_depth"]
        == results[best]["params"]["xgb"]["max_depth"]
    )
    assert (second.path / "models/final/manifest.json").exists()
    assert (second.path / "data/evaluate/valid-predictions.parquet").exists()

    # the same paired comparison as a local command: the base's predictions from the trusted remote through git and
    # dvc.api, the experiment's by its name
    run([sys.executable, "-m", "stages.compare", "HEAD", best, "--json", str(tmp_path / "compare.json")],
        second.path, env=env)  # fmt: skip
    compared = json.loads((tmp_path / "compare.json").read_text())
    assert compared["figures"] == results[best]["difference"]["figures"]


@needs_gcl
def test_a_grid_with_an_unknown_key_fails_before_any_training(s3, gitlab, tmp_path):
    fake, api = gitlab
    main = make_repo(tmp_path / "main", TINY)
    mr = merge_request(main, tmp_path / "mr", {"ci/sweep.grid": "-S xgb.max_depth=2\n-S xgb.max_dept=3,4\n"})
    result = sweep_job(mr, main, layered_venv(tmp_path / "job-venv"), s3, api)
    log = result.stdout + result.stderr
    assert "FAIL  sweep" in log, log
    assert ("sweep: error: ci/sweep.grid line 2: experiment 2 (xgb.max_dept=3) is invalid: xgb.max_dept: unknown "
            "key (allowed here: n_estimators, max_depth,") in log, log  # fmt: skip
    assert "Running stage" not in log and "dvc repro" not in log.split("sweep: error")[1], log
    assert not [note for note in fake.notes if "<!-- belka-dvc-sweep -->" in note["body"]]
