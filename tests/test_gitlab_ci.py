""".gitlab-ci.yml: GitLab's schema (check-jsonschema's vendored copy, offline), its structure, and, where
gitlab-ci-local is installed, its rules and the check_code and test jobs run for real with the shell executor
(the reproduce job runs in tests/e2e/test_remote.py, next to the S3 server)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CI_FILE = ROOT / ".gitlab-ci.yml"
PIPELINE_PATHS = {"stages/**/*", "dvc.yaml", "dvc.lock", "params.yaml", "pyproject.toml", "data/*.dvc"}


@pytest.fixture(scope="module")
def ci() -> dict:
    return yaml.safe_load(CI_FILE.read_text())


def scripts(job: dict) -> str:
    return "\n".join(job.get("before_script", []) + job.get("script", []))


def merged(ci: dict, name: str) -> dict:
    """A job with its `extends` applied (one level of hash merge, enough for this file)."""
    job = dict(ci[name])
    for parent in reversed(
        [job.pop("extends")] if isinstance(job.get("extends"), str) else job.pop("extends", [])
    ):
        base = merged(ci, parent)
        for key, value in job.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                base[key] = base[key] | value
            else:
                base[key] = value
        job = base
    return job


def test_validates_against_gitlab_schema():
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.gitlab-ci", str(CI_FILE)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_schema_check_catches_mistakes(tmp_path):
    bad = tmp_path / ".gitlab-ci.yml"
    bad.write_text("job:\n  script: [x]\n  interruptable: true\n")
    result = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.gitlab-ci", str(bad)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "interruptable" in result.stdout


def test_check_code_runs_ruff_check_and_format_in_parallel(ci):
    job = merged(ci, "check_code")
    commands = {c for entry in job["parallel"]["matrix"] for c in entry["RUFF_COMMAND"]}
    assert commands == {"check", "format --diff"}
    assert "ruff $RUFF_COMMAND" in job["script"]
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "push"'}]


def test_test_job_runs_readme_command_with_pip_cache(ci):
    job = merged(ci, "test")
    assert "python -m pip install -q -e '.[dev]'" in job["script"]
    assert job["script"][-1] == "python -m pytest"
    sources = {rule["if"] for rule in job["rules"]}
    assert sources == {'$CI_PIPELINE_SOURCE == "push"', '$CI_PIPELINE_SOURCE == "merge_request_event"'}
    assert job["cache"]["key"]["files"] == ["pyproject.toml"]
    assert ci["variables"]["PIP_CACHE_DIR"] == "$CI_PROJECT_DIR/.cache/pip"
    assert ".cache/pip" in job["cache"]["paths"]


def test_reproduce_job(ci):
    job = merged(ci, "reproduce")
    assert job["tags"] == ["$RUNNER_TAG"]
    assert ci["variables"]["RUNNER_TAG"] == "desktop-gpu-runner"
    assert job["variables"]["GIT_DEPTH"] == 0
    assert job["resource_group"]
    assert job["interruptible"] is True
    assert job["image"] == "$RUNNER_IMAGE"
    script = scripts(job)
    assert script.index("dvc repro --pull --allow-missing") < script.index("dvc push --run-cache")
    assert "git diff --exit-code -- dvc.lock" in script  # the default branch fails when dvc.lock differs
    rules = job["rules"]
    assert {"if": "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH"} in rules
    mr_rule = next(rule for rule in rules if rule.get("if") == '$CI_PIPELINE_SOURCE == "merge_request_event"')
    assert set(mr_rule["changes"]) == PIPELINE_PATHS
    assert rules[-1]["when"] == "manual"


def test_report_job(ci):
    job = merged(ci, "report")
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert job["variables"]["GIT_DEPTH"] == 0
    script = scripts(job)
    assert "git fetch" in script and "$CI_MERGE_REQUEST_TARGET_BRANCH_NAME" in script
    for command in (
        "dvc metrics diff --md",
        "dvc params diff --md",
        "dvc plots diff",
        "python ci/mr_report.py",
    ):
        assert command in script
    assert any(path.startswith("dvc-report") for path in job["artifacts"]["paths"])
    assert "$CI_JOB_ID/artifacts/file/$REPORT_DIR/plots/index.html" in script


def test_image_jobs(ci):
    build = merged(ci, "build_image")
    assert set(build["rules"][-1]["changes"]) == {"pyproject.toml", "Dockerfile"}
    assert "$CI_REGISTRY_IMAGE" in scripts(build)
    for name in ("reproduce", "report", "score", "upgrade_check"):
        assert merged(ci, name)["image"] == "$RUNNER_IMAGE"
    assert ci["variables"]["RUNNER_IMAGE"].startswith("$CI_REGISTRY_IMAGE/")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM python:3.11-slim") or "\nFROM python:3.11-slim" in dockerfile
    assert "git" in dockerfile and "pyproject.toml" in dockerfile


def test_scheduled_variants(ci):
    score = merged(ci, "score")
    assert score["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule" && $PIPELINE_MODE == "score"'}]
    assert "dvc repro --pull --allow-missing predict" in scripts(score)
    upgrade = merged(ci, "upgrade_check")
    assert upgrade["rules"][0]["if"] == '$CI_PIPELINE_SOURCE == "schedule" && $PIPELINE_MODE == "upgrade"'
    assert {"changes": ["pyproject.toml"]} in upgrade["rules"]
    assert "dvc repro --force" in scripts(upgrade)
    assert "dvc push" not in scripts(upgrade)


def test_no_credentials_in_ci_file():
    text = CI_FILE.read_text()
    for word in ("glpat-", "AKIA", "aws_secret_access_key =", "password:"):
        assert word not in text


# gitlab-ci-local: optional (npm package; needs rsync). `.ci/run` installs it where CI has npm.

GITLAB_CI_LOCAL = os.environ.get("GITLAB_CI_LOCAL") or shutil.which("gitlab-ci-local")
needs_gcl = pytest.mark.skipif(
    not GITLAB_CI_LOCAL or not shutil.which("rsync"), reason="gitlab-ci-local (npm) or rsync not installed"
)


GITLAB_ORIGIN = "https://gitlab.invalid/belka/belka-dvc.git"


def gcl_project(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    shutil.copy2(CI_FILE, path / ".gitlab-ci.yml")
    shutil.copy2(ROOT / "pyproject.toml", path / "pyproject.toml")
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "-m", "x"]):
        subprocess.run(["git", *args], cwd=path, env=gcl_env(), check=True, capture_output=True)
    set_gitlab_origin(path)
    return path


def set_gitlab_origin(path: Path) -> None:
    """gitlab-ci-local reads the project from origin and diffs against origin/main for rules:changes: point
    origin at a GitLab URL and origin/main at HEAD (call again after a commit that main should include)."""
    has_origin = subprocess.run(["git", "remote", "get-url", "origin"], cwd=path, capture_output=True)
    for args in (
        ["remote", "set-url" if has_origin.returncode == 0 else "add", "origin", GITLAB_ORIGIN],
        ["update-ref", "refs/remotes/origin/main", "HEAD"],
        ["symbolic-ref", "refs/remotes/origin/HEAD", "refs/remotes/origin/main"],
    ):
        subprocess.run(["git", *args], cwd=path, env=gcl_env(), check=True, capture_output=True)


def gcl_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's ruff and pip
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid", PIP_NO_INDEX="1",
               GCL_IGNORE_PREDEFINED_VARS="CI_PIPELINE_SOURCE,CI_COMMIT_BRANCH")  # fmt: skip
    return env


def layered_venv(path: Path) -> Path:
    """A venv that sees this one's packages, pip and setuptools included (so nothing is downloaded), but installs
    into its own site-packages: the job's `pip install -e .` must not repoint this run's `stages` elsewhere."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True)
    python = path / "bin" / "python"
    own = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                         check=True, capture_output=True, text=True)  # fmt: skip
    parent = sysconfig.get_paths()["purelib"]
    (Path(own.stdout.strip()) / "zz_test_parent_env.pth").write_text(
        f"import site; site.addsitedir({parent!r})\n"
    )
    return path / "bin"


def gcl(
    project: Path,
    *args: str,
    job_bin: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: int = 300,
) -> subprocess.CompletedProcess:
    """Run gitlab-ci-local in ``project``; jobs that install the project get ``job_bin`` (a layered_venv) first
    on PATH and build it with that venv's setuptools, so nothing is downloaded."""
    full_env = gcl_env()
    if job_bin is not None:
        full_env["PATH"] = f"{job_bin}{os.pathsep}{full_env['PATH']}"
        full_env["PIP_NO_BUILD_ISOLATION"] = "0"
    full_env.update(env or {})
    return subprocess.run(
        [GITLAB_CI_LOCAL, "--no-color", *args], cwd=project, env=full_env, capture_output=True, text=True,
        timeout=timeout,
    )  # fmt: skip


def listed_jobs(project: Path, *variables: str) -> dict[str, str]:
    result = gcl(project, "--list-csv", *[f"--variable={v}" for v in variables])
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout[result.stdout.index("name;stage;when") :].splitlines()[1:]
    return {line.split(";")[0]: line.split(";")[2] for line in lines if line.strip()}


CLEAN = 'def greet(name: str) -> str:\n    return f"hello {name}"\n'


@needs_gcl
def test_gitlab_ci_local_rules(tmp_path):
    project = gcl_project(tmp_path / "p", {"clean.py": CLEAN})
    push = listed_jobs(project)
    assert {"check_code: [check]", "check_code: [format --diff]", "test", "reproduce"} <= push.keys()
    assert push["reproduce"] == "on_success"  # on the default branch
    assert listed_jobs(project, "CI_COMMIT_BRANCH=feature")["reproduce"] == "manual"
    mr = listed_jobs(project, "CI_PIPELINE_SOURCE=merge_request_event", "CI_MERGE_REQUEST_IID=3")
    assert {"test", "reproduce", "report"} <= mr.keys() and "check_code: [check]" not in mr
    assert listed_jobs(project, "CI_PIPELINE_SOURCE=schedule", "PIPELINE_MODE=score").keys() == {"score"}
    assert listed_jobs(project, "CI_PIPELINE_SOURCE=schedule", "PIPELINE_MODE=upgrade").keys() == {
        "upgrade_check"
    }


@needs_gcl
def test_gitlab_ci_local_runs_check_code(tmp_path):
    clean = gcl_project(tmp_path / "clean", {"clean.py": CLEAN})
    result = gcl(clean, "--force-shell-executor", "check_code")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check_code: [check] finished" in result.stdout
    assert "check_code: [format --diff] finished" in result.stdout
    assert "FAIL" not in result.stdout

    messy = gcl_project(tmp_path / "messy", {"clean.py": CLEAN, "messy.py": "import os\nx = {  'a':1 }\n"})
    result = gcl(messy, "--force-shell-executor", "check_code")
    assert result.returncode != 0
    assert "FAIL  check_code: [check]" in result.stdout  # F401 os imported but unused
    assert "FAIL  check_code: [format --diff]" in result.stdout


PASSING_TEST = "def test_adds():\n    assert 1 + 1 == 2\n"


@needs_gcl
def test_gitlab_ci_local_runs_the_test_job(tmp_path):
    """The `test` job installs the project with its dev extra and runs the README's test command; a failing test
    fails the job. (A stand-in project: the real suite under the job would run this test again.)"""
    job_bin = layered_venv(tmp_path / "job-venv")
    files = {"stages/__init__.py": "", "tests/test_ok.py": PASSING_TEST}

    passing = gcl_project(tmp_path / "passing", files)
    result = gcl(passing, "--force-shell-executor", "test", job_bin=job_bin)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "$ python -m pip install -q -e '.[dev]'" in log and "$ python -m pytest" in log, log
    assert re.search(r"test > =+ 1 passed", log), log
    assert "test finished" in log and "FAIL" not in log, log

    failing = gcl_project(
        tmp_path / "failing", files | {"tests/test_bad.py": "def test_bad():\n    assert False\n"}
    )
    result = gcl(failing, "--force-shell-executor", "test", job_bin=job_bin)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log
    assert "FAIL  test" in log and "1 failed, 1 passed" in log, log
