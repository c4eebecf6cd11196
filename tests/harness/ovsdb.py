"""A private ovsdb-server: a database of its own (no ovs-vswitchd attached),
for work that must not load or touch the machine's switch."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from .proc import Failed, run, stop_group

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


class PrivateOvsdb:
    """ovsdb-server on folder/db.sock with a fresh folder/conf.db; `remote` is
    what Switch and `ovs-vsctl --db=` take."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.sock = folder / "db.sock"
        self.proc: subprocess.Popen | None = None

    @property
    def remote(self) -> str:
        return f"unix:{self.sock}"

    def start(self) -> None:
        db = self.folder / "conf.db"
        run(["ovsdb-tool", "create", str(db), SCHEMA], timeout=120)
        self.proc = subprocess.Popen(["ovsdb-server", str(db), f"--remote=punix:{self.sock}",
                                      f"--unixctl={self.folder / 'ovsdb-server.ctl'}", "--no-chdir",
                                      "-vconsole:off", f"--log-file={self.folder / 'ovsdb-server.log'}"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while not self.sock.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise Failed(f"private ovsdb-server did not start (see {self.folder}/ovsdb-server.log)")
            time.sleep(0.02)
        run(["ovs-vsctl", f"--db={self.remote}", "--no-wait", "init"], timeout=120)

    def stop(self) -> None:
        stop_group(self.proc)
