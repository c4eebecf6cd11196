"""Userspace TSO of a netdev (userspace) datapath: turned on, and known.

With ``other_config:userspace-tso-enable=true`` ovs-vswitchd reads and writes
virtio-net headers on its veth sockets, so a container's TCP leaves in 64 KiB
segments with their checksums still to do, and TCP crosses the switch at
kernel-bridge speeds (9.6 Gbit/s here, against 0.85 Gbit/s without). vswitchd
reads the setting only when it starts, so turning it on means one restart of
ovs-vswitchd (``ovs_restart.py`` then puts flows and meters back within a
second or two). Without it in effect, the veths' tx checksum offload must be
off or TCP fails (links.py asks ``in_effect``).

The setting is taken to be in effect when OVSDB says so: netplugin and
scripts/services.sh restart ovs-vswitchd whenever they change it. Whoever
changes it by hand must restart ovs-vswitchd too, and containers started
while it was on need it on (their veths keep their offloads).

The ``system`` (kernel) datapath ignores the setting: its veths keep every
offload and the kernel segments and checksums (GSO/GRO) itself.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import threading
from collections.abc import Callable

from ..errors import DataplaneUnavailable, InvalidRequest

log = logging.getLogger(__name__)

KEY = "userspace-tso-enable"
OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"
SYSTEMD_RUNDIR = "/run/systemd/system"
_OVSDB_RE = re.compile(r"^(unix:/[^\s]+|(tcp|ssl):[0-9A-Za-z.:\[\]-]+)$")

Runner = Callable[[list[str], float], subprocess.CompletedProcess]


def _run(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DataplaneUnavailable(f"{args[0]} did not answer ({exc}); check Open vSwitch") from None


def restart_command() -> list[str]:
    """ovs-vswitchd alone, through whoever runs it: systemd, else ovs-ctl
    (which saves and restores the flows around the restart)."""
    if os.path.isdir(SYSTEMD_RUNDIR):
        return ["systemctl", "restart", "ovs-vswitchd.service"]
    return [OVS_CTL, "--no-ovsdb-server", "restart"]


class UserspaceTso:
    """``ensure`` turns userspace TSO on (once per process; restarts ovs-vswitchd
    only when the setting changed); ``in_effect`` says whether veths may keep
    their offloads. Both are no-ops on the ``system`` datapath."""

    def __init__(self, ovsdb: str, datapath_type: str, wanted: bool, timeout: float = 5.0,
                 run: Runner = _run, restart: list[str] | None = None):
        if not _OVSDB_RE.fullmatch(ovsdb or ""):
            raise InvalidRequest(f"ovsdb {ovsdb!r} is not unix:/PATH, tcp:HOST:PORT or ssl:HOST:PORT")
        self.ovsdb = ovsdb
        self.netdev = datapath_type == "netdev"
        self.wanted = wanted
        self.timeout = timeout
        self._runner = run
        self._restart = restart
        self._known: bool | None = None
        self._unproven = False           # set, but the restart that applies it failed
        self._lock = threading.Lock()

    def _vsctl(self, *args: str) -> subprocess.CompletedProcess:
        return self._runner(["ovs-vsctl", f"--db={self.ovsdb}", f"--timeout={max(1, int(self.timeout))}", *args],
                            self.timeout + 5)

    def configured(self) -> bool:
        """What OVSDB says now (an absent key is off)."""
        proc = self._vsctl("--if-exists", "get", "Open_vSwitch", ".", f"other_config:{KEY}")
        if proc.returncode != 0:
            raise DataplaneUnavailable(f"cannot read other_config:{KEY} from OVSDB at {self.ovsdb}: "
                                       f"{proc.stderr.strip()[-300:]}; check that ovsdb-server is running")
        return proc.stdout.strip().strip('"') == "true"

    def in_effect(self) -> bool:
        """True when veths may keep their tx offloads. Read once and remembered;
        False (offloads off, slower but always correct) when OVSDB cannot say
        or a restart that should have applied it failed."""
        if not self.netdev:
            return False
        with self._lock:
            if self._unproven:
                return False
            if self._known is None:
                try:
                    self._known = self.configured()
                except DataplaneUnavailable as exc:
                    log.warning("%s: veth tx checksum offload goes off", exc.message)
                    return False
            return self._known

    def ensure(self) -> bool:
        """Turn it on when wanted on a netdev datapath; returns ``in_effect()``.
        A failed set or restart is logged and leaves the offloads off."""
        if not (self.netdev and self.wanted):
            return self.in_effect()
        with self._lock:
            if self._known:
                return True
            if not self._unproven and self.configured():
                self._known = True
                return True
            log.warning("turning on userspace TSO (other_config:%s=true) and restarting ovs-vswitchd once: "
                        "TCP through the userspace datapath is about 10x faster with it", KEY)
            proc = self._vsctl("set", "Open_vSwitch", ".", f"other_config:{KEY}=true")
            if proc.returncode != 0:
                log.error("cannot set other_config:%s=true (%s): veth tx checksum offload stays off",
                          KEY, proc.stderr.strip()[-300:])
                self._known = False
                return False
            args = self._restart or restart_command()
            proc = self._runner(args, 120)
            if proc.returncode != 0:
                # Set, but not in effect: offloads stay off until a restart succeeds.
                self._unproven, self._known = True, False
                log.error("'%s' failed (%s): userspace TSO is set in OVSDB but not in effect, so veth tx "
                          "checksum offload stays off; restart ovs-vswitchd, or set userspace_tso = false",
                          " ".join(args), (proc.stderr or proc.stdout).strip()[-300:])
                return False
            self._unproven, self._known = False, True
            return True
