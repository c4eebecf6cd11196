"""The ARP proxy, inside the switch.

For every endpoint in etcd, on any host, whose VLAN has an endpoint on this
host, table 10 holds a flow that turns an ARP request for its address into
the reply and sends it back out of the port it came in on: the request is
never flooded, and answers keep coming while the daemon is down (Contiv
answered in its agent, so ARP died with the agent). Requests from the trunk
are answered for this host's own endpoints. Requests for anything else
(gateways, outside hosts) miss and are switched normally, to the uplink.

Flows follow etcd through watches: an endpoint that appears anywhere gets its
answer on every host within a moment, and one that goes loses it. The global
setting ``arp-mode`` (``netctl global set --arp-mode proxy|flood``) turns the
proxy off: the bridge is then a plain learning switch.

Flows per host grow with the endpoints in this host's VLANs, plus one per
local endpoint for the trunk: never with the square of the cluster.
"""

from __future__ import annotations

import logging

from .config import Config
from .dataplane.flows import KIND_ARP_LOCAL, KIND_ARP_UPLINK, TABLE_ARP, Flows, cookie_for
from .dataplane.ovs import Switch
from .errors import NetpluginError
from .model import Endpoint
from .store import Store
from .watch import SyncLoop

log = logging.getLogger(__name__)

MODES = ("proxy", "flood")
FULL_PASS_EVERY = 10.0


def garp_packet(mac: str, ip: str) -> str:
    """A gratuitous ARP (a request for its own address, to broadcast), as hex, made with scapy."""
    from scapy.layers.l2 import ARP, Ether
    pkt = Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=mac, psrc=ip, hwdst="00:00:00:00:00:00", pdst=ip)
    return bytes(pkt).hex()


class ArpProxy:
    def __init__(self, cfg: Config, store: Store, switch: Switch, flows: Flows):
        self.cfg = cfg
        self.store = store
        self.switch = switch
        self.flows = flows
        self._loop: SyncLoop | None = None
        self._announced = False

    def desired(self) -> dict[int, str]:
        """cookie -> flow text of every answer this host should hold."""
        if self.store.arp_mode() == "flood":
            return {}
        endpoints = self.store.list_endpoints()
        local_vlans = {ep.vlan for ep in endpoints if ep.host == self.cfg.host_id}
        uplink = self.switch.ofport(self.cfg.uplink) if self.cfg.uplink else None
        want: dict[int, str] = {}
        for ep in endpoints:
            if ep.vlan not in local_vlans:
                continue
            want[cookie_for(ep.id, KIND_ARP_LOCAL)] = self.flows.arp_answer(ep.id, ep.ip, ep.mac, ep.vlan, None)
            if ep.host == self.cfg.host_id and uplink:
                want[cookie_for(ep.id, KIND_ARP_UPLINK)] = self.flows.arp_answer(ep.id, ep.ip, ep.mac, ep.vlan,
                                                                                  uplink)
        return want

    def resync(self) -> tuple[int, int]:
        """Make table 10 hold exactly the desired answers; returns (added, removed)."""
        want = self.desired()
        have = self.flows.cookies(TABLE_ARP)
        stale = sorted(have - set(want))
        new = [want[c] for c in want if c not in have]
        self.flows.delete_cookies(stale)
        self.flows.add_flows(new)
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
        for ep in self.store.list_endpoints():
            if ep.host == self.cfg.host_id:
                try:
                    self.announce(ep)
                    count += 1
                except NetpluginError as exc:
                    log.warning("gratuitous ARP for %s failed: %s", ep.ip, exc.message)
        return count

    # -- following etcd ------------------------------------------------------------------
    def _pass(self, full: bool) -> None:
        self.resync()
        if not self._announced:
            log.info("gratuitous ARP sent for %d local endpoints", self.announce_all_local())
            self._announced = True

    def start(self) -> "ArpProxy":
        self._loop = SyncLoop("arp-proxy", self._pass, FULL_PASS_EVERY)
        self._loop.follow(self.store.kv, f"{self.store.prefix}/endpoints/")
        self._loop.follow(self.store.kv, self.store.k_setting("arp-mode"))
        self._loop.start()
        return self

    def close(self) -> None:
        if self._loop is not None:
            self._loop.close()
