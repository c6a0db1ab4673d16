"""The trust boundary between merge-request jobs and protected jobs (docs/ci.md, "Two trust levels"), run for real:
gitlab-ci-local jobs with the shell executor, real dvc and git, and a moto S3 server that enforces IAM, with the
three key pairs and the policies docs/ci.md gives the admin.

The merge-request runner is set up as docs/ci.md sets it up, emulated on one machine: its jobs run in a private
mount namespace where the trusted layer (the protected runner's volume, and the protected runner's clone) is a
read-only bind mount and CAP_SYS_ADMIN is dropped, so no job can mount it writable again (as a docker container
with a `:ro` volume); they get the merge request's variables only (GitLab withholds protected variables: that part
is GitLab's, given here as arguments), their own volume read-write, and the trusted feature cache read-only
through BELKA_TRUSTED_FEATURES (the runner's `environment`).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import pytest
import yaml

from tests.conftest import Repo, make_repo, project_env, run, tree_hashes
from tests.e2e.test_remote import clean_as_gitlab_does, featurized
from tests.test_gitlab_ci import MERGE_REQUEST, gcl, layered_venv, needs_gcl, set_gitlab_origin

pytestmark = pytest.mark.slow

TRUSTED, MR_BUCKET = "belka-dvc", "belka-dvc-mr"  # .dvc/config's remote, .gitlab-ci.yml's DVC_MR_REMOTE_URL
# Made at run time, as moto makes the keys: a literal would be found in the copies of this file the test makes.
API_TOKEN = f"glpat-{secrets.token_hex(10)}"  # the merge requests' note token (Reporter, short expiry)
IMAGE_PUSH_TOKEN = f"glpat-{secrets.token_hex(10)}"  # protected


def policy(bucket: str, *actions: str) -> str:
    resources = [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]
    return json.dumps({"Version": "2012-10-17",
                       "Statement": [{"Effect": "Allow", "Action": list(actions), "Resource": resources}]})  # fmt: skip


# Smaller than SMALL_PARAMS: four runs of the pipeline (seed, merge request, main, clean runner) in one test.
TINY = {
    "generate": {"train_molecules": 800},
    "xgb": {"n_estimators": 10},
    "evaluate": {"bootstrap_samples": 0},
}

READ = ("s3:GetObject", "s3:ListBucket", "s3:GetBucketLocation")
WRITE = (*READ, "s3:PutObject", "s3:AbortMultipartUpload")
# docs/ci.md, "Bucket policies": the keys of each role, and what they may do. None may delete.
ROLES = {"WRITE": policy(TRUSTED, *WRITE), "READ": policy(TRUSTED, *READ), "MR": policy(MR_BUCKET, *WRITE)}


@dataclass
class S3:
    endpoint: str
    keys: dict[str, tuple[str, str]]  # role: (access key id, secret)

    def client(self, role: str = "ADMIN"):
        key_id, secret = self.keys[role]
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=key_id, aws_secret_access_key=secret)  # fmt: skip

    def objects(self, bucket: str) -> dict[str, str]:
        """key: ETag of every object in ``bucket``."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket)
        return {item["Key"]: item["ETag"] for page in pages for item in page.get("Contents", [])}

    def variables(self, *roles: str) -> list[str]:
        return [f"--variable=DVC_{role}_{name}={value}" for role in roles
                for name, value in zip(("ACCESS_KEY_ID", "SECRET_ACCESS_KEY"), self.keys[role], strict=True)]  # fmt: skip


@pytest.fixture(scope="module")
def iam_s3() -> Iterator[S3]:
    """A moto S3 server of its own (a process: IAM enforcement is process-wide) that checks every request's keys
    against IAM: the first three requests, unauthenticated, make an admin; the admin makes the buckets and one
    user per role with the role's policy and keys."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3")
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        for _ in range(200):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.1)
        s3 = S3(f"http://127.0.0.1:{port}", {"ADMIN": ("bootstrap", "bootstrap")})
        iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")  # fmt: skip
        for role, document in {"ADMIN": json.dumps({"Version": "2012-10-17", "Statement": [
                {"Effect": "Allow", "Action": "*", "Resource": "*"}]}), **ROLES}.items():  # fmt: skip
            iam.create_user(UserName=role.lower())
            iam.put_user_policy(UserName=role.lower(), PolicyName=role.lower(), PolicyDocument=document)
            key = iam.create_access_key(UserName=role.lower())["AccessKey"]
            s3.keys[role] = (key["AccessKeyId"], key["SecretAccessKey"])
            if role == "ADMIN":
                iam = boto3.client("iam", endpoint_url=s3.endpoint, region_name="us-east-1",
                                   aws_access_key_id=key["AccessKeyId"],
                                   aws_secret_access_key=key["SecretAccessKey"])  # fmt: skip
        for bucket in (TRUSTED, MR_BUCKET):
            s3.client().create_bucket(Bucket=bucket)
        yield s3
    finally:
        server.terminate()
        server.wait(timeout=30)


def read_only(*paths: Path) -> tuple[str, ...]:
    """A command prefix: a private mount namespace where ``paths`` are read-only bind mounts, then CAP_SYS_ADMIN
    dropped from the bounding set, so nothing started under it can mount them writable again."""
    mounts = " && ".join(f'mount --bind "{p}" "{p}" && mount -o remount,bind,ro "{p}"' for p in paths)
    return ("unshare", "--mount", "--propagation", "private", "sh", "-c",
            f'{mounts} && exec setpriv --bounding-set=-sys_admin --inh-caps=-sys_admin "$@"', "read-only")  # fmt: skip


def can_mount_read_only(tmp_path: Path) -> bool:
    probe = tmp_path / "mount-probe"
    probe.mkdir()
    result = subprocess.run([*read_only(probe), "sh", "-c", f'! touch "{probe}/x" 2>/dev/null'],
                            capture_output=True)  # fmt: skip
    return result.returncode == 0 and not (probe / "x").exists()


# The hostile merge request. Its stages/cli.py (imported by every stage, a dep of none) flips the labels `generate`
# writes, so its run cache holds an entry main's `generate` would match; its stages/chem.py changes every feature
# without a FEATURE_VERSION bump; its .gitlab-ci.yml runs hostile.py in `reproduce`, which tries to write every
# cache and remote it can reach, with every key it was given.

HOSTILE_CLI = """

def _poison_generated_labels():  # hostile: rewrites generate's output after the stage wrote it
    if sys.argv[0].endswith("generate.py") and "--train" in sys.argv:
        import polars as pl

        path = sys.argv[sys.argv.index("--train") + 1]
        frame = pl.read_parquet(path)
        frame.with_columns((1 - pl.col("binds")).cast(frame.schema["binds"])).write_parquet(path)


import atexit  # noqa: E402

atexit.register(_poison_generated_labels)
"""

HOSTILE_CHEM = """

_featurize_smiles = featurize_smiles


def featurize_smiles(cleaned, config, fast=True):  # hostile: other features, FEATURE_VERSION not bumped
    batch = _featurize_smiles(cleaned, config, fast)
    batch.descriptors[:] += 1.0
    return batch
"""

HOSTILE_SCRIPT = '''
"""Write every cache and remote prefix this job can reach, with every key it was given; report what worked."""
import json, os, pathlib, subprocess, sys
import boto3

report = {"environment": dict(os.environ), "files": {}, "objects": {}, "dvc_push": {}, "dvc_push_log": {}}
own = pathlib.Path(os.environ["RUNNER_VOLUME"])
for target in [own, *map(pathlib.Path, sys.argv[1:])]:  # its own volume: new files only, a control
    existing = [] if target == own else sorted(
        p for p in target.rglob("*") if p.is_file() and ".gitlab-ci-local" not in p.parts)[:50]
    for path in [target / "features" / "hostile-new-part.parquet", target / "hostile-new", *existing]:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "ab") as file:
                file.write(b"hostile")
            report["files"][str(path)] = "written"
        except OSError as error:
            report["files"][str(path)] = f"denied ({error.strerror})"
pairs = {name[: -len("ACCESS_KEY_ID")]: (value, os.environ.get(name[: -len("ACCESS_KEY_ID")] + "SECRET_ACCESS_KEY"))
         for name, value in os.environ.items() if name.endswith("ACCESS_KEY_ID")}
for prefix, (key_id, secret) in pairs.items():
    s3 = boto3.client("s3", aws_access_key_id=key_id, aws_secret_access_key=secret)
    for bucket in ("belka-dvc", "belka-dvc-mr"):  # overwrites in the trusted one (its own stays sound, a control)
        try:
            listed = s3.list_objects_v2(Bucket=bucket).get("Contents", [])
            keys = [o["Key"] for o in listed][:3] if bucket == "belka-dvc" else []
        except Exception:
            keys = []
        for key in ["hostile/" + prefix, "runs/hostile/" + prefix, *keys]:
            try:
                s3.put_object(Bucket=bucket, Key=key, Body=b"hostile")
                report["objects"][f"{prefix} {bucket}/{key}"] = "written"
            except Exception as error:
                report["objects"][f"{prefix} {bucket}/{key}"] = f"denied ({type(error).__name__})"
    environment = dict(os.environ, AWS_ACCESS_KEY_ID=key_id, AWS_SECRET_ACCESS_KEY=secret, AWS_MAX_ATTEMPTS="1")
    for remote in ("storage", "mr"):
        pushed = subprocess.run(["dvc", "push", "--run-cache", "-r", remote], env=environment,
                                capture_output=True, text=True)
        report["dvc_push"][f"{prefix} {remote}"] = pushed.returncode
        report["dvc_push_log"][f"{prefix} {remote}"] = pushed.stderr[-2000:]
(own / "hostile-report.json").write_text(json.dumps(report))
'''


def hostile_merge_request(project: Path, *reachable: Path) -> None:
    """The merge request's commit on top of ``project``'s HEAD: the poisoned modules, the script, the job."""
    for module, code in (("stages/cli.py", HOSTILE_CLI), ("stages/chem.py", HOSTILE_CHEM)):
        (project / module).write_text((project / module).read_text() + code)
    (project / "hostile.py").write_text(HOSTILE_SCRIPT)
    ci = project / ".gitlab-ci.yml"
    push = "    - ci/dvc_remote.sh push\n"
    attack = f"    - python hostile.py {' '.join(str(p) for p in reachable)} || true\n"
    ci.write_text(ci.read_text().replace(push, push + attack))


def cache_files(cache: Path) -> set[str]:
    """DVC cache objects as the remote's keys (cache/files/md5/xx/yyyy...: .dvc/config's prefix), no run cache."""
    root = cache / "files"
    return {f"cache/files/{p.relative_to(root)}" for p in root.rglob("*") if p.is_file()}


def files_containing(root: Path, *secrets: str) -> list[str]:
    """Files under ``root`` (gitlab-ci-local's own folder aside) whose bytes hold any of ``secrets``."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and ".gitlab-ci-local" not in path.parts:
            data = path.read_bytes()
            found += [str(path) for secret in secrets if secret.encode() in data]
    return found


REFERENCE = Path(__file__).with_name(
    "trust_clean_run.json"
)  # a clean runner's run of main (--update records it)
OUTPUT_FOLDERS = ("data", "models", "metrics")


def main_repo(path: Path) -> Repo:
    """main as the test starts it: the project with TINY params, committed."""
    main = make_repo(path, TINY)
    main.set_params({"resources": {"feature_cache": None}})
    main.commit("the pipeline")
    return main


def append_rows(main: Repo) -> None:
    """main's next commit: 10% more training molecules."""
    train_molecules = main.params()["generate"]["train_molecules"]
    main.set_params({"generate": {"train_molecules": train_molecules * 11 // 10}})
    main.commit("10% more training molecules")


def clean_run_record(root: Path, cache: Path | None = None) -> dict:
    """What a run of the pipeline leaves: the sha256 of every output file, dvc.lock's outs (stage:path: md5) and,
    from a clean run's own DVC cache (``cache``), the cache objects it made (what its push would send). DVC's
    .gitignore files are left out: their lines come in the order the stages happened to run."""
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    record = {
        "files": {
            name: digest
            for name, digest in tree_hashes(root, *OUTPUT_FOLDERS).items()
            if Path(name).name != ".gitignore"
        },
        "lock_outs": {
            f"{stage}:{out['path']}": out["md5"]
            for stage, body in lock["stages"].items()
            for out in body.get("outs", [])
        },
    }
    if cache is not None:
        record["cache"] = sorted(
            key.removeprefix("cache/files/md5/").replace("/", "", 1) for key in cache_files(cache)
        )
    return record


def record_clean_run(workdir: Path) -> dict:
    """A clean runner's run of main after the appended rows: the same commit as the test's, no cache, no remote."""
    main = main_repo(workdir / "main")
    append_rows(main)
    run([sys.executable, "-m", "dvc", "repro"], main.path,
        env=project_env() | {"BELKA_FEATURE_CACHE": str(workdir / "clean-features")})  # fmt: skip
    return clean_run_record(main.path, main.path / ".dvc" / "cache")


@needs_gcl
def test_hostile_merge_request_cannot_reach_what_main_reads(iam_s3, tmp_path, monkeypatch):
    """A hostile merge request runs on the merge-request runner as docs/ci.md sets it up; then main's `reproduce`,
    after appended rows and without dvc.lock, on the protected runner: main's outputs (their bytes, and dvc.lock's
    outs) equal a clean runner's (recorded in trust_clean_run.json: a clean run of the same commit, which the test
    no longer repeats), the trusted remote and volume hold nothing from the merge request, and the merge request's job saw
    no protected key."""
    if not can_mount_read_only(tmp_path):
        pytest.skip("no private mount namespace here (unshare --mount needs CAP_SYS_ADMIN)")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)  # the jobs get the keys their trust level gets, nothing else
    s3 = iam_s3
    trusted, mr_volume = tmp_path / "trusted-volume", tmp_path / "mr-volume"
    env = {"AWS_ENDPOINT_URL": s3.endpoint, "AWS_DEFAULT_REGION": "us-east-1", "BELKA_PROGRESS": "0",
           "XDG_CACHE_HOME": str(tmp_path / "home-cache")}  # fmt: skip
    job_bin = layered_venv(tmp_path / "job-venv")

    # main's earlier work on the protected runner: the trusted volume and remote hold main's first run.
    main = main_repo(tmp_path / "main")
    (main.path / ".git" / "info" / "exclude").write_text(".gitlab-ci-local/\n")
    seed_env = project_env() | env | {"BELKA_FEATURE_CACHE": str(trusted / "features")}
    seed_env.update(zip(("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), s3.keys["WRITE"], strict=True))
    seed = ["repro", "featurize@train", "featurize@test"]  # generate and featurize: what the MR could reuse
    for args in (["cache", "dir", "--local", str(trusted / "dvc-cache")], seed, ["push", "--run-cache"]):
        subprocess.run([sys.executable, "-m", "dvc", *args], cwd=main.path, env=seed_env, check=True,
                       capture_output=True)  # fmt: skip
    # main gets 10% more training molecules; its dvc.lock is not committed (the run cache is what restores)
    append_rows(main)
    clean_as_gitlab_does(main)
    set_gitlab_origin(main.path)

    # The merge request, on top of that main, on the merge-request runner.
    subprocess.run(["git", "clone", "-q", str(main.path), str(tmp_path / "mr")], check=True)
    mr = Repo(tmp_path / "mr")
    hostile_merge_request(mr.path, trusted, main.path)
    mr.commit("hostile merge request")
    set_gitlab_origin(mr.path)
    mr.git("update-ref", "refs/remotes/origin/main", main.git("rev-parse", "HEAD").stdout.strip())
    (mr.path / ".git" / "info" / "exclude").write_text(".gitlab-ci-local/\n")
    trusted_volume_before = tree_hashes(trusted)
    trusted_remote_before = s3.objects(TRUSTED)

    result = gcl(
        mr.path, "--force-shell-executor", *[f"--variable={v}" for v in MERGE_REQUEST if not v.endswith("=")],
        "--unset-variable=CI_COMMIT_BRANCH", f"--variable=RUNNER_VOLUME={mr_volume}", *s3.variables("READ", "MR"),
        f"--variable=GITLAB_API_TOKEN={API_TOKEN}", "reproduce", job_bin=job_bin, timeout=600,
        env=env | {"BELKA_TRUSTED_FEATURES": str(trusted / "features")}, prefix=read_only(trusted, main.path),
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "reproduce finished" in log, log
    assert re.search(r"feature cache: [1-9]\d* part\(s\) copied from the trusted layer", log), (
        log
    )  # warm start
    assert "pushing outputs and run cache to the DVC remote 'mr' (s3://belka-dvc-mr/cache)" in log, log
    report = json.loads((mr_volume / "hostile-report.json").read_text())

    # What the merge request could write: its own volume and remote, nothing else.
    written = {path for path, outcome in report["files"].items() if outcome == "written"}
    assert written and all(Path(path).is_relative_to(mr_volume) for path in written), report["files"]
    assert any(Path(p).is_relative_to(trusted / "features") for p in report["files"]), report["files"]
    assert any(Path(p).is_relative_to(trusted / "dvc-cache") for p in report["files"]), report["files"]
    written = {what for what, outcome in report["objects"].items() if outcome == "written"}
    assert written and all(f" {MR_BUCKET}/" in what for what in written), report["objects"]
    assert {f"DVC_READ_ {TRUSTED}/hostile/DVC_READ_", f"DVC_MR_ {TRUSTED}/hostile/DVC_MR_"} <= report[
        "objects"
    ].keys()  # both key pairs tried the trusted bucket
    pushed = {what: code == 0 for what, code in report["dvc_push"].items()}
    assert pushed == {"DVC_READ_ storage": False, "DVC_READ_ mr": False, "DVC_MR_ storage": False,
                      "DVC_MR_ mr": True}, report["dvc_push_log"]  # fmt: skip
    assert tree_hashes(trusted) == trusted_volume_before
    assert s3.objects(TRUSTED) == trusted_remote_before
    mr_objects = s3.objects(MR_BUCKET)
    assert any(key.startswith("cache/runs/") for key in mr_objects), mr_objects  # its run cache: there
    poisoned = next(
        out["md5"] for out in yaml.safe_load((mr.path / "dvc.lock").read_text())["stages"]["generate"]["outs"]
        if out["path"] == "data/generated/train.parquet"
    )  # fmt: skip
    poisoned_key = f"cache/files/md5/{poisoned[:2]}/{poisoned[2:]}"
    assert poisoned_key in mr_objects

    # What the merge request's job saw: the merge request's variables, no protected key, no key on any disk.
    seen = report["environment"]
    protected = [*s3.keys["WRITE"], IMAGE_PUSH_TOKEN]
    assert not [name for name, value in seen.items() if any(secret in value for secret in protected)]
    assert seen["DVC_READ_ACCESS_KEY_ID"] == s3.keys["READ"][0] and seen["CI_COMMIT_REF_PROTECTED"] == "false"

    # main's `reproduce` on the protected runner, after the merge request.
    result = gcl(
        main.path, "--force-shell-executor", "--variable=CI_COMMIT_BRANCH=main",
        "--variable=CI_COMMIT_REF_PROTECTED=true", f"--variable=RUNNER_VOLUME={trusted}",
        *s3.variables("WRITE", "READ", "MR"), f"--variable=GITLAB_API_TOKEN={API_TOKEN}",
        f"--variable=IMAGE_PUSH_TOKEN={IMAGE_PUSH_TOKEN}", "reproduce", job_bin=job_bin, env=env, timeout=600,
    )  # fmt: skip
    log = result.stdout + result.stderr
    assert "pushing outputs and run cache to the DVC remote 'storage' (s3://belka-dvc/cache)" in log, log
    assert "dvc.lock on main is not what 'dvc repro' gives" in log, (
        log
    )  # no dvc.lock committed: the job says so
    counts = featurized(log, "data/generated/train.parquet")
    assert 0 < counts["computed"] < counts["unique"] // 5, counts  # the trusted feature cache, warm
    assert "Running stage 'generate'" in log, log  # not restored from the merge request's run cache

    # What a clean runner gives for the same commit (no cache, no remote): the reference committed beside this file
    # (the outputs' bytes and dvc.lock's outs), recorded by `python -m tests.e2e.test_trust --update`.
    reference = json.loads(REFERENCE.read_text())
    assert clean_run_record(main.path) == {key: reference[key] for key in ("files", "lock_outs")}, (
        f"main's outputs after the merge request differ from a clean runner's ({REFERENCE.name}): either the merge "
        "request reached them, or a change of the stages changed their outputs on purpose: then record them again "
        "with `python -m tests.e2e.test_trust --update` (a clean dvc repro of this commit, no merge request)"
    )
    assert poisoned not in (main.path / "dvc.lock").read_text()

    # The trusted remote holds main's outputs and run cache, nothing the merge request wrote.
    trusted_objects = s3.objects(TRUSTED)
    assert poisoned_key not in trusted_objects and not any("hostile" in key for key in trusted_objects)
    new = {
        key for key in trusted_objects.keys() - trusted_remote_before.keys() if key.startswith("cache/files/")
    }
    assert new and new <= {f"cache/files/md5/{md5[:2]}/{md5[2:]}" for md5 in reference["cache"]}, new
    assert files_containing(trusted, *protected) == [] and files_containing(main.path, *protected) == []
    assert not (tmp_path / "home-cache").exists()  # every job used its volume's feature cache


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description="record a clean runner's run of the test's main commit")
    parser.add_argument("--update", action="store_true", required=True)
    parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        record = record_clean_run(Path(workdir))
    REFERENCE.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    print(
        f"{REFERENCE}: {len(record['files'])} files, {len(record['lock_outs'])} outs, {len(record['cache'])} objects"
    )
