#!/usr/bin/env bash
# Regenerate the operation catalog (catalog/polytomic-<api_version>.json) from
# the Polytomic Python SDK pinned in catalog/requirements.txt.
#
#   catalog/generate.sh           regenerate the committed file
#   catalog/generate.sh --check   fail if the committed file is not what the
#                                 pinned SDK generates (used by .ci/run)
#   catalog/generate.sh --venv    only make sure the venv exists, and print its
#                                 python (for tests/sdk.rs)
#
# The SDK and its dependencies live in a venv at
# ${POLYTOMIC_SDK_VENV:-<repo>/target/sdk-venv} (also used by the end-to-end
# test that drives the SDK). It is created, or rebuilt, whenever it is missing
# or was built from a different requirements.txt; otherwise reused as is.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
venv="${POLYTOMIC_SDK_VENV:-$repo/target/sdk-venv}"
requirements="$here/requirements.txt"
# What the venv was built from; written last, so an interrupted install is redone.
stamp="$venv/polytomic-catalog-requirements.txt"

check=0
venv_only=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    --venv) venv_only=1 ;;
    *) echo "usage: catalog/generate.sh [--check | --venv]" >&2; exit 2 ;;
esac

# shellcheck source=../scripts/venv.sh
source "$repo/scripts/venv.sh"
ensure_venv catalog "$venv" "$requirements" "$stamp" python POLYTOMIC_SDK_VENV

if [ "$venv_only" = 1 ]; then
    echo "$venv/bin/python"
    exit 0
fi

if [ "$check" = 0 ]; then
    exec "$venv/bin/python" "$here/generate.py"
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$venv/bin/python" "$here/generate.py" --out "$tmp/catalog.json"
api_version="$("$venv/bin/python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["api_version"])' "$tmp/catalog.json")"
committed="catalog/polytomic-$api_version.json"
if [ ! -f "$repo/$committed" ]; then
    echo "$committed is missing: run catalog/generate.sh and commit the result" >&2
    exit 1
fi
if ! diff -u "$repo/$committed" "$tmp/catalog.json"; then
    echo "$committed is stale: run catalog/generate.sh and commit the result" >&2
    exit 1
fi
echo "catalog: $committed is up to date" >&2
