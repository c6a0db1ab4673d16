#!/bin/sh
# Point this clone's DVC cache at the runner's persistent volume ($RUNNER_VOLUME), outside the clone, so GitLab's
# `git clean -ffdx` before the next job cannot delete it (docs/ci.md, "The runner's volume"). The feature cache
# goes there too, through BELKA_FEATURE_CACHE (a job variable: a script cannot export into the job's shell).
#
#   $RUNNER_VOLUME/dvc-cache   DVC's cache: outputs pulled or computed by earlier jobs, never downloaded twice
#   $RUNNER_VOLUME/features    the feature cache: molecules featurized by earlier jobs, never computed twice
#
# The settings go to .dvc/config.local (git-ignored, so cleaned with the clone and set again by every job):
# a shared cache (group-writable, for runners whose jobs run as different users) whose files are linked into the
# clone where the filesystem allows (reflink, then hard link, then symlink) and copied where it does not.
#
# Each runner has its own volume (docs/ci.md, "Two trust levels"): the protected runner the trusted one, the
# merge-request runner its own. Where the merge-request runner's config.toml also mounts the trusted feature cache
# read-only and names it in BELKA_TRUSTED_FEATURES, a merge-request job starts warm: the parts it lacks are copied
# from there into its own volume (parts are immutable and named by their digests, so a file already there is kept).
# It reads the trusted layer and writes only its own volume; a protected job never reads BELKA_TRUSTED_FEATURES.
set -eu

volume="${RUNNER_VOLUME:-}"
features="${BELKA_FEATURE_CACHE:-}"
case "$volume" in
  /*) ;;
  "") echo "error: RUNNER_VOLUME is not set: the directory of the runner's persistent volume (docs/ci.md)" >&2; exit 1 ;;
  *) echo "error: RUNNER_VOLUME must be an absolute path outside the clone, got '$volume'" >&2; exit 1 ;;
esac

mkdir -p "$volume/dvc-cache"
dvc cache dir --local "$volume/dvc-cache"
dvc config --local cache.shared group
dvc config --local cache.type "reflink,hardlink,symlink,copy"

# A docker-executor job sees the host's directory only where config.toml mounts it; anywhere else the directory is
# the container's own and goes with it.
if [ -f /.dockerenv ] && ! grep -qs " $volume " /proc/self/mountinfo; then
  echo "WARNING: $volume is not a mounted volume: what this job computes is lost with its container" \
    "(mount a host directory there: docs/ci.md, \"The runner's volume\")"
fi
trusted="${BELKA_TRUSTED_FEATURES:-}"
if [ -n "$trusted" ] && [ "${CI_COMMIT_REF_PROTECTED:-false}" != "true" ] && [ -n "$features" ] && [ -d "$trusted" ]; then
  copied=0
  # not the writers' temporaries (dot names); each part's parquet before the .keys sidecar that makes it visible
  for part in $(cd "$trusted" && find . -type f ! -name '.*' ! -name '*.keys') \
              $(cd "$trusted" && find . -type f ! -name '.*' -name '*.keys'); do
    [ -e "$features/$part" ] && continue
    mkdir -p "$(dirname "$features/$part")"
    temporary="$(dirname "$features/$part")/.copy-$$-$(basename "$part")"
    cp "$trusted/$part" "$temporary" && mv "$temporary" "$features/$part"
    copied=$((copied + 1))
  done
  echo "feature cache: $copied part(s) copied from the trusted layer $trusted (read-only)"
fi
echo "DVC cache: $volume/dvc-cache; feature cache: ${features:-not on the volume (BELKA_FEATURE_CACHE unset)}"
