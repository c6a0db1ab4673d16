#!/usr/bin/env bash
# The README's test command: set up and run every test this machine can run. Installs what is missing (uv from pip;
# for tests/test_gitlab_ci.py's jobs, gitlab-ci-local from npm and rsync from apt), the locked environment
# (uv.lock) into .venv, then every tier on every core. Arguments go to pytest: `ci/test.sh -m "not slow"` is the
# fast tier. Needs only python3 (uv never downloads a Python). A tool that cannot be installed here is named below,
# and pytest's summary (-ra, pyproject.toml) lists each test it skips with the reason. .ci/run runs this script.
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.9  # the same as UV_VERSION in .gitlab-ci.yml and the Dockerfile
GITLAB_CI_LOCAL_VERSION=4.72.0  # the newest that runs on Node 20
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

as_root() {  # root, or passwordless sudo; fails otherwise
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi
}

# gitlab-ci-local runs the CI jobs locally with the shell executor. npm installs it globally, or, where that needs
# a root this user lacks, under the user's cache directory, put on PATH for the tests.
if ! command -v gitlab-ci-local >/dev/null 2>&1; then
  tools="${XDG_CACHE_HOME:-$HOME/.cache}/belka-dvc-tools"
  if [ -x "$tools/bin/gitlab-ci-local" ]; then
    PATH="$tools/bin:$PATH"
  elif command -v npm >/dev/null 2>&1; then
    npm install -g --silent "gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION" >/dev/null 2>&1 \
      || { npm install -g --silent --prefix "$tools" "gitlab-ci-local@$GITLAB_CI_LOCAL_VERSION" >/dev/null 2>&1 \
           && PATH="$tools/bin:$PATH"; } \
      || echo "ci/test.sh: npm could not install gitlab-ci-local; the tests that run CI jobs will skip" >&2
  else
    echo "ci/test.sh: no npm (Node.js 20) to install gitlab-ci-local; the tests that run CI jobs will skip" >&2
  fi
fi
if ! command -v rsync >/dev/null 2>&1; then  # gitlab-ci-local's shell executor copies the project with it
  { as_root apt-get update -qq && as_root apt-get install -y -qq rsync; } >/dev/null 2>&1 \
    || echo "ci/test.sh: rsync not installed (no apt-get as root); the tests that run CI jobs will skip" >&2
fi

if ! command -v uv >/dev/null 2>&1; then
  python3 -m pip install -q --disable-pip-version-check "uv==$UV_VERSION"
  # pip's script folders (system or --user), so that uv is on PATH here and for the tests' gitlab-ci-local jobs
  PATH="$(python3 -c 'import os, sysconfig; print(os.pathsep.join([sysconfig.get_path("scripts"),
    sysconfig.get_path("scripts", f"{os.name}_user")]))'):$PATH"
fi
export PATH
uv --version

uv sync --frozen --extra dev --python python3
uv run --frozen python -m pytest -n auto --dist worksteal "$@"
