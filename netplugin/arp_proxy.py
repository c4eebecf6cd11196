"""The ARP proxy, inside the switch.

For every endpoint in etcd, on any host, whose VLAN has an endpoint on this
host, table 10 holds a flow that turns an ARP request for its address into
the reply and sends it back out of the port it came in on: the request is
never flooded, and answers keep coming while the daemon is down (Contiv
answered in its agent, so ARP died with the agent). Requests from the trunk
are answered for this host's own endpoints. Requests for anything else
(gateways, outside hosts) miss and are switched normally, to the uplink.

Flows follow this host's view of etcd (hostview.py: the endpoints of the
networks it has bound, kept by watches): an endpoint that appears anywhere
gets its answer on every host of its network within a moment, and one that
goes loses it. Nothing is read from etcd on a pass. The global
setting ``arp-mode`` (``netctl global set --arp-mode proxy|flood``) turns the
proxy off: the bridge is then a plain learning switch.

Flows per host grow with the endpoints in this host's VLANs, plus one per
local endpoint for the trunk: never with the square of the cluster.
"""

from __future__ import annotations

import logging
import re
import time

from .arpframe import gratuitous_arp
from .config import Config
from .dataplane.flows import KIND_ARP_LOCAL, KIND_ARP_UPLINK, TABLE_ARP, Flows, cookie_for
from .dataplane.ovs import Switch
from .errors import NetpluginError, StoreUnavailable
from .hostview import HostView
from .model import Endpoint
from .watch import SyncLoop

log = logging.getLogger(__name__)

MODES = ("proxy", "flood")
FULL_PASS_EVERY = 10.0
FULL_DUMP_EVERY = 300.0  # a full pass reads the whole of table 10 this often; in between it counts it
VIEW_PATIENCE = 5.0      # seconds a pass waits for the view's first reads (never a pass on half a view)


def garp_packet(mac: str, ip: str) -> str:
    """A gratuitous ARP (a request for its own address, to broadcast), as hex for packet-out."""
    return gratuitous_arp(mac, ip).hex()


class ArpProxy:
    def __init__(self, cfg: Config, view: HostView, switch: Switch, flows: Flows):
        self.cfg = cfg
        self.view = view
        self.switch = switch
        self.flows = flows
        self._loop: SyncLoop | None = None
        self._announced = False
        self._uplink_port: int | None = None     # the uplink's ofport that the trunk answers match on
        self._held: set[int] | None = None        # cookies table 10 held after the last pass, None: unknown
        self._dumped = 0.0                        # when a pass last read the whole table (monotonic)

    def desired(self) -> dict[int, str]:
        """cookie -> flow text of every answer this host should hold."""
        return {cookie: self._text(*answer) for cookie, answer in self._desired()[0].items()}

    def _text(self, ep: Endpoint, in_port: int | None) -> str:
        return self.flows.arp_answer(ep.id, ep.ip, ep.mac, ep.vlan, in_port)

    def _desired(self) -> tuple[dict[int, tuple[Endpoint, int | None]], int | None]:
        """cookie -> (endpoint, the trunk's port or None) of every answer, and
        the trunk's port: flow texts are made only for answers to add."""
        if not self.view.ready(VIEW_PATIENCE):
            raise StoreUnavailable("the ARP proxy waits for its first read of etcd")
        if self.view.setting("arp-mode", "proxy") == "flood":
            return {}, None
        endpoints = self.view.endpoints()
        local_vlans = {ep.vlan for ep in endpoints if ep.host == self.cfg.host_id}
        uplink = self.switch.ofport(self.cfg.uplink) if self.cfg.uplink else None
        want: dict[int, tuple[Endpoint, int | None]] = {}
        for ep in endpoints:
            if ep.vlan not in local_vlans:
                continue
            want[cookie_for(ep.id, KIND_ARP_LOCAL)] = (ep, None)
            if ep.host == self.cfg.host_id and uplink:
                want[cookie_for(ep.id, KIND_ARP_UPLINK)] = (ep, uplink)
        return want, uplink

    def _wrong_uplink(self, have: set[int], uplink: int | None) -> set[int]:
        """Trunk answers that match on another port than the uplink's current one.

        An endpoint's address and MAC never change under its id, so the cookie says
        everything about an answer but one thing: the uplink's OpenFlow port number,
        which changes when the trunk is re-added (or given another ofport_request).
        Looked at when that number is new to this process (start-up) or changed."""
        mine = {c for c in have if (c >> 60) & 0x3 == KIND_ARP_UPLINK}
        if not mine or uplink is None or uplink == self._uplink_port:
            return set()
        wrong = set()
        for line in self.flows.dump_flows().splitlines():
            cookie = re.search(r"cookie=(0x[0-9a-f]+)", line)
            if cookie is None or int(cookie.group(1), 16) not in mine:
                continue
            port = re.search(r"in_port=\"?([^,\s\"]+)", line)
            if port is None or port.group(1) not in (str(uplink), self.cfg.uplink):
                wrong.add(int(cookie.group(1), 16))
        return wrong

    def resync(self, full: bool = True) -> tuple[int, int]:
        """Make table 10 hold exactly the desired answers; returns (added, removed).

        A pass woken by a change trusts what the last pass left in the table
        (one ``ovs-ofctl`` run per change, not two, on a host busy starting
        containers). A full pass, at least every 10 s, counts the table (one
        aggregate reply: a dump of 50,000 answers costs half a second of CPU)
        and reads it whole when the count is not what the last pass left, and
        every 5 minutes anyway, so whatever an OVS restart or a hand edit
        removed or added comes back."""
        want, uplink = self._desired()
        held = self._held
        if held is not None and (not full or (time.monotonic() - self._dumped < FULL_DUMP_EVERY
                                              and self.flows.count(TABLE_ARP) == len(held))):
            have = held
        else:
            have = self.flows.cookies(TABLE_ARP)
            self._dumped = time.monotonic()
        wrong = self._wrong_uplink(have, uplink)
        stale = sorted((have - set(want)) | wrong)
        new = [self._text(*want[c]) for c in want if c not in have or c in wrong]
        self._held = None                      # unknown until both changes went through
        self.flows.delete_cookies(stale)
        self.flows.add_flows(new)
        self._held = set(want)
        if uplink is not None:
            self._uplink_port = uplink
        if stale or new:
            log.info("ARP proxy: %d answers added, %d removed, %d held", len(new), len(stale), len(want))
        return len(new), len(stale)

    def announce(self, ep: Endpoint) -> None:
        """A gratuitous ARP for the endpoint, sent into the switch from its port,
        so neighbours and routers learn where its address is now."""
        ofport = self.switch.ofport(ep.port)
        if ofport is not None:
            self.flows.packet_out(ofport, garp_packet(ep.mac, ep.ip))

    def announce_all_local(self) -> int:
        count = 0
        for ep in self.view.local_endpoints():
            try:
                self.announce(ep)
                count += 1
            except NetpluginError as exc:
                log.warning("gratuitous ARP for %s failed: %s", ep.ip, exc.message)
        return count

    # -- following etcd ------------------------------------------------------------------
    def _pass(self, full: bool) -> None:
        self.resync(full)
        if not self._announced:
            log.info("gratuitous ARP sent for %d local endpoints", self.announce_all_local())
            self._announced = True

    def start(self) -> ArpProxy:
        self._loop = SyncLoop("arp-proxy", self._pass, FULL_PASS_EVERY)
        self.view.on("endpoints", self._loop.wake)
        self.view.on("settings", self._loop.wake)
        self._loop.start()
        return self

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
