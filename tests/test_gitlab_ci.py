""".gitlab-ci.yml: GitLab's schema (check-jsonschema's vendored copy, offline), its structure, that every install
comes from uv.lock, and, where gitlab-ci-local is installed, its rules and the check_code and test jobs run for
real with the shell executor (the reproduce job runs in tests/e2e/test_remote.py, next to the S3 server). Jobs run
under gitlab-ci-local install from uv's cache, offline (UV_OFFLINE): the cache that set up this run's venv."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CI_FILE = ROOT / ".gitlab-ci.yml"
UV = shutil.which("uv")


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
    assert job["script"][-1] == "uv run --frozen --only-group lint ruff $RUFF_COMMAND"
    assert job["cache"]["key"]["files"] == ["uv.lock"]


def test_check_code_runs_the_locked_ruff():
    """The lint group is ruff alone, and uv.lock has one ruff: the one the dev extra gets too."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert [r.split(">")[0] for r in project["dependency-groups"]["lint"]] == ["ruff"]
    lock = tomllib.loads((ROOT / "uv.lock").read_text())
    assert len([package for package in lock["package"] if package["name"] == "ruff"]) == 1
    ours = next(package for package in lock["package"] if package["name"] == "belka-dvc")
    assert ours["dev-dependencies"]["lint"] == [{"name": "ruff"}]


def readme_commands() -> tuple[list[str], list[str]]:
    """The commands of the README's first two code blocks: run the pipeline, run the tests."""
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)[:2]
    return tuple(
        [
            part.split("#")[0].strip()
            for line in block.splitlines()
            for part in line.split("&&")
            if part.strip()
        ]
        for block in blocks
    )


TEST_SCRIPT = ROOT / "ci" / "test.sh"


def test_readme_installs_from_the_lock():
    pipeline, tests = readme_commands()
    assert pipeline[0] == "python3 -m pip install uv", pipeline
    assert any(c.startswith("uv sync --frozen") for c in pipeline), pipeline
    assert pipeline[-1] in ("uv run --frozen dvc repro", "dvc repro"), pipeline
    # the tests: one script that sets up everything a fresh machine can run, every tier; the fast tier by a filter
    assert tests == ["ci/test.sh", 'ci/test.sh -m "not slow"'], tests
    script = TEST_SCRIPT.read_text()
    for commands in (pipeline, script.splitlines()):
        assert not any("pip install -e" in c or "uv pip" in c for c in commands), commands
    assert "uv sync --frozen --extra dev --python python3\n" in script
    # every tier, on every core; nothing but uv from pip
    assert script.rstrip().endswith('uv run --frozen python -m pytest -n auto --dist worksteal "$@"')
    assert '-m pip install -q --disable-pip-version-check "uv==$UV_VERSION"' in script
    assert "gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION" in script and "apt-get install -y -qq rsync" in script
    pytest_options = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-ra" in pytest_options["addopts"]  # the summary names every skipped test and why


def test_test_job_runs_readme_command_with_uv_cache(ci):
    job = merged(ci, "test")
    assert "uv sync --frozen --extra dev" in job["script"] and "uv lock --check" in job["script"]
    assert "uv sync --frozen --extra dev" in TEST_SCRIPT.read_text()
    assert job["script"][-1] == "uv run --frozen python -m pytest -n auto"  # every tier, as ci/test.sh
    assert job["script"].index("uv lock --check") < job["script"].index("uv sync --frozen --extra dev")
    sources = {rule["if"] for rule in job["rules"]}
    assert sources == {'$CI_PIPELINE_SOURCE == "push"', '$CI_PIPELINE_SOURCE == "merge_request_event"'}
    assert job["cache"]["key"]["files"] == ["uv.lock"]
    assert ci["variables"]["UV_CACHE_DIR"] == "$CI_PROJECT_DIR/.cache/uv"
    assert ".cache/uv" in job["cache"]["paths"]
    assert ci["variables"]["UV_PYTHON_DOWNLOADS"] == "never"


def test_ci_run_is_the_readme_test_command():
    run = (ROOT / ".ci" / "run").read_text()
    assert run.rstrip().endswith('exec "$(dirname "$0")/../ci/test.sh" "$@"')
    assert "UV_PYTHON_DOWNLOADS=never" in TEST_SCRIPT.read_text()
    for path in (ROOT / ".ci" / "run", TEST_SCRIPT):
        assert os.access(path, os.X_OK), path
        assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0, path


def test_every_install_is_from_the_lock(ci):
    """No job re-resolves: every `uv sync` is --frozen, nothing is pip-installed but uv itself, and jobs that
    bootstrap uv take the same version as the Dockerfile and ci/test.sh (the README's test command)."""
    for name, job in ci.items():
        if not isinstance(job, dict) or "script" not in merged(ci, name):
            continue
        for command in scripts(merged(ci, name)).splitlines():
            if "uv sync" in command:
                assert "--frozen" in command, (name, command)
            if "pip install" in command:
                assert '"uv==$UV_VERSION"' in command, (name, command)
    version = ci["variables"]["UV_VERSION"]
    assert f"ARG UV_VERSION={version}\n" in (ROOT / "Dockerfile").read_text()
    assert f"UV_VERSION={version} " in TEST_SCRIPT.read_text()


def test_reproduce_job(ci):
    job = merged(ci, "reproduce")
    # the protected runner's tag or the merge-request runner's, by workflow:rules
    assert job["tags"] == ["$RUNNER_TAG"]
    assert ci["variables"]["PROTECTED_RUNNER_TAG"] == "desktop-gpu-runner"
    assert job["variables"]["GIT_DEPTH"] == 0
    assert job["resource_group"]
    assert job["interruptible"] is True
    assert job["image"] == "$RUNNER_IMAGE"
    script = scripts(job)
    assert script.index("dvc repro --pull --allow-missing") < script.index("ci/dvc_remote.sh push")
    assert "git diff --exit-code -- dvc.lock" in script  # the default branch fails when dvc.lock differs


def test_report_job(ci):
    job = merged(ci, "report")
    assert job["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "merge_request_event"'}]
    assert job["variables"]["GIT_DEPTH"] == 0
    script = scripts(job)
    assert "git fetch" in script and "$CI_MERGE_REQUEST_TARGET_BRANCH_NAME" in script
    for command in (
        "dvc metrics diff --md",
        "dvc params diff --md",
        'dvc plots diff "$BASE" --json > "$REPORT_DIR/plots.json"',
        "python ci/mr_report.py",
        '--plots-json "$REPORT_DIR/plots.json"',
    ):
        assert command in script
    assert any(path.startswith("dvc-report") for path in job["artifacts"]["paths"])
    assert "$CI_JOB_ID/artifacts/file/$REPORT_DIR/plots/index.html" in script
    assert (
        job["before_script"][0] == "uv sync --frozen --extra dev"
    )  # python-gitlab and vl-convert: dev extra


def test_image_jobs(ci):
    build = merged(ci, "build_image")
    assert set(build["rules"][-1]["changes"]) == {"uv.lock", "pyproject.toml", "Dockerfile"}
    assert "$IMAGE_REPOSITORY" in scripts(build)
    for name in ("reproduce", "report", "score", "upgrade_check"):
        assert merged(ci, name)["image"] == "$RUNNER_IMAGE"
    assert ci["variables"]["RUNNER_IMAGE"].startswith("$CI_REGISTRY_IMAGE/")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert dockerfile.startswith("FROM python:3.11-slim") or "\nFROM python:3.11-slim" in dockerfile
    assert "git" in dockerfile and "COPY pyproject.toml uv.lock " in dockerfile
    assert "uv sync --frozen --no-install-project --extra dev" in dockerfile  # dependencies only: no code
    assert "COPY . " not in dockerfile and "pip install -r" not in dockerfile


def test_scheduled_variants(ci):
    score = merged(ci, "score")
    assert score["rules"] == [{"if": '$CI_PIPELINE_SOURCE == "schedule" && $PIPELINE_MODE == "score"'}]
    assert "dvc repro --pull --allow-missing predict" in scripts(score)
    upgrade = merged(ci, "upgrade_check")
    assert upgrade["rules"][0] == {
        "if": '$CI_PIPELINE_SOURCE == "schedule" && $PIPELINE_MODE == "upgrade"',
        "variables": {"UV_LOCK_UPGRADE": "true"},
    }
    assert upgrade["variables"]["UV_LOCK_UPGRADE"] == "false"
    # each run starts from the record of the versions it runs with (every stage refuses others)
    steps = upgrade["script"]
    for run in ("python ci/upgrade_check.py run before", "python ci/upgrade_check.py run after"):
        installs = [i for i, step in enumerate(steps[: steps.index(run)]) if step.startswith("uv sync")]
        assert "python -m stages.environment" in steps[installs[-1] : steps.index(run)], run
    assert "environment.yaml" in upgrade["artifacts"]["paths"]
    assert "dvc push" not in scripts(upgrade)


def test_no_credentials_in_ci_file():
    text = CI_FILE.read_text()
    for word in ("glpat-", "AKIA", "aws_secret_access_key =", "password:"):
        assert word not in text


# gitlab-ci-local: an npm package; needs rsync. ci/test.sh (the README's test command) installs both where it can.

GITLAB_CI_LOCAL = os.environ.get("GITLAB_CI_LOCAL") or shutil.which("gitlab-ci-local")
GCL_MISSING = [
    name
    for name, found in (("gitlab-ci-local", GITLAB_CI_LOCAL), ("rsync", shutil.which("rsync")), ("uv", UV))
    if not found
]
needs_gcl = pytest.mark.skipif(
    bool(GCL_MISSING),
    reason=f"{', '.join(GCL_MISSING)} not on PATH (ci/test.sh installs gitlab-ci-local with npm, rsync with apt, uv with pip)",
)


GITLAB_ORIGIN = "https://gitlab.invalid/belka/belka-dvc.git"


def gcl_project(path: Path, files: dict[str, str]) -> Path:
    path.mkdir()
    shutil.copy2(CI_FILE, path / ".gitlab-ci.yml")
    shutil.copy2(ROOT / "pyproject.toml", path / "pyproject.toml")
    shutil.copy2(ROOT / "uv.lock", path / "uv.lock")
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
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"  # the venv's python
    env.update(GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid", PIP_NO_INDEX="1", UV_OFFLINE="1",
               GCL_IGNORE_PREDEFINED_VARS="CI_PIPELINE_SOURCE,CI_COMMIT_BRANCH")  # fmt: skip
    return env


@cache
def uv_cache_dir() -> str:
    """The uv cache that installed this run's venv: jobs install from it offline instead of from the index."""
    return subprocess.run([UV, "cache", "dir"], check=True, capture_output=True, text=True).stdout.strip()


def uv_variables() -> list[str]:
    """Override .gitlab-ci.yml's uv variables (a project-level --variable wins over the file's, as in GitLab):
    this machine's cache, hard links instead of copies."""
    return [f"--variable=UV_CACHE_DIR={uv_cache_dir()}", "--variable=UV_LINK_MODE=hardlink"] if UV else []


def layered_venv(path: Path) -> Path:
    """A venv of this run's python for a job's `uv sync --frozen` (UV_PROJECT_ENVIRONMENT, as /opt/venv in the
    runner image): it installs into its own site-packages, so it never repoints this run's `stages` elsewhere.
    It also sees this venv's packages, for whatever runs before the sync."""
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
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess:
    """Run gitlab-ci-local in ``project``; jobs that install the project get ``job_bin`` (a layered_venv) first
    on PATH and as the environment that `uv sync` fills, from uv's cache, offline. The runner's volume is
    ``runner-volume`` beside the project unless ``args`` set RUNNER_VOLUME: never the host's /belka-runner, whose
    DVC run cache would outlive the test (a stage then restored from an earlier run's cache instead of run).
    ``prefix`` runs gitlab-ci-local through a command (e.g. one that mounts a runner's read-only layer)."""
    if not any(arg.startswith("--variable=RUNNER_VOLUME=") for arg in args):
        args = (f"--variable=RUNNER_VOLUME={project.parent / 'runner-volume'}", *args)
    full_env = gcl_env()
    if job_bin is not None:
        full_env["PATH"] = f"{job_bin}{os.pathsep}{full_env['PATH']}"
        full_env["UV_PROJECT_ENVIRONMENT"] = str(job_bin.parent)
    full_env.update(env or {})
    return subprocess.run(
        [*prefix, GITLAB_CI_LOCAL, "--no-color", *uv_variables(), *args], cwd=project, env=full_env, capture_output=True,
        text=True, timeout=timeout,
    )  # fmt: skip


def listed_jobs(project: Path, *variables: str, ci_file: str | None = None) -> dict[str, str]:
    """{job: when} of the pipeline that ``variables`` describe; a variable given as ``NAME=`` is unset (as GitLab
    leaves CI_COMMIT_BRANCH unset in a merge request pipeline), one given as ``NAME=value`` is set."""
    args = [f"--variable={v}" if not v.endswith("=") else f"--unset-variable={v[:-1]}" for v in variables]
    file = [f"--file={ci_file}"] if ci_file else []
    result = gcl(
        project, "--list-csv", "--no-json-schema-validation", *args, *file
    )  # the schema: its own test
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout[result.stdout.index("name;stage;when") :].splitlines()[1:]
    return {line.split(";")[0]: line.split(";")[2] for line in lines if line.strip()}


# The variables of each kind of pipeline, as GitLab sets them (a merge request pipeline has no CI_COMMIT_BRANCH;
# CI_OPEN_MERGE_REQUESTS names the open merge requests of the pushed branch, in either kind).
OPEN_MR = "CI_OPEN_MERGE_REQUESTS=belka/belka-dvc!3"
MERGE_REQUEST = (
    "CI_PIPELINE_SOURCE=merge_request_event",
    "CI_MERGE_REQUEST_IID=3",
    "CI_COMMIT_BRANCH=",
    OPEN_MR,
)


def pipeline_created(project: Path, *variables: str) -> bool:
    """Whether GitLab creates a pipeline at all: the workflow's rules, evaluated by gitlab-ci-local's rules engine
    as the rules of a probe job (4.72 evaluates workflow:rules for their variables only, never to skip a pipeline)."""
    rules = yaml.safe_load((project / ".gitlab-ci.yml").read_text())["workflow"]["rules"]
    (project / "workflow-probe.yml").write_text(
        yaml.safe_dump({"probe": {"script": ["true"], "rules": rules}})
    )
    return "probe" in listed_jobs(project, *variables, ci_file="workflow-probe.yml")


CLEAN = 'def greet(name: str) -> str:\n    return f"hello {name}"\n'


@needs_gcl
def test_gitlab_ci_local_rules(tmp_path):
    project = gcl_project(tmp_path / "p", {"clean.py": CLEAN})
    push = listed_jobs(project)
    assert {"check_code: [check]", "check_code: [format --diff]", "test", "reproduce"} <= push.keys()
    assert push["reproduce"] == "on_success"  # on the default branch
    assert listed_jobs(project, "CI_COMMIT_BRANCH=feature")["reproduce"] == "manual"
    mr = listed_jobs(
        project, *MERGE_REQUEST
    )  # nothing the pipeline reads changed: reproduce waits for a person
    assert {"check_code: [check]", "test", "report"} <= mr.keys() and mr["reproduce"] == "manual"
    assert listed_jobs(project, "CI_PIPELINE_SOURCE=schedule", "PIPELINE_MODE=score").keys() == {"score"}
    assert listed_jobs(project, "CI_PIPELINE_SOURCE=schedule", "PIPELINE_MODE=upgrade").keys() == {
        "upgrade_check"
    }


@needs_gcl
def test_one_pipeline_per_merge_request_push(tmp_path):
    """A push to a branch with an open merge request starts the merge request pipeline only, and that pipeline runs
    every check a branch pipeline would (lint and tests), once."""
    project = gcl_project(tmp_path / "p", {"clean.py": CLEAN})
    branch = ("CI_PIPELINE_SOURCE=push", "CI_COMMIT_BRANCH=feature")

    assert pipeline_created(project, *branch)  # no merge request yet: the branch pipeline
    assert not pipeline_created(project, *branch, OPEN_MR)  # the merge request's pipeline covers this push
    assert pipeline_created(project, *MERGE_REQUEST)
    assert pipeline_created(project, "CI_PIPELINE_SOURCE=push", "CI_COMMIT_BRANCH=main")
    assert pipeline_created(project, "CI_PIPELINE_SOURCE=schedule", "CI_COMMIT_BRANCH=main")

    checks = {name for name, when in listed_jobs(project, *branch).items() if when == "on_success"}
    assert {"check_code: [check]", "check_code: [format --diff]", "test"} <= checks
    merge_request = listed_jobs(project, *MERGE_REQUEST)
    assert {name for name in checks if merge_request.get(name) == "on_success"} == checks, merge_request


def commit_files(project: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(text)
    for args in (["add", "-A"], ["commit", "-q", "-m", "change"]):
        subprocess.run(["git", *args], cwd=project, env=gcl_env(), check=True, capture_output=True)


# A merge request changing one file: does `reproduce` run (on_success), wait for a person (manual), or give way to
# upgrade_check (None)?
REPRODUCE_WHEN_CHANGED = {
    "data/belka/train.parquet.dvc": "on_success",  # the README's real-data layout, two levels under data/
    "data/test.parquet.dvc": "on_success",
    "raw/kaggle/test.parquet.dvc": "on_success",  # a .dvc file (or an import) anywhere
    "data/belka/extra.csv": "on_success",  # data committed to git
    "stages/chem.py": "on_success",
    "params.yaml": "on_success",
    "dvc.yaml": "on_success",
    "dvc.lock": "on_success",
    "README.md": "manual",  # nothing the pipeline reads
    "uv.lock": None,  # upgrade_check instead
}


@needs_gcl
def test_merge_request_reproduces_when_pipeline_inputs_change(tmp_path):
    """`reproduce` runs on a merge request that changes what the pipeline reads, .dvc files at any depth included
    (GitLab matches rules:changes like fnmatch with FNM_PATHNAME, where `*` never crosses `/`)."""
    project = gcl_project(
        tmp_path / "p", {"README.md": "x\n", "params.yaml": "{}\n", "dvc.yaml": "stages: {}\n"}
    )
    for changed, expected in REPRODUCE_WHEN_CHANGED.items():
        commit_files(project, {changed: "changed\n"})  # on top of origin/main, the merge request's target
        jobs = listed_jobs(project, *MERGE_REQUEST)
        assert jobs.get("reproduce") == expected, (changed, jobs)
        assert ("upgrade_check" in jobs) == (changed == "uv.lock"), (changed, jobs)
        subprocess.run(["git", "reset", "-q", "--hard", "origin/main"], cwd=project, check=True)


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
@pytest.mark.slow
def test_gitlab_ci_local_runs_the_test_job(tmp_path):
    """The `test` job installs the project with its dev extra and runs the README's test command; a failing test
    fails the job. (A stand-in project: the real suite under the job would run this test again.)"""
    job_bin = layered_venv(tmp_path / "job-venv")
    files = {"stages/__init__.py": "", "tests/test_ok.py": PASSING_TEST}

    passing = gcl_project(tmp_path / "passing", files)
    result = gcl(passing, "--force-shell-executor", "test", job_bin=job_bin)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log
    assert "$ uv sync --frozen --extra dev" in log and "$ uv run --frozen python -m pytest" in log, log
    assert re.search(r"test > =+ 1 passed", log), log
    assert "test finished" in log and "FAIL" not in log, log

    failing = gcl_project(
        tmp_path / "failing", files | {"tests/test_bad.py": "def test_bad():\n    assert False\n"}
    )
    result = gcl(failing, "--force-shell-executor", "test", job_bin=job_bin)
    log = result.stdout + result.stderr
    assert result.returncode != 0, log
    assert "FAIL  test" in log and "1 failed, 1 passed" in log, log


@pytest.mark.parametrize("protected", ["true", "false"])
def test_push_takes_only_the_keys_of_its_trust_level(tmp_path, protected):
    """`ci/dvc_remote.sh push` never falls back to the environment's AWS keys: without its trust level's keys it
    pushes nothing and says which are missing (the pushes themselves: tests/e2e/test_trust.py)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DVC_")}
    env |= {
        "CI_COMMIT_REF_PROTECTED": protected,
        "AWS_ACCESS_KEY_ID": "ambient",
        "AWS_SECRET_ACCESS_KEY": "x",
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the venv's dvc
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    result = subprocess.run(["sh", str(ROOT / "ci" / "dvc_remote.sh"), "push"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    role = "WRITE" if protected == "true" else "MR"
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"DVC_{role}_ACCESS_KEY_ID / DVC_{role}_SECRET_ACCESS_KEY not set" in result.stderr, result.stderr
    assert "pushing" not in result.stdout


@needs_gcl
def test_the_sweep_runs_on_merge_requests_only_by_hand_or_by_variable(tmp_path):
    project = gcl_project(tmp_path / "p", {"clean.py": CLEAN})
    assert listed_jobs(project, *MERGE_REQUEST)["sweep"] == "manual"
    assert listed_jobs(project, *MERGE_REQUEST, "SWEEP=true")["sweep"] == "on_success"
    assert "sweep" not in listed_jobs(project)  # the default branch
    assert "sweep" not in listed_jobs(project, "CI_COMMIT_BRANCH=feature", "SWEEP=true")
    assert "sweep" not in listed_jobs(project, "CI_PIPELINE_SOURCE=schedule", "PIPELINE_MODE=score")
