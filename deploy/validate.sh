#!/usr/bin/env bash
# Validate every manifest under deploy/kubernetes/ against the Kubernetes
# API schemas, offline (used by .ci/run):
#
#   deploy/validate.sh
#
# kubernetes-validate (deploy/requirements.txt) ships the schemas of every
# Kubernetes version up to its own; it runs --strict, so a misspelt or
# misplaced field is an error, not ignored. The manifests are checked against
# KUBERNETES_VERSIONS: the oldest version they need (1.29: native sidecars,
# init containers with restartPolicy: Always) and the newest the pinned
# package knows.
#
# The venv lives at ${DEPLOY_VALIDATE_VENV:-<repo>/target/deploy-venv}; it is
# created, or rebuilt, whenever it is missing or was built from a different
# requirements.txt; otherwise reused as is (PyPI is needed only then).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${DEPLOY_VALIDATE_VENV:-$repo/target/deploy-venv}"
requirements="$here/requirements.txt"
stamp="$venv/deploy-requirements.txt"
KUBERNETES_VERSIONS=(1.29.0 1.37.0)

# shellcheck source=../scripts/venv.sh
source "$repo/scripts/venv.sh"
ensure_venv deploy "$venv" "$requirements" "$stamp" kubernetes-validate DEPLOY_VALIDATE_VENV

shopt -s nullglob
files=("$here"/kubernetes/*)
if [ ${#files[@]} = 0 ]; then
    echo "deploy: no manifest under deploy/kubernetes/" >&2
    exit 1
fi
failed=0
for file in "${files[@]}"; do
    name="${file#"$repo"/}"
    case "$file" in
        *.yaml) ;;
        *) echo "deploy: $name: only .yaml manifests belong in deploy/kubernetes/" >&2; failed=1; continue ;;
    esac
    for version in "${KUBERNETES_VERSIONS[@]}"; do
        # kubernetes-validate exits 0 when it has no schema for a kind (a
        # misspelt apiVersion or kind), printing WARN: every resource must
        # print INFO ... passed, and nothing else.
        out="$("$venv/bin/kubernetes-validate" --strict -k "$version" "$file" 2>&1)" || true
        printf '%s\n' "$out" | sed "s#$repo/##g"
        if [ -z "$out" ] || printf '%s\n' "$out" | grep -qv '^INFO .* passed for resource '; then
            echo "deploy: $name does not validate against Kubernetes $version" >&2
            failed=1
        fi
    done
done
exit "$failed"
