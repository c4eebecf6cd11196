"""OpenFlow on the bridge: the base pipeline and per-port meters.

No OpenFlow library covers meters and bundles as well as ``ovs-ofctl`` does,
so this module calls it with argument lists (never a shell) and feeds flows
on stdin in one bundle. Every name that reaches the command line is checked
first, and numbers are formatted from ints.

Pipeline (OpenFlow 1.3):

* table 0  ``in_port=P`` → ``meter:M,goto_table:10`` for ports with a limit;
           everything else → ``goto_table:10``
* table 10 ARP answers for known endpoints (the ARP proxy); the rest → NORMAL

Traffic of ports without a limit takes no meter and one extra table lookup,
which the datapath caches. Flows of an endpoint carry a cookie derived from its
endpoint id, so they are removed together.
"""

from __future__ import annotations

import re
import subprocess

from ..errors import DataplaneError, DataplaneUnavailable, InvalidRequest

OFCTL = "ovs-ofctl"
TABLE_CLASSIFY = 0
TABLE_ARP = 10
PRIO_PORT = 100
_BRIDGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")


def cookie_for(endpoint_id: str) -> int:
    """A stable 63-bit cookie per endpoint (the top bit marks netplugin flows)."""
    return (1 << 63) | int(endpoint_id[:15], 16)


class Flows:
    def __init__(self, bridge: str, timeout: float = 5.0):
        if not _BRIDGE_RE.fullmatch(bridge or ""):
            raise InvalidRequest(f"bridge name {bridge!r} is invalid")
        self.bridge = bridge
        self.timeout = timeout

    def _ofctl(self, *args: str, stdin: str | None = None) -> str:
        cmd = [OFCTL, "-O", "OpenFlow13", f"--timeout={int(self.timeout)}", *args]
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=self.timeout + 2)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise DataplaneUnavailable(f"ovs-ofctl did not answer ({exc}); check ovs-vswitchd") from None
        if proc.returncode != 0:
            err = proc.stderr.strip()
            if "connection refused" in err.lower() or "no such file" in err.lower():
                raise DataplaneUnavailable(f"ovs-vswitchd is not reachable for bridge {self.bridge}: {err}")
            raise DataplaneError(f"ovs-ofctl {args[0]} on {self.bridge} failed: {err}")
        return proc.stdout

    def ensure_pipeline(self) -> None:
        """Install the table-miss flows (idempotent: add-flow replaces equal matches)."""
        self._ofctl("--bundle", "add-flows", self.bridge, "-", stdin="\n".join([
            f"table={TABLE_CLASSIFY},priority=0,actions=goto_table:{TABLE_ARP}",
            f"table={TABLE_ARP},priority=0,actions=NORMAL",
        ]) + "\n")

    # -- meters -------------------------------------------------------------------------
    def set_port_meter(self, endpoint_id: str, ofport: int, rate_kbps: int, burst_kb: int) -> int:
        """Limit what enters the switch from ofport; the meter id is the ofport number."""
        meter, rate, burst = int(ofport), int(rate_kbps), int(burst_kb)
        if meter <= 0 or rate <= 0 or burst <= 0:
            raise InvalidRequest(f"meter {meter} needs a positive port, rate and burst")
        spec = f"meter={meter},kbps,burst,band=type=drop,rate={rate},burst_size={burst}"
        existing = self.meter_ids()
        self._ofctl("mod-meter" if meter in existing else "add-meter", self.bridge, spec)
        cookie = cookie_for(endpoint_id)
        self._ofctl("--bundle", "add-flows", self.bridge, "-", stdin=(
            f"table={TABLE_CLASSIFY},priority={PRIO_PORT},cookie={cookie:#x},in_port={meter},"
            f"actions=meter:{meter},goto_table:{TABLE_ARP}\n"))
        return meter

    def clear_port_meter(self, endpoint_id: str, ofport: int | None) -> None:
        """Remove the endpoint's table-0 flow and its meter; fine when absent."""
        self._ofctl("del-flows", self.bridge, f"table={TABLE_CLASSIFY},cookie={cookie_for(endpoint_id):#x}/-1")
        if ofport and int(ofport) in self.meter_ids():
            self._ofctl("del-meter", self.bridge, f"meter={int(ofport)}")

    def meters_supported(self) -> bool:
        out = self._ofctl("meter-features", self.bridge)
        m = re.search(r"max_meter:(\d+)", out)
        return bool(m and int(m.group(1)) > 0)

    def meter_ids(self) -> set[int]:
        out = self._ofctl("dump-meters", self.bridge)
        return {int(m) for m in re.findall(r"meter=(\d+)", out)}

    def meters(self) -> dict[int, dict]:
        out = self._ofctl("dump-meters", self.bridge)
        found = {}
        for block in out.split("meter=")[1:]:
            ident = int(block.split()[0])
            rate = re.search(r"rate=(\d+)", block)
            burst = re.search(r"burst_size=(\d+)", block)
            found[ident] = {"rate_kbps": int(rate.group(1)) if rate else None,
                            "burst_kb": int(burst.group(1)) if burst else None}
        return found

    # -- any flows of an endpoint --------------------------------------------------------
    def delete_endpoint_flows(self, endpoint_id: str) -> None:
        self._ofctl("del-flows", self.bridge, f"cookie={cookie_for(endpoint_id):#x}/-1")

    def dump_flows(self) -> str:
        return self._ofctl("dump-flows", self.bridge)
