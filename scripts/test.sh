#!/usr/bin/env bash
# Runs every test ring on this machine, from nothing: installs what is
# missing, starts Open vSwitch, etcd, containerd and dockerd, builds the local
# image, clears what earlier runs left, then runs unit, integration and
# end-to-end tests in one pytest session (one summary line).
# Usage: sudo bash scripts/test.sh [extra pytest arguments]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
need_root
cd "$REPO"

bash scripts/install-deps.sh
bash scripts/services.sh start
bash scripts/make-images.sh
bash scripts/make-db-images.sh
bash scripts/reset-state.sh

log "running unit, integration and end-to-end tests"
set -- tests/multihost "$@" # the multi-host ring (scripts/rig.sh) runs last, after e2e
exec "$REPO/.venv/bin/python" -m pytest -p no:cacheprovider tests/unit tests/integration tests/e2e "$@"
