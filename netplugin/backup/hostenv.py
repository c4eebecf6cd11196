"""What the runner reads from the host itself: the disk behind a volume, the
limits in a container's cgroup files, the host's swap, and the bandwidth
limit the switch enforces on a port. Replaced by a fake in unit tests."""

from __future__ import annotations

import subprocess

from ..dataplane.flows import Flows
from ..errors import NetpluginError
from . import resources as lim


def _vsctl(*args: str) -> str:
    """ovs-vsctl's answer; empty when it fails."""
    proc = subprocess.run(["ovs-vsctl", "--timeout=5", *args], capture_output=True, text=True, timeout=10,
                          check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


class HostEnv:
    def device(self, path: str) -> lim.BlockDevice:
        return lim.backing_device(path)

    def applied(self, pid: int, device: lim.BlockDevice | None) -> dict:
        return lim.read_applied(lim.cgroup_dirs(pid), device)

    def swap(self) -> int:
        return lim.host_swap_bytes()

    def meter(self, bridge: str, port: str) -> tuple[int, int] | None:
        """(rate kbit/s, burst kbit) enforced on a port: its OpenFlow meter
        (read by dataplane's Flows), else its ingress policing; None when
        there is none."""
        ofport = _vsctl("get", "Interface", port, "ofport")
        if ofport.isdigit():
            try:
                meter = Flows(bridge).meters().get(int(ofport))
            except (NetpluginError, ValueError):     # a bridge we cannot read has no meter we can see
                meter = None
            if meter and meter["rate_kbps"] is not None:
                return meter["rate_kbps"], meter["burst_kb"] or 0
        rate = _vsctl("get", "Interface", port, "ingress_policing_rate")
        burst = _vsctl("get", "Interface", port, "ingress_policing_burst")
        if rate.isdigit() and int(rate) > 0:
            return int(rate), int(burst) if burst.isdigit() else 0
        return None
