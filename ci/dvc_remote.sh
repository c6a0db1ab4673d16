#!/bin/sh
# The DVC remotes by trust level (docs/ci.md, "Two trust levels"). Each command gets the keys it needs, in its own
# environment only: no key is written to a file (a runner volume or the clone's .dvc/config.local), so no other
# job can read one there.
#
#   ci/dvc_remote.sh read COMMAND...   COMMAND (e.g. `dvc repro --pull`) with the read-only keys of the trusted
#                                      remote `storage` (DVC_READ_*): outputs and run cache restored from there
#   ci/dvc_remote.sh push              outputs and run cache pushed where this job may write:
#                                      a protected ref (CI_COMMIT_REF_PROTECTED=true): the trusted remote
#                                      `storage`, with the protected keys DVC_WRITE_*;
#                                      anything else: the merge-request remote `mr` (DVC_MR_REMOTE_URL), with
#                                      DVC_MR_*, a remote that no protected job reads
#   ci/dvc_remote.sh exp-push GIT_REMOTE EXPERIMENT...
#                                      `dvc exp push`: the experiments' git refs to GIT_REMOTE (a name or URL),
#                                      their outputs to the same DVC remote, with the same keys, as `push`
#
# GitLab gives DVC_WRITE_* (protected variables) to protected refs only, and the merge-request keys cannot write
# the trusted bucket (docs/ci.md, "Bucket policies"): the choice below routes, the keys enforce.
set -eu

use_keys() {  # ID_VARIABLE SECRET_VARIABLE: the only AWS keys botocore sees from here; 1 (nothing changed) when unset
  eval "id=\${$1:-}; secret=\${$2:-}"
  [ -n "$id" ] && [ -n "$secret" ] || return 1
  unset AWS_SESSION_TOKEN AWS_PROFILE
  export AWS_ACCESS_KEY_ID="$id" AWS_SECRET_ACCESS_KEY="$secret"
}

case "${1:-}" in
  read)
    shift
    [ "$#" -gt 0 ] || { echo "usage: ci/dvc_remote.sh read COMMAND..." >&2; exit 2; }
    if ! use_keys DVC_READ_ACCESS_KEY_ID DVC_READ_SECRET_ACCESS_KEY; then
      echo "WARNING: DVC_READ_ACCESS_KEY_ID / DVC_READ_SECRET_ACCESS_KEY not set: the trusted remote is read" \
        "with whatever credentials the environment has (docs/ci.md, \"Variables\")" >&2
    fi
    exec "$@"
    ;;
  push | exp-push)
    command=$1
    shift
    if [ "$command" = exp-push ] && [ "$#" -lt 2 ]; then
      echo "usage: ci/dvc_remote.sh exp-push GIT_REMOTE EXPERIMENT..." >&2
      exit 2
    fi
    if [ "${CI_COMMIT_REF_PROTECTED:-false}" = "true" ]; then
      remote=storage ids=DVC_WRITE_ACCESS_KEY_ID secrets=DVC_WRITE_SECRET_ACCESS_KEY
    else
      remote=mr ids=DVC_MR_ACCESS_KEY_ID secrets=DVC_MR_SECRET_ACCESS_KEY
    fi
    unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY  # never the environment's: only the keys of this trust level
    if ! use_keys "$ids" "$secrets"; then
      echo "error: $ids / $secrets not set: nothing pushed to the DVC remote '$remote' (docs/ci.md, \"Variables\")" >&2
      exit 1
    fi
    if [ "$remote" = mr ]; then
      dvc remote add --local --force mr "${DVC_MR_REMOTE_URL:?the merge-request remote (docs/ci.md)}"
    fi
    url=$(dvc remote list | awk -v r="$remote" '$1 == r {print $2}')
    if [ "$command" = push ]; then
      echo "pushing outputs and run cache to the DVC remote '$remote' ($url)"
      exec dvc push --run-cache --remote "$remote"
    fi
    git_remote=$1
    shift
    echo "pushing experiments $* to the DVC remote '$remote' ($url) and their git refs to the git remote"
    exec dvc exp push --remote "$remote" "$git_remote" "$@"
    ;;
  *)
    echo "usage: ci/dvc_remote.sh read COMMAND... | ci/dvc_remote.sh push | ci/dvc_remote.sh exp-push GIT_REMOTE EXPERIMENT..." >&2
    exit 2
    ;;
esac
