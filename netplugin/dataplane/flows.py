"""OpenFlow on the bridge: the base pipeline and per-port meters.

No OpenFlow library covers meters and bundles as well as ``ovs-ofctl`` does,
so this module calls it with argument lists (never a shell) and feeds flows
on stdin in one bundle. Every name that reaches the command line is checked
first, and numbers are formatted from ints.

Pipeline (OpenFlow 1.3):

* table 0  one flow per local port: ``in_port=P`` → ``[meter:M,]write_metadata:VLAN,goto_table:10``
           (the meter only when the port has a limit; the metadata tells table 10
           which VLAN an untagged packet from an access port belongs to);
           everything else (the uplink trunk) → ``goto_table:10``
* table 10 ARP answers for known endpoints (the ARP proxy), matched on
           metadata=VLAN for local ports and on dl_vlan for the trunk; the rest → NORMAL

Traffic of ports without a limit takes no meter and one extra table lookup,
which the datapath caches. Every flow of an endpoint carries a cookie made of
its endpoint id and a kind, so flows are found and removed by endpoint.

Each ``ovs-ofctl`` run costs a process and a connection (10-30 ms idle, far
more on a busy host), and CreateEndpoint and DeleteEndpoint wait for theirs.
So the meter ids on the bridge are remembered after one listing and kept up
to date by this class's own changes: setting or clearing a port without a
limit needs no listing. If the bridge changed behind our back (another
process, an OVS restart), the add/modify fallbacks below and the periodic
full pass (which lists the meters again) put it right.
"""

from __future__ import annotations

import re
import subprocess
import threading

from ..errors import DataplaneError, DataplaneUnavailable, InvalidRequest

OFCTL = "ovs-ofctl"
TABLE_CLASSIFY = 0
TABLE_ARP = 10
PRIO_PORT = 100
_BRIDGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
_ENDPOINT_RE = re.compile(r"[0-9a-f]{15,64}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_OCTET = r"(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_IPV4_RE = re.compile(rf"{_OCTET}(\.{_OCTET}){{3}}")


def check_flow_text(endpoint_id: str, ip: str | None = None, mac: str | None = None) -> None:
    """The second line of defence: nothing but a strictly valid endpoint id,
    dotted IPv4 address and lowercase MAC ever reaches flow text."""
    if not isinstance(endpoint_id, str) or not _ENDPOINT_RE.fullmatch(endpoint_id):
        raise InvalidRequest(f"endpoint id {endpoint_id!r} is not hex: no flow written")
    if ip is not None and (not isinstance(ip, str) or not _IPV4_RE.fullmatch(ip)):
        raise InvalidRequest(f"address {ip!r} is not a dotted IPv4 address: no flow written")
    if mac is not None and (not isinstance(mac, str) or not _MAC_RE.fullmatch(mac)):
        raise InvalidRequest(f"MAC {mac!r} is not aa:bb:cc:dd:ee:ff in lowercase hex: no flow written")


KIND_PORT = 0          # table 0: the port's classification (and meter)
KIND_ARP_LOCAL = 1     # table 10: answer requests from local ports of the VLAN
KIND_ARP_UPLINK = 2    # table 10: answer requests from the trunk (local endpoints only)
ENDPOINT_MASK = (1 << 63) | ((1 << 60) - 1)


OURS = 1 << 63          # the bit every netplugin cookie has set


def cookie_for(endpoint_id: str, kind: int = KIND_PORT) -> int:
    """Top bit: a netplugin flow; bits 60-61: the kind; bits 0-59: the endpoint id."""
    check_flow_text(endpoint_id)
    return (1 << 63) | (kind << 60) | int(endpoint_id[:15], 16)


def endpoint_of_cookie(cookie: int) -> tuple[str, int]:
    """(first 15 hex digits of the endpoint id, kind)."""
    return f"{cookie & ((1 << 60) - 1):015x}", (cookie >> 60) & 0x3


class Flows:
    def __init__(self, bridge: str, timeout: float = 5.0):
        if not _BRIDGE_RE.fullmatch(bridge or ""):
            raise InvalidRequest(f"bridge name {bridge!r} is invalid")
        self.bridge = bridge
        self.timeout = timeout
        self._meter_ids: set[int] | None = None      # None: not listed yet
        self._meter_lock = threading.Lock()

    def _ofctl(self, *args: str, stdin: str | None = None) -> str:
        cmd = [OFCTL, "-O", "OpenFlow13", f"--timeout={int(self.timeout)}", *args]
        try:
            proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=self.timeout + 2,
                                  check=False)
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

    # -- ports and meters -------------------------------------------------------------
    def set_port(self, endpoint_id: str, ofport: int, vlan: int, limit: tuple[int, int] | None) -> None:
        """The port's table-0 flow, with a meter (id = ofport) when it has a limit."""
        port = int(ofport)
        if port <= 0 or not 1 <= int(vlan) <= 4094:
            raise InvalidRequest(f"port {port} or VLAN {vlan} is out of range")
        meter = ""
        if limit:
            rate, burst = (int(x) for x in limit)
            if rate <= 0 or burst <= 0:
                raise InvalidRequest("a meter needs a positive rate and burst")
            self._put_meter(port, f"meter={port},kbps,burst,band=type=drop,rate={rate},burst_size={burst}")
            meter = f"meter:{port},"
        self._ofctl("--bundle", "add-flows", self.bridge, "-", stdin=(
            f"table={TABLE_CLASSIFY},priority={PRIO_PORT},cookie={cookie_for(endpoint_id):#x},in_port={port},"
            f"actions={meter}write_metadata:{int(vlan):#x}/0xfff,goto_table:{TABLE_ARP}\n"))
        if not limit:
            self._drop_meter(port)

    def _known_meters(self) -> set[int]:
        with self._meter_lock:
            known = self._meter_ids
        return set(known) if known is not None else self.meter_ids()

    def _remember(self, port: int, present: bool) -> None:
        with self._meter_lock:
            if self._meter_ids is not None:
                (self._meter_ids.add if present else self._meter_ids.discard)(port)

    def _put_meter(self, port: int, spec: str) -> None:
        """Add or modify; whichever the bridge refuses, the other is tried."""
        first, second = ("mod-meter", "add-meter") if port in self._known_meters() else ("add-meter", "mod-meter")
        try:
            self._ofctl(first, self.bridge, spec)
        except DataplaneError as exc:
            if "METER_EXISTS" not in exc.message and "UNKNOWN_METER" not in exc.message:
                raise
            self._ofctl(second, self.bridge, spec)
        self._remember(port, True)

    def has_meter(self, ofport: int | None) -> bool:
        """Whether the port has a meter, as far as this bridge's meters are known."""
        return ofport is not None and ofport > 0 and ofport in self._known_meters()

    def del_meter(self, meter: int) -> None:
        """Delete one meter (and, as OpenFlow does, any flow that uses it)."""
        self._ofctl("del-meter", self.bridge, f"meter={int(meter)}")
        self._remember(int(meter), False)

    def _drop_meter(self, port: int) -> None:
        if port in self._known_meters():
            self._ofctl("del-meter", self.bridge, f"meter={port}")
            self._remember(port, False)

    def clear_port(self, endpoint_id: str, ofport: int | None) -> None:
        """Remove every flow of the endpoint (table 0 and its ARP answers) and the
        port's meter; fine when absent."""
        self.delete_endpoint_flows(endpoint_id)
        if ofport:
            self._drop_meter(int(ofport))

    def meters_supported(self) -> bool:
        out = self._ofctl("meter-features", self.bridge)
        m = re.search(r"max_meter:(\d+)", out)
        return bool(m and int(m.group(1)) > 0)

    def meter_ids(self) -> set[int]:
        """The meters on the bridge, listed now (and remembered)."""
        return set(self.meters())

    def meters(self) -> dict[int, dict]:
        """Meter id -> rate and burst, listed now (and the ids remembered)."""
        out = self._ofctl("dump-meters", self.bridge)
        found = {}
        for block in out.split("meter=")[1:]:
            ident = int(block.split()[0])
            rate = re.search(r"rate=(\d+)", block)
            burst = re.search(r"burst_size=(\d+)", block)
            found[ident] = {"rate_kbps": int(rate.group(1)) if rate else None,
                            "burst_kb": int(burst.group(1)) if burst else None}
        with self._meter_lock:
            self._meter_ids = set(found)
        return found

    # -- the ARP proxy -------------------------------------------------------------------
    def arp_answer(self, endpoint_id: str, ip: str, mac: str, vlan: int, uplink_ofport: int | None) -> str:
        """The flow text that answers ARP requests for ip with mac: from local ports
        of the VLAN (metadata), or from the trunk (dl_vlan) when uplink_ofport is given."""
        check_flow_text(endpoint_id, ip, mac)
        ip_hex = "0x" + "".join(f"{int(o):02x}" for o in ip.split("."))
        mac_hex = "0x" + mac.replace(":", "")
        if uplink_ofport is None:
            cookie, match = cookie_for(endpoint_id, KIND_ARP_LOCAL), f"metadata={int(vlan):#x}/0xfff"
        else:
            cookie = cookie_for(endpoint_id, KIND_ARP_UPLINK)
            match = f"in_port={int(uplink_ofport)},dl_vlan={int(vlan)}"
        return (f"table={TABLE_ARP},priority={PRIO_PORT},cookie={cookie:#x},arp,arp_op=1,{match},arp_tpa={ip},"
                f"actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:{mac},load:0x2->NXM_OF_ARP_OP[],"
                f"move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],"
                f"load:{mac_hex}->NXM_NX_ARP_SHA[],load:{ip_hex}->NXM_OF_ARP_SPA[],IN_PORT")

    def add_flows(self, flows: list[str]) -> None:
        if flows:
            self._ofctl("--bundle", "add-flows", self.bridge, "-", stdin="\n".join(flows) + "\n")

    def delete_cookies(self, cookies: list[int]) -> None:
        if cookies:
            self._ofctl("--bundle", "del-flows", self.bridge, "-",
                        stdin="".join(f"cookie={c:#x}/{(1 << 64) - 1:#x}\n" for c in cookies))

    def cookies(self, table: int) -> set[int]:
        """Cookies of netplugin's flows in a table."""
        out = self._ofctl("dump-flows", self.bridge, f"table={int(table)}")
        return {c for c in (int(x, 16) for x in re.findall(r"cookie=(0x[0-9a-f]+)", out)) if c >> 63}

    def count(self, table: int) -> int:
        """How many of netplugin's flows a table holds: one aggregate reply,
        a few bytes whatever the table's size (a full pass's cheap check)."""
        out = self._ofctl("dump-aggregate", self.bridge, f"table={int(table)},cookie={OURS:#x}/{OURS:#x}")
        found = re.search(r"flow_count=(\d+)", out)
        if found is None:
            raise DataplaneError(f"ovs-ofctl dump-aggregate on {self.bridge} gave no flow count: {out.strip()[:200]}")
        return int(found.group(1))

    def delete_endpoint_flows(self, endpoint_id: str) -> None:
        """Every flow of the endpoint, whatever its kind."""
        self._ofctl("del-flows", self.bridge, f"cookie={cookie_for(endpoint_id):#x}/{ENDPOINT_MASK:#x}")

    def dump_flows(self) -> str:
        return self._ofctl("dump-flows", self.bridge)

    def packet_out(self, in_port: int, packet_hex: str) -> None:
        """Send a packet into the switch as if it came from in_port, switched normally."""
        if not re.fullmatch(r"[0-9a-f]+", packet_hex):
            raise InvalidRequest("packet must be hex")
        self._ofctl("packet-out", self.bridge, f"in_port={int(in_port)},packet={packet_hex},actions=NORMAL")
