"""The endpoint lifecycle on Docker's path: CreateEndpoint, Join, Leave,
DeleteEndpoint and the calls that only read an endpoint, each undoing its own
steps when one fails.

Order rule: the etcd record is written before the datapath is touched and
removed after the datapath is cleaned, so a crash between any two steps leaves
a record that names what may exist, for a retry or the reconciler to finish.

Hot path: CreateEndpoint and Join make no etcd round trip and no thread hop
beyond what they must; what Docker need not wait for (the sandbox record,
gratuitous ARP, the veth after DeleteEndpoint) goes to the background.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from concurrent.futures import Future

import netaddr

from . import deadline
from .arp_proxy import ArpProxy
from .background import Background
from .bridge import Bridge
from .config import Config
from .dataplane.links import Links, veth_names
from .dataplane.ovs import EXT_ENDPOINT, EXT_HOST, EXT_NETWORK, Switch
from .errors import (
    Conflict,
    DataplaneError,
    InvalidRequest,
    NetpluginError,
    NotFound,
    StoreUnavailable,
)
from .limit_sync import LimitSync
from .model import Endpoint, check_address, check_docker_id, check_mac, mac_for
from .networks import Networks
from .portpool import PortPool
from .store import Store

log = logging.getLogger(__name__)

DELETE_RETRY_EVERY = 1.0  # seconds between background retries of a DeleteEndpoint that etcd refused
DELETE_RETRIES = 60
PORT_PATIENCE = 10.0      # seconds Join waits, outside a request, for ovs-vswitchd to open the port
UNPLUG_PATIENCE = 20.0    # seconds DeleteEndpoint waits, outside a request, for the port removal Leave began


class Endpoints:
    def __init__(self, cfg: Config, store: Store, links: Links, switch: Switch, bridge: Bridge,
                 networks: Networks, limits: LimitSync, arp: ArpProxy, background: Background,
                 pool: PortPool | None = None):
        self.cfg = cfg
        self.store = store
        self.links = links
        self.switch = switch
        self.bridge = bridge
        self.networks = networks
        self.limits = limits
        self.arp = arp
        self.background = background
        self._unplugging: dict[str, Future] = {}       # endpoint id -> its port's removal, begun at Leave
        self._unplug_lock = threading.Lock()
        self._gateways: dict[str, str] = {}              # network id -> its gateway
        self._made: dict[str, Endpoint] = {}             # endpoints this process made, until deleted
        self.pool = pool                                 # parked veth pairs ready on the switch, or None
        self._applied_at: dict[str, int] = {}            # endpoint id -> OVS configuration its Join waits for

    # -- CreateEndpoint ---------------------------------------------------------------
    def create_endpoint(self, docker_net: str, endpoint_id: str, interface: dict) -> dict:
        """Returns the Interface fields Docker left empty (normally just MacAddress)."""
        with self._in_flight():
            return self._create_endpoint(docker_net, endpoint_id, interface)

    def _in_flight(self) -> contextlib.AbstractContextManager:
        """An endpoint call the pool's filler waits for (it never competes with one)."""
        return self.pool.request() if self.pool is not None else contextlib.nullcontext()

    def _create_endpoint(self, docker_net: str, endpoint_id: str, interface: dict) -> dict:
        check_docker_id(docker_net, "NetworkID")
        check_docker_id(endpoint_id, "EndpointID")
        if not isinstance(interface, dict):
            raise InvalidRequest("Interface must be an object with Address and MacAddress")
        if interface.get("AddressIPv6"):
            raise InvalidRequest("netplugin networks are IPv4 only: do not pass --ip6")
        net = self.networks.network_for(docker_net)
        subnet = netaddr.IPNetwork(net.subnet)
        address = interface.get("Address")
        if not address:
            raise InvalidRequest("Interface.Address is empty: the network must use --ipam-driver netplugin")
        ip = check_address(address, subnet)
        if str(ip) in net.aux.values():
            raise Conflict(f"address {ip} is an auxiliary address of network {net.label}: choose another --ip")
        mac = check_mac(interface["MacAddress"]) if interface.get("MacAddress") else mac_for(str(ip))
        offset = int(ip) - subnet.first
        held = self.store.get_allocation(net.subnet, offset)
        if held is None:
            raise Conflict(f"address {ip} is not allocated in network {net.label}: it was released meanwhile; retry")
        alloc, alloc_rev = held
        if alloc.kind != "endpoint" or alloc.host != self.cfg.host_id or alloc.endpoint not in ("", endpoint_id):
            raise Conflict(f"address {ip} belongs to someone else ({alloc.kind} on host {alloc.host})")
        pool = self.pool
        pair = pool.take() if pool is not None else None
        port, peer = (pair.host, pair.peer) if pair is not None else veth_names(endpoint_id)
        ep = Endpoint(id=endpoint_id, network=net.id, docker_network=docker_net, host=self.cfg.host_id,
                      ip=str(ip), prefixlen=subnet.prefixlen, mac=mac, port=port, peer=peer, vlan=net.vlan,
                      network_name=net.label)
        alloc.endpoint, alloc.network = endpoint_id, net.id
        try:
            made = self.store.create_endpoint(ep, net.subnet, offset, alloc_rev, alloc)
        except Exception:
            if pool is not None and pair is not None:
                pool.discard(pair)             # the record may have been written: never hand this name out again
            raise
        if not made:
            if pool is not None and pair is not None:
                pool.give_back(pair)
            existing = self.store.get_endpoint(endpoint_id)     # the transaction requires its absence
            if existing is not None:
                raise Conflict(f"endpoint {endpoint_id[:12]} exists already on host {existing[0].host}")
            raise Conflict(f"endpoint {endpoint_id[:12]} or its address {ip} changed at the same moment: retry")
        ext = {EXT_ENDPOINT: endpoint_id, EXT_NETWORK: net.id, EXT_HOST: self.cfg.host_id}
        try:
            if pool is not None and pair is not None:
                # PortPool.claim: all or nothing. The port is open already, so
                # Join waits only for ovs-vswitchd to apply the claim.
                deadline.check("claiming a pooled port")
                self._applied_at[endpoint_id] = pool.claim(pair, endpoint_id, net.vlan, ext, mac)
            else:
                self._plug_new(port, peer, net.vlan, ext, mac)
            deadline.check("applying the bandwidth limit")
            self.limits.apply_endpoint(ep, net)
            deadline.check("finishing the endpoint")
        except Exception:
            self._undo_endpoint(ep)
            raise
        self._made[endpoint_id] = ep
        return {} if interface.get("MacAddress") else {"MacAddress": mac}

    def _plug_new(self, port: str, peer: str, vlan: int, ext: dict[str, str], mac: str) -> None:
        deadline.check("creating the veth pair")
        self.bridge.ensure()
        self.links.create_veth(port, peer, self.cfg.mtu, mac, self.cfg.datapath_type == "netdev")
        deadline.check("adding the OVS port")
        # ovs-vswitchd opens the port while Docker prepares the container; Join,
        # after which the container can send, waits until it has (wait_ofport).
        self.switch.add_access_port(self.cfg.bridge, port, vlan, ext, wait_vswitchd=False)

    def _port_of(self, endpoint_id: str) -> str:
        """The host end of an endpoint this process did not make: its OVS port
        (local replica), else its record, else the name its id gives."""
        port = self.switch.port_of_endpoint(endpoint_id)
        if port is None:
            found = self.store.get_endpoint(endpoint_id)
            port = found[0].port if found is not None else None
        return port or veth_names(endpoint_id)[0]

    def _undo_endpoint(self, ep: Endpoint) -> None:
        self._made.pop(ep.id, None)
        self._applied_at.pop(ep.id, None)
        for step, fn in (("limit", lambda: self.limits.remove(ep.id, ep.port)),
                         ("OVS port", lambda: self.switch.delete_port(ep.port)),
                         ("veth", lambda: self.links.delete(ep.port)),
                         ("etcd record", lambda: self.store.delete_endpoint(ep.id))):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep undoing; the reconciler finishes the rest
                log.error("rollback of endpoint %s: could not remove its %s: %s", ep.id[:12], step, exc)

    # -- reading an endpoint -------------------------------------------------------------
    def _known_endpoint(self, docker_net: str, endpoint_id: str) -> Endpoint:
        """For calls that only read what never changes under an endpoint's id
        (Leave, ProgramExternalConnectivity, EndpointOperInfo): an endpoint this
        process made is answered from memory, anything else from etcd."""
        check_docker_id(docker_net, "NetworkID")
        check_docker_id(endpoint_id, "EndpointID")
        ep = self._made.get(endpoint_id)
        if ep is not None and ep.docker_network == docker_net:
            return ep
        found = self.store.get_endpoint(endpoint_id)
        if found is None or found[0].docker_network != docker_net:
            raise NotFound(f"endpoint {endpoint_id[:12]} does not exist in docker network {docker_net[:12]}")
        return found[0]

    def check_endpoint(self, docker_net: str, endpoint_id: str) -> None:
        """NotFound unless the endpoint exists in docker_net."""
        self._known_endpoint(docker_net, endpoint_id)

    def check_ids(self, docker_net: str, endpoint_id: str) -> None:
        check_docker_id(docker_net, "NetworkID")
        check_docker_id(endpoint_id, "EndpointID")

    def endpoint_info(self, docker_net: str, endpoint_id: str) -> dict:
        ep = self._known_endpoint(docker_net, endpoint_id)
        return {"network": ep.network_name or ep.network, "network_id": ep.network, "vlan": ep.vlan,
                "ip": ep.ip, "mac": ep.mac, "port": ep.port, "host": ep.host, "bridge": self.cfg.bridge}

    # -- Join and Leave --------------------------------------------------------------------
    def join(self, docker_net: str, endpoint_id: str, sandbox_key: str) -> dict:
        with self._in_flight():
            return self._join(docker_net, endpoint_id, sandbox_key)

    def _join(self, docker_net: str, endpoint_id: str, sandbox_key: str) -> dict:
        ep = self._known_endpoint(docker_net, endpoint_id)
        if not isinstance(sandbox_key, str):
            raise InvalidRequest("SandboxKey must be a string")
        if not self.links.exists(ep.peer):
            raise DataplaneError(f"the container end {ep.peer} of endpoint {endpoint_id[:12]} is missing: "
                                 "remove the container and start it again")
        gateway = self._gateway_of(ep.network, endpoint_id)
        if sandbox_key and ep.sandbox != sandbox_key:
            ep.sandbox = sandbox_key
            self.background.later(self._record_sandbox, endpoint_id, sandbox_key)
        begun = self._take_unplugging(endpoint_id)
        if begun is not None:
            self._replug(ep, begun)           # joined again after a Leave: the port comes back
        applied_at = self._applied_at.pop(endpoint_id, None)
        if applied_at is not None:            # a pooled port: open already, its VLAN set by the claim
            self.switch.wait_applied(applied_at, deadline.remaining(PORT_PATIENCE))
        self.switch.wait_ofport(ep.port, deadline.remaining(PORT_PATIENCE))
        self.announce_later(ep)
        return {"InterfaceName": {"SrcName": ep.peer, "DstPrefix": "eth"},
                "Gateway": gateway, "DisableGatewayService": True}

    def _record_sandbox(self, endpoint_id: str, sandbox_key: str) -> None:
        """Note the container's network namespace in the record, right after Join
        answers: it lets the reconciler rebuild a live container's lost record."""
        if not self.store.record_sandbox(endpoint_id, sandbox_key):   # a concurrent 'netctl endpoint set' may win
            log.warning("endpoint %s: its sandbox could not be recorded (the record kept changing)", endpoint_id[:12])

    def _gateway_of(self, net_id: str, endpoint_id: str) -> str:
        """A network's gateway never changes under its id: read once per process."""
        gateway = self._gateways.get(net_id)
        if gateway is None:
            net = self.store.get_network(net_id)
            if net is None:
                raise NotFound(f"network of endpoint {endpoint_id[:12]} was deleted")
            gateway = self._gateways[net_id] = net.gateway
        return gateway

    def announce_later(self, ep: Endpoint) -> Future:
        """Send the endpoint's gratuitous ARP from the background thread.

        Join does not wait for it: it is a packet-out through ovs-ofctl (tens of
        milliseconds on a busy host) that Docker's container start would
        otherwise wait for, and it is a courtesy: neighbours learn the address
        from the container's own first packets anyway. Announcements go out in
        order, one at a time."""
        return self.background.later(self._announce, ep)

    def _announce(self, ep: Endpoint) -> None:
        try:
            self.arp.announce(ep)
        except NetpluginError as exc:
            log.warning("gratuitous ARP for %s failed: %s", ep.ip, exc.message)

    def leave(self, docker_net: str, endpoint_id: str) -> None:
        """The container is leaving: its switch port starts going now.

        After Leave, Docker moves the container end back out of the container
        and writes its own store (about 30 ms) before it sends DeleteEndpoint,
        which waits for this removal instead of starting it."""
        ep = self._known_endpoint(docker_net, endpoint_id)
        with self._unplug_lock:
            if endpoint_id not in self._unplugging:
                self._unplugging[endpoint_id] = self.background.alongside(self._unplug, endpoint_id, ep.port)

    def _unplug(self, endpoint_id: str, port: str) -> None:
        """The endpoint's limit and flows, then its switch port."""
        self.limits.remove(endpoint_id, port)
        self.switch.delete_port(port)

    def _take_unplugging(self, endpoint_id: str) -> Future | None:
        with self._unplug_lock:
            return self._unplugging.pop(endpoint_id, None)

    def _unplugged(self, endpoint_id: str, port: str) -> None:
        """Wait for the removal Leave began; do it here if none was begun or it failed."""
        begun = self._take_unplugging(endpoint_id)
        if begun is not None:
            try:
                begun.result(timeout=deadline.remaining(UNPLUG_PATIENCE))
                return
            except Exception as exc:  # noqa: BLE001 - the step is tried again, and its error is the answer
                log.info("removing the port of endpoint %s after Leave failed (%s): trying again",
                         endpoint_id[:12], getattr(exc, "message", exc))
        self._unplug(endpoint_id, port)

    def _replug(self, ep: Endpoint, begun: Future) -> None:
        """Undo the port removal of a Leave that another Join followed, once
        that removal is over (else it could take the port away again)."""
        try:
            begun.result(timeout=deadline.remaining(UNPLUG_PATIENCE))
        except Exception as exc:  # noqa: BLE001 - whatever it left, the port is added again below
            log.info("removing the port of endpoint %s after Leave failed (%s): adding it again",
                     ep.id[:12], getattr(exc, "message", exc))
        self.switch.add_access_port(self.cfg.bridge, ep.port, ep.vlan, {
            EXT_ENDPOINT: ep.id, EXT_NETWORK: ep.network, EXT_HOST: self.cfg.host_id})
        self.limits.apply_endpoint(ep)

    # -- DeleteEndpoint ----------------------------------------------------------------------
    def delete_endpoint(self, docker_net: str, endpoint_id: str) -> None:
        """Remove port and veth, then the record. Unknown endpoints succeed:
        Docker only logs errors here, so whatever exists by name is cleaned.

        Docker forgets the endpoint whatever the answer, so when etcd cannot
        be reached the deletion is also finished in the background, retried
        for up to a minute, rather than left to the reconciler."""
        check_docker_id(docker_net, "NetworkID")
        check_docker_id(endpoint_id, "EndpointID")
        try:
            with self._in_flight():
                self._delete_endpoint(endpoint_id)
        except StoreUnavailable:
            self._retry_delete(endpoint_id, 1)
            raise

    def _retry_delete(self, endpoint_id: str, attempt: int) -> None:
        def again() -> None:
            try:
                self._delete_endpoint(endpoint_id, late=True)
                log.info("endpoint %s deleted on retry %d, after etcd came back", endpoint_id[:12], attempt)
            except StoreUnavailable:
                if attempt < DELETE_RETRIES:
                    self._retry_delete(endpoint_id, attempt + 1)
                else:
                    log.error("endpoint %s could not be deleted: etcd stayed unreachable; the reconciler "
                              "will release it", endpoint_id[:12])
        self.background.after(DELETE_RETRY_EVERY, again)

    def _delete_endpoint(self, endpoint_id: str, late: bool = False) -> None:
        """Port (with its limit and flows), then the record; the veth after the answer.

        ``late``: Docker has moved on, and its ReleaseAddress, refused while
        the record existed, will not come again: the address goes with the
        record (and a tombstone says why).

        The veth is deleted after DeleteEndpoint answers, on a thread of its
        own (the kernel deletes veths one at a time, 15-25 ms each, under the
        RTNL lock, so a burst queues there rather than behind the background
        thread's ARP and flow work): off the switch and out of etcd, it
        carries nothing (Docker has moved the container end back out, down
        and without its address). Should the daemon die before it is gone, it
        is a veth without a record, which the reconciler deletes."""
        made = self._made.pop(endpoint_id, None)
        self._applied_at.pop(endpoint_id, None)
        port = made.port if made is not None else self._port_of(endpoint_id)
        try:
            self._unplugged(endpoint_id, port)
            if late:
                found = self.store.get_endpoint(endpoint_id)
                if found is not None:
                    self.store.release_endpoint(
                        found[0], by=f"{self.cfg.host_id}: DeleteEndpoint finished once etcd answered")
            else:
                self.store.delete_endpoint(endpoint_id)
        finally:
            self.background.soon(self.links.delete, port)
