"""The multi-host rig of scripts/rig.sh (two dockerds, two daemons, two
bridges and a VLAN trunk on this machine): who holds it, and its settings."""

from __future__ import annotations

import fcntl
import time
from collections.abc import Callable
from typing import IO

from . import REPO
from .proc import run

RIG = REPO / "scripts" / "rig.sh"
LOCK = "/run/lock/netplugin-rig.lock"


def lock(timeout: float, waiting: Callable[[], None] = lambda: None) -> IO:
    """Hold the rig (one per machine) until the returned file is closed;
    waiting() is called once if another holder makes us wait. TimeoutError
    after timeout seconds."""
    fh = open(LOCK, "w")  # noqa: SIM115 - held open while the rig is ours
    deadline = time.monotonic() + timeout
    said = False
    while True:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fh
        except BlockingIOError:
            if not said:
                waiting()
                said = True
            if time.monotonic() > deadline:
                fh.close()
                raise TimeoutError(f"another session holds the rig ({LOCK}) for more than {timeout:.0f} s") from None
            time.sleep(1)


def rig_env() -> dict[str, str]:
    """RIG_* settings of the running rig (`rig.sh env`)."""
    out = run(["bash", str(RIG), "env"]).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
