# Image for the CI jobs that run the pipeline (reproduce, report, score, upgrade_check): built and pushed to
# $CI_REGISTRY_IMAGE/runner by the build_image job whenever this file or pyproject.toml changes.
# Only pyproject.toml goes in, so code changes never rebuild it; jobs `pip install -e .` the checked-out code on top.
FROM python:3.11-slim

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    DVC_NO_ANALYTICS=1

# git for dvc and the jobs; libgomp1 for XGBoost's OpenMP
RUN apt-get update \
    && apt-get install -y --no-install-recommends git libgomp1 ca-certificates \
    && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml /tmp/belka/pyproject.toml
RUN python -c "import tomllib; p = tomllib.load(open('/tmp/belka/pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p.get('optional-dependencies', {}).get('dev', [])))" \
    > /tmp/belka/requirements.txt
RUN python -m pip install --upgrade pip \
    && python -m pip install -r /tmp/belka/requirements.txt \
    && dvc --version

WORKDIR /builds
