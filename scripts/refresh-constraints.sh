#!/usr/bin/env bash
# Regenerate requirements/constraints.txt: the exact version of every package
# (dependencies of dependencies included) that a fresh install of netplugin
# with its test extras resolves to today. Installs go through this file
# (scripts/install-deps.sh, scripts/install.sh, packaging/managed/build.sh),
# so every host and every CI run gets these versions until it is refreshed.
#
#   bash scripts/refresh-constraints.sh [python]      (default python3)
#
# Then run the whole suite (bash .ci/run) and commit the file with what changed.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
PY=${1:-python3}
OUT=$REPO/requirements/constraints.txt
TMP=$(mktemp -d /tmp/netplugin-constraints.XXXXXX)
trap 'rm -rf -- "$TMP"' EXIT

"$PY" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
# Without the old constraints, from the bounds in setup.cfg alone.
"$TMP/venv/bin/python" -m pip install -q --disable-pip-version-check "$REPO[test]"
{
    echo "# Every package a fresh install of netplugin[test] resolved to, $(date -u +%Y-%m-%d)"
    echo "# with $("$TMP/venv/bin/python" --version 2>&1) on $(. /etc/os-release && echo "$PRETTY_NAME")."
    echo "# Used as pip's -c by install-deps.sh, install.sh and the managed build."
    echo "# Regenerate: bash scripts/refresh-constraints.sh (then run the suite)."
    "$TMP/venv/bin/python" -m pip freeze --disable-pip-version-check --exclude-editable --all \
        | grep -v -i -E '^(netplugin|pip|setuptools|wheel) ?(==|@)' | LC_ALL=C sort -f
} >"$OUT.new"
mv -f "$OUT.new" "$OUT"
echo "wrote $OUT ($(grep -c '==' "$OUT") packages)"
