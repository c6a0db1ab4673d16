# Image for the CI jobs that run the pipeline (reproduce, report, score, upgrade_check): built and pushed to
# $CI_REGISTRY_IMAGE/runner by the build_image job whenever this file, uv.lock or pyproject.toml changes.
# Only the dependency files go in (pyproject.toml and uv.lock), so code changes never rebuild it: uv.lock's
# packages, dev extra included, are installed exactly as locked into /opt/venv, which is on PATH. Jobs run
# `uv sync --frozen --extra dev` on top: it adds the checked-out project and whatever uv.lock changed since.
FROM python:3.11-slim

ARG UV_VERSION=0.13.9
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DVC_NO_ANALYTICS=1 \
    UV_PROJECT_ENVIRONMENT=/opt/venv \
    UV_PYTHON_DOWNLOADS=never \
    UV_LINK_MODE=copy \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# git for dvc and the jobs; libgomp1 for XGBoost's OpenMP
RUN apt-get update \
    && apt-get install -y --no-install-recommends git libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

RUN python -m pip install "uv==${UV_VERSION}"

COPY pyproject.toml uv.lock /tmp/belka/
RUN cd /tmp/belka \
    && uv sync --frozen --no-install-project --extra dev --no-cache --python python3 \
    && dvc --version

WORKDIR /builds
