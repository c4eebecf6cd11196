"""OpenFlow on the bridge: the base pipeline and per-port meters.

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

Changes go over one long-lived OpenFlow connection (ofchannel.py: the
bridge's management socket, messages built by os-ken's parser), each answered
before the call returns: a refused flow or meter is an error to the caller.
An ``ovs-ofctl`` run cost a process and a connection per change (10-30 ms
idle, 70-275 ms on a busy host), and CreateEndpoint waited for its own. Reads
of whole tables (``dump_flows``, ``cookies``) and bulk changes (over ``BULK`` flows, e.g. a
cold start's ARP answers, or all of them going in flood mode) still run one
``ovs-ofctl``, whose C encoder and printer are faster at that size; they are
argument lists (never a shell), and every name in them is checked first.

The meter ids on the bridge are remembered after one listing and kept up to
date by this class's own changes: setting or clearing a port without a limit
needs no listing. If the bridge changed behind our back (another process, an
OVS restart), the add/modify fallbacks below and the periodic full pass (which
lists the meters again) put it right.
"""

from __future__ import annotations

import re
import subprocess
import threading

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from ..errors import DataplaneError, DataplaneUnavailable, InvalidRequest
from .ofchannel import DATAPATH as DP
from .ofchannel import DEFAULT_RUNDIR, OpenFlowChannel, OpenFlowRefused
from .ovs import PARK_VLAN

OFCTL = "ovs-ofctl"
TABLE_CLASSIFY = 0
TABLE_ARP = 10
PRIO_PORT = 100
BULK = 200                 # add_flows above this many flow texts: one ovs-ofctl bundle
ALL_BITS = (1 << 64) - 1
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


class ArpAnswer(str):
    """An ARP answer's flow text (what ``dump-flows`` shows and tests read) that
    also carries the checked values it was made from, so it is sent as an
    OpenFlow message built from them, never parsed back from text."""

    values: tuple[str, str, str, int, int | None]

    def __new__(cls, text: str, values: tuple[str, str, str, int, int | None]) -> ArpAnswer:
        made = super().__new__(cls, text)
        made.values = values
        return made


def _apply(*actions) -> parser.OFPInstructionActions:
    return parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, list(actions))


PARK_COOKIE = 0x4E50        # the parking drop (portpool.PARK_DROP is the same flow as text)

def _flow_add(table: int, priority: int, match: parser.OFPMatch, instructions: list, cookie: int = 0):
    return parser.OFPFlowMod(DP, cookie=cookie, table_id=table, command=ofp.OFPFC_ADD, priority=priority,
                             buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                             match=match, instructions=instructions)


def _flow_delete(cookie: int, mask: int):
    return parser.OFPFlowMod(DP, cookie=cookie, cookie_mask=mask, table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
                             buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY,
                             match=parser.OFPMatch())


def _meter(command: int, meter: int, rate: int = 0, burst: int = 0):
    bands = [parser.OFPMeterBandDrop(rate=rate, burst_size=burst)] if command != ofp.OFPMC_DELETE else []
    return parser.OFPMeterMod(DP, command=command, flags=ofp.OFPMF_KBPS | ofp.OFPMF_BURST, meter_id=meter,
                              bands=bands)


def _arp_flow(endpoint_id: str, ip: str, mac: str, vlan: int, uplink_ofport: int | None):
    """The ARP answer as a flow-mod: the same match and actions as its text."""
    check_flow_text(endpoint_id, ip, mac)
    if uplink_ofport is None:
        cookie = cookie_for(endpoint_id, KIND_ARP_LOCAL)
        match = parser.OFPMatch(metadata=(int(vlan), 0xFFF), eth_type=0x0806, arp_op=1, arp_tpa=ip)
    else:
        cookie = cookie_for(endpoint_id, KIND_ARP_UPLINK)
        match = parser.OFPMatch(in_port=int(uplink_ofport), vlan_vid=ofp.OFPVID_PRESENT | int(vlan),
                                eth_type=0x0806, arp_op=1, arp_tpa=ip)
    actions = _apply(
        parser.NXActionRegMove(src_field="eth_src", dst_field="eth_dst", n_bits=48),
        parser.OFPActionSetField(eth_src=mac),
        parser.OFPActionSetField(arp_op=2),
        parser.NXActionRegMove(src_field="arp_sha", dst_field="arp_tha", n_bits=48),
        parser.NXActionRegMove(src_field="arp_spa", dst_field="arp_tpa", n_bits=32),
        parser.OFPActionSetField(arp_sha=mac),
        parser.OFPActionSetField(arp_spa=ip),
        parser.OFPActionOutput(ofp.OFPP_IN_PORT))
    return _flow_add(TABLE_ARP, PRIO_PORT, match, [actions], cookie)


def _raise(refused: list[OpenFlowRefused]) -> None:
    """The first refusal, naming the others in its message."""
    if refused:
        first = refused[0]
        if len(refused) > 1:
            first.message += f" (and {len(refused) - 1} more refused: {'; '.join(r.message for r in refused[1:])})"
        raise first


class Flows:
    def __init__(self, bridge: str, timeout: float = 5.0, rundir: str = DEFAULT_RUNDIR):
        if not _BRIDGE_RE.fullmatch(bridge or ""):
            raise InvalidRequest(f"bridge name {bridge!r} is invalid")
        self.bridge = bridge
        self.timeout = timeout
        self.channel = OpenFlowChannel(bridge, rundir, timeout)
        self._meter_ids: set[int] | None = None      # None: not listed yet
        self._meter_lock = threading.Lock()

    def close(self) -> None:
        self.channel.close()

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

    def _send(self, msgs: list, what: list[str]) -> None:
        """Changes over the connection; a refusal is raised."""
        _raise(self.channel.send(msgs, what))

    def ensure_pipeline(self) -> None:
        """Install the table-miss flows and the warm pool's parking drop
        (idempotent: an add replaces an equal match). The drop is part of the
        pipeline so that whatever puts the pipeline back (a restart of
        ovs-vswitchd) puts it back too: VLAN 4095 is reserved by 802.1Q, and a
        parked pool port admits that VLAN alone (portpool.py)."""
        self._send([_flow_add(TABLE_CLASSIFY, 0, parser.OFPMatch(), [parser.OFPInstructionGotoTable(TABLE_ARP)]),
                    _flow_add(TABLE_ARP, 0, parser.OFPMatch(), [_apply(parser.OFPActionOutput(ofp.OFPP_NORMAL))]),
                    _flow_add(TABLE_CLASSIFY, 65535, parser.OFPMatch(vlan_vid=ofp.OFPVID_PRESENT | PARK_VLAN), [],
                              PARK_COOKIE)],
                   [f"table {TABLE_CLASSIFY}'s table-miss flow", f"table {TABLE_ARP}'s table-miss flow",
                    f"the drop of parked ports' VLAN {PARK_VLAN}"])

    # -- ports and meters -------------------------------------------------------------
    def set_port(self, endpoint_id: str, ofport: int, vlan: int, limit: tuple[int, int] | None) -> None:
        """The port's table-0 flow, with a meter (id = ofport) when it has a limit:
        meter and flow in one exchange."""
        port = int(ofport)
        if port <= 0 or not 1 <= int(vlan) <= 4094:
            raise InvalidRequest(f"port {port} or VLAN {vlan} is out of range")
        cookie = cookie_for(endpoint_id)
        instructions: list = [parser.OFPInstructionWriteMetadata(int(vlan), 0xFFF),
                              parser.OFPInstructionGotoTable(TABLE_ARP)]
        msgs: list = []
        what: list[str] = []
        if limit:
            rate, burst = (int(x) for x in limit)
            if rate <= 0 or burst <= 0:
                raise InvalidRequest("a meter needs a positive rate and burst")
            known = port in self._known_meters()
            msgs.append(_meter(ofp.OFPMC_MODIFY if known else ofp.OFPMC_ADD, port, rate, burst))
            what.append(f"meter {port} ({rate} kbit/s, burst {burst} kbit)")
            instructions.insert(0, parser.OFPInstructionMeter(port, ofp.OFPIT_METER))
        msgs.append(_flow_add(TABLE_CLASSIFY, PRIO_PORT, parser.OFPMatch(in_port=port), instructions, cookie))
        what.append(f"the table-{TABLE_CLASSIFY} flow of port {port}")
        refused = self.channel.send(msgs, what)
        if limit and refused and refused[0].err_type == ofp.OFPET_METER_MOD_FAILED and refused[0].code in (
                ofp.OFPMMFC_METER_EXISTS, ofp.OFPMMFC_UNKNOWN_METER):
            # The bridge's meters were not what was remembered: the other command, then the flow again.
            other = ofp.OFPMC_ADD if refused[0].code == ofp.OFPMMFC_UNKNOWN_METER else ofp.OFPMC_MODIFY
            self._send([_meter(other, port, rate, burst), msgs[-1]], what)
        else:
            _raise(refused)
        if limit:
            self._remember(port, True)
        else:
            self._drop_meter(port)

    def _known_meters(self) -> set[int]:
        with self._meter_lock:
            known = self._meter_ids
        return set(known) if known is not None else self.meter_ids()

    def _remember(self, port: int, present: bool) -> None:
        with self._meter_lock:
            if self._meter_ids is not None:
                (self._meter_ids.add if present else self._meter_ids.discard)(port)

    def has_meter(self, ofport: int | None) -> bool:
        """Whether the port has a meter, as far as this bridge's meters are known."""
        return ofport is not None and ofport > 0 and ofport in self._known_meters()

    def del_meter(self, meter: int) -> None:
        """Delete one meter (and, as OpenFlow does, any flow that uses it)."""
        self._send([_meter(ofp.OFPMC_DELETE, int(meter))], [f"deleting meter {int(meter)}"])
        self._remember(int(meter), False)

    def _drop_meter(self, port: int) -> None:
        if port in self._known_meters():
            self.del_meter(port)

    def clear_port(self, endpoint_id: str, ofport: int | None) -> None:
        """Remove every flow of the endpoint (table 0 and its ARP answers) and the
        port's meter; fine when absent."""
        self.delete_endpoint_flows(endpoint_id)
        if ofport:
            self._drop_meter(int(ofport))

    def meters_supported(self) -> bool:
        features = self.channel.request(parser.OFPMeterFeaturesStatsRequest(DP, 0), "a meter features request")
        return bool(features) and int(features[0].max_meter) > 0

    def meter_ids(self) -> set[int]:
        """The meters on the bridge, listed now (and remembered)."""
        return set(self.meters())

    def meters(self) -> dict[int, dict]:
        """Meter id -> rate and burst, listed now (and the ids remembered)."""
        body = self.channel.request(parser.OFPMeterConfigStatsRequest(DP, 0, ofp.OFPM_ALL), "a meter listing")
        found = {}
        for meter in body:
            band = meter.bands[0] if meter.bands else None
            found[int(meter.meter_id)] = {"rate_kbps": int(band.rate) if band else None,
                                          "burst_kb": int(band.burst_size) if band else None}
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
        return ArpAnswer(
            f"table={TABLE_ARP},priority={PRIO_PORT},cookie={cookie:#x},arp,arp_op=1,{match},arp_tpa={ip},"
            f"actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],mod_dl_src:{mac},load:0x2->NXM_OF_ARP_OP[],"
            f"move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],"
            f"load:{mac_hex}->NXM_NX_ARP_SHA[],load:{ip_hex}->NXM_OF_ARP_SPA[],IN_PORT",
            (endpoint_id, ip, mac, int(vlan), None if uplink_ofport is None else int(uplink_ofport)))

    def add_flows(self, flows: list[str]) -> None:
        """ARP answers over the connection, each answered; more than BULK of them, or
        flow texts not made by arp_answer, in one ovs-ofctl bundle (all or none)."""
        if not flows:
            return
        if len(flows) <= BULK and all(isinstance(f, ArpAnswer) for f in flows):
            answers = [f for f in flows if isinstance(f, ArpAnswer)]
            self._send([_arp_flow(*a.values) for a in answers],
                       [f"the ARP answer for {a.values[1]} (endpoint {a.values[0][:12]})" for a in answers])
            return
        self._ofctl("--bundle", "add-flows", self.bridge, "-", stdin="\n".join(flows) + "\n")

    def delete_cookies(self, cookies: list[int]) -> None:
        """Each over the connection; more than BULK of them in one ovs-ofctl bundle."""
        if len(cookies) > BULK:
            self._ofctl("--bundle", "del-flows", self.bridge, "-",
                        stdin="".join(f"cookie={int(c):#x}/{ALL_BITS:#x}\n" for c in cookies))
        elif cookies:
            self._send([_flow_delete(int(c), ALL_BITS) for c in cookies],
                       [f"deleting the flows of cookie {int(c):#x}" for c in cookies])

    def cookies(self, table: int) -> set[int]:
        """Cookies of netplugin's flows in a table."""
        out = self._ofctl("dump-flows", self.bridge, f"table={int(table)}")
        return {c for c in (int(x, 16) for x in re.findall(r"cookie=(0x[0-9a-f]+)", out)) if c >> 63}

    def count(self, table: int, ours: bool = True) -> int:
        """How many of netplugin's flows (``ours=False``: of all flows) a table holds:
        one aggregate reply, a few bytes whatever the table's size."""
        mask = OURS if ours else 0
        body = self.channel.request(parser.OFPAggregateStatsRequest(
            DP, 0, int(table), ofp.OFPP_ANY, ofp.OFPG_ANY, mask, mask, parser.OFPMatch()),
            f"counting the flows of table {int(table)}")
        if not body:
            raise DataplaneError(f"bridge {self.bridge} gave no flow count for table {int(table)}")
        return int(body[0].flow_count)

    def delete_endpoint_flows(self, endpoint_id: str) -> None:
        """Every flow of the endpoint, whatever its kind."""
        self._send([_flow_delete(cookie_for(endpoint_id), ENDPOINT_MASK)],
                   [f"deleting the flows of endpoint {endpoint_id[:12]}"])

    def dump_flows(self) -> str:
        return self._ofctl("dump-flows", self.bridge)

    def packet_out(self, in_port: int, packet_hex: str) -> None:
        """Send a packet into the switch as if it came from in_port, switched normally."""
        if not re.fullmatch(r"[0-9a-f]+", packet_hex) or len(packet_hex) % 2:
            raise InvalidRequest("packet must be hex")
        self._send([parser.OFPPacketOut(DP, buffer_id=ofp.OFP_NO_BUFFER, in_port=int(in_port),
                                        actions=[parser.OFPActionOutput(ofp.OFPP_NORMAL)],
                                        data=bytes.fromhex(packet_hex))],
                   [f"a packet into port {int(in_port)}"])
