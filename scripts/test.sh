#!/usr/bin/env bash
# Runs every test ring on this machine, from nothing: installs what is
# missing, starts Open vSwitch, etcd, containerd and dockerd, builds the local
# image, clears what earlier runs left, then runs the unit, integration,
# end-to-end, multi-host and fault tests in one pytest session (one summary line).
# Usage: sudo bash scripts/test.sh [extra pytest arguments]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
cd "$REPO"

bash scripts/install-deps.sh
bash scripts/services.sh start
bash scripts/make-images.sh
bash scripts/make-db-images.sh
bash scripts/reset-state.sh

log "lint (ruff) and types (mypy) of netplugin/"
"$REPO/.venv/bin/ruff" check netplugin
"$REPO/.venv/bin/mypy" netplugin

log "running unit, integration, end-to-end, multi-host and fault tests"
# The multi-host ring (scripts/rig.sh) runs after e2e; the fault suite last of
# all, since it restarts Open vSwitch, etcd members and dockerd on purpose.
set -- tests/multihost tests/fault "$@"
exec "$REPO/.venv/bin/python" -m pytest -p no:cacheprovider tests/unit tests/integration tests/e2e "$@"
