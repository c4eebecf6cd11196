"""The use cases behind the protocol: each reads, validates, acts and
replies, undoing its own steps when one fails.

Order rule: the etcd record is written before the datapath is touched and
removed after the datapath is cleaned, so a crash between any two steps leaves
a record that names what may exist, for a retry or the reconciler to finish.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import netaddr

from . import deadline
from .config import Config
from .dataplane.links import Links, veth_names
from .dataplane.ovs import EXT_ENDPOINT, EXT_HOST, EXT_NETWORK, Switch
from .docker_api import DockerNames
from .errors import Conflict, DataplaneError, InvalidRequest, NetpluginError, NotFound, StoreUnavailable
from .ipam import ADDRESS_SPACE, Ipam
from .model import (ALLOC_AUX, ALLOC_GATEWAY, Allocation, Binding, Endpoint, Network, check_address,
                    check_docker_id, check_mac, check_name, check_subnet, check_vlan, mac_for)
from .store import Store

if TYPE_CHECKING:
    from .arp_proxy import ArpProxy
    from .dataplane.flows import Flows
    from .limit_sync import LimitSync

log = logging.getLogger(__name__)

GENERIC = "com.docker.network.generic"
KNOWN_OPTIONS = {"vlan", "name", "profile"}
NAMING_PATIENCE = 15.0   # seconds the background namer waits for Docker to store a new network
DELETE_RETRY_EVERY = 1.0  # seconds between background retries of a DeleteEndpoint that etcd refused
DELETE_RETRIES = 60
VETH_BACKLOG = 64          # veth deletions left to the background at most; past it DeleteEndpoint waits
PORT_PATIENCE = 10.0      # seconds Join waits, outside a request, for ovs-vswitchd to open the port
UNPLUG_PATIENCE = 20.0    # seconds DeleteEndpoint waits, outside a request, for the port removal Leave began


def new_network_id() -> str:
    return "n-" + secrets.token_hex(6)


@dataclass
class Backends:
    """What the driver talks to; passed in, never created at import time."""

    store: Store
    ipam: Ipam
    links: Links
    switch: Switch
    docker: DockerNames
    limits: "LimitSync | None" = None
    flows: "Flows | None" = None
    arp: "ArpProxy | None" = None


class Driver:
    def __init__(self, cfg: Config, backends: Backends):
        self.cfg = cfg
        self.store = backends.store
        self.ipam = backends.ipam
        self.links = backends.links
        self.switch = backends.switch
        self.docker = backends.docker
        self.limits = backends.limits
        self.flows = backends.flows
        self.arp = backends.arp
        self._bridge_ready = False
        self._bridge_lock = threading.Lock()
        self._background: ThreadPoolExecutor | None = None
        self._helpers: ThreadPoolExecutor | None = None
        self._unplugging: dict[str, Future] = {}       # endpoint id -> its port's removal, begun at Leave
        self._unplug_lock = threading.Lock()
        self._gateways: dict[str, str] = {}              # network id -> its gateway
        self._made: dict[str, Endpoint] = {}             # endpoints this process made, until deleted
        self._bound: dict[str, str] = {}                 # Docker network id -> global network id
        self._reaper: ThreadPoolExecutor | None = None   # deletes veths after DeleteEndpoint answered
        self._veths_pending = 0
        self.ipam.namer = self.name_now

    # -- the bridge -------------------------------------------------------------
    def ensure_bridge(self) -> None:
        """Make the bridge and its base pipeline once, and again whenever the
        bridge is gone (an OVS database reset, someone's ovs-vsctl del-br):
        one lookup in the local OVSDB replica, far cheaper than failing every
        CreateEndpoint until a restart."""
        with self._bridge_lock:
            if self._bridge_ready and not self.switch.bridge_exists(self.cfg.bridge):
                log.warning("bridge %s disappeared from Open vSwitch: making it again", self.cfg.bridge)
                self._bridge_ready = False
            if not self._bridge_ready:
                self.switch.ensure_bridge(self.cfg.bridge, self.cfg.datapath_type, self.cfg.uplink)
                if self.flows is not None:
                    self.flows.ensure_pipeline()
                self._bridge_ready = True

    # -- networks -----------------------------------------------------------------
    def create_network(self, docker_net: str, options: dict, ipv4: list, ipv6: list) -> None:
        check_docker_id(docker_net, "NetworkID")
        generic = self._generic_options(options)
        if ipv6:
            raise InvalidRequest("netplugin networks are IPv4 only: create the network without --ipv6")
        if not isinstance(ipv4, list) or len(ipv4) != 1 or not isinstance(ipv4[0], dict):
            raise InvalidRequest("a netplugin network needs exactly one IPv4 subnet: pass one --subnet")
        data = ipv4[0]
        if data.get("AddressSpace") != ADDRESS_SPACE:
            raise InvalidRequest("this network's addresses do not come from netplugin's IPAM: "
                                 "add --ipam-driver netplugin so addresses are unique across hosts")
        subnet = check_subnet(data.get("Pool"))
        gateway = str(check_address(data.get("Gateway") or "", subnet, "gateway"))
        aux_raw = data.get("AuxAddresses") or {}
        if not isinstance(aux_raw, dict):
            raise InvalidRequest("AuxAddresses must be an object of name to address")
        aux = {check_name(k, "aux address name"): str(check_address(v, subnet, f"aux address {k}"))
               for k, v in aux_raw.items()}
        vlan = check_vlan(generic["vlan"]) if "vlan" in generic else None
        name = check_name(generic["name"]) if "name" in generic else None
        profile = generic.get("profile", "")
        if profile and profile not in self.store.list_profiles():
            raise NotFound(f"profile {profile!r} does not exist: create it with 'netctl profile create'")

        net = self._existing_network(str(subnet), name)
        created = False
        if net is not None:
            self._check_matches(net, str(subnet), gateway, vlan, aux)
            if profile and profile != net.profile:
                raise Conflict(f"network {net.label} has profile {net.profile or 'none'}, not {profile}: "
                               f"change it with 'netctl network set {net.label} --profile {profile}'")
        else:
            if vlan is None:
                raise InvalidRequest(f"no global network has subnet {subnet}: to create one pass -o vlan=N "
                                     "(1-4094), or create it first with 'netctl network create'")
            sub_pool = self.ipam.recent_sub_pool(str(subnet))
            net = Network(id=new_network_id(), name=name, subnet=str(subnet), gateway=gateway, vlan=vlan,
                          ranges=[sub_pool] if sub_pool else [], aux=aux, origin="docker", profile=profile)
            reserved = [Allocation(gateway, ALLOC_GATEWAY, self.cfg.host_id, network=net.id)]
            reserved += [Allocation(ip, ALLOC_AUX, self.cfg.host_id, network=net.id) for ip in aux.values()]
            try:
                self.store.create_network(net, reserved)
                created = True
            except Conflict:
                # Another host may have created this very network a moment ago: bind to it.
                net = self._existing_network(str(subnet), name)
                if net is None:
                    raise
                self._check_matches(net, str(subnet), gateway, vlan, aux)
        try:
            deadline.check("binding the Docker network")
            self.store.put_binding(Binding(docker_net, net.id, self.cfg.host_id, pool=str(subnet)))
        except NetpluginError:
            if created:
                self.store.delete_network(net)
            raise
        if net.name is None:
            threading.Thread(target=self._name_later, args=(docker_net, net.id), daemon=True,
                             name=f"namer-{net.id}").start()

    def _generic_options(self, options: dict) -> dict:
        if not isinstance(options, dict):
            raise InvalidRequest("Options must be an object")
        generic = options.get(GENERIC) or {}
        if not isinstance(generic, dict):
            raise InvalidRequest(f"{GENERIC} must be an object of driver options")
        unknown = sorted(set(generic) - KNOWN_OPTIONS)
        if unknown:
            raise InvalidRequest(f"unknown driver option(s) {', '.join(unknown)}: netplugin understands "
                                 "-o vlan=N, -o name=GLOBAL-NETWORK and -o profile=BANDWIDTH-PROFILE")
        return {k: str(v) for k, v in generic.items()}

    def _existing_network(self, subnet: str, name: str | None) -> Network | None:
        by_name = self.store.network_by_name(name) if name else None
        if by_name is not None and by_name.subnet != subnet:
            raise Conflict(f"network {name} exists with subnet {by_name.subnet}, not {subnet}: "
                           f"use --subnet {by_name.subnet}, or another name")
        by_subnet = by_name or self.store.network_by_subnet(subnet)
        if name and by_subnet is not None and by_subnet.name not in (None, name):
            raise Conflict(f"subnet {subnet} belongs to network {by_subnet.name}, not {name}")
        return by_subnet

    @staticmethod
    def _check_matches(net: Network, subnet: str, gateway: str, vlan: int | None, aux: dict) -> None:
        if vlan is not None and vlan != net.vlan:
            raise Conflict(f"network {net.label} ({subnet}) uses VLAN {net.vlan}, not {vlan}: "
                           f"pass -o vlan={net.vlan} or leave it out")
        if gateway != net.gateway:
            raise Conflict(f"network {net.label} has gateway {net.gateway}, not {gateway}: "
                           f"pass --gateway {net.gateway}")
        for key, ip in aux.items():
            if net.aux.get(key) != ip:
                raise Conflict(f"aux address {key}={ip} is not reserved in network {net.label} "
                               f"(it reserves {net.aux or 'none'}): leave --aux-address out")
        if net.name_conflict:
            raise Conflict(net.name_conflict)

    def _name_later(self, docker_net: str, net_id: str) -> None:
        """Name a Docker-made network after its Docker network, once Docker has stored it."""
        stop = time.monotonic() + NAMING_PATIENCE
        while time.monotonic() < stop:
            try:
                if self.resolve_name(docker_net, net_id) is not None:
                    return
            except NetpluginError as exc:
                log.warning("cannot name network %s yet: %s", net_id, exc.message)
            # Docker stores the network right after CreateNetwork answers: look again soon.
            time.sleep(0.05 if time.monotonic() + NAMING_PATIENCE - stop < 1 else 0.2)

    def name_now(self, net: Network) -> Network:
        """The network, named now if one of this host's Docker networks stands for it."""
        for binding in self.store.list_bindings():
            if binding.host == self.cfg.host_id and binding.network == net.id:
                return self.resolve_name(binding.docker_network, net.id) or net
        return net

    def resolve_name(self, docker_net: str, net_id: str) -> Network | None:
        """Give the network its Docker name; on a clash, record why it cannot be used."""
        net = self.store.get_network(net_id)
        if net is None or net.name or net.name_conflict:
            return net
        name = self.docker.network_name(docker_net)
        if name is None:
            return None
        if self.store.set_network_name(net, name):
            log.info("network %s is named %s after its Docker network", net.id, name)
        else:
            other = self.store.network_by_name(name)
            if other is not None and other.id != net.id:
                self.store.mark_name_conflict(net, (
                    f"docker network {name} has subnet {net.subnet}, but global network {name} has subnet "
                    f"{other.subnet}: docker network rm {name}, then create it with --subnet {other.subnet} "
                    f"(or with -o name=ANOTHER-NAME for a new network)"))
        return self.store.get_network(net_id)

    def delete_network(self, docker_net: str) -> None:
        check_docker_id(docker_net, "NetworkID")
        self._bound.pop(docker_net, None)
        binding = self.store.get_binding(self.cfg.host_id, docker_net)
        if binding is None:
            return
        self.store.delete_binding(self.cfg.host_id, docker_net)
        net = self.store.get_network(binding.network)
        if net is None or net.origin != "docker":
            return
        # A network Docker made goes with the last Docker network bound to it.
        if any(b.network == net.id for b in self.store.list_bindings()):
            return
        if any(ep.network == net.id for ep in self.store.list_endpoints()):
            return
        self.store.delete_network(net)
        log.info("deleted network %s: its last Docker network was removed", net.label)

    def network_for(self, docker_net: str) -> Network:
        """The global network a Docker network of this host stands for, read fresh.

        Which one it stands for never changes while the binding exists, so it is
        read once per process; a network deleted meanwhile is not found."""
        net_id = self._bound.get(docker_net)
        if net_id is None:
            binding = self.store.get_binding(self.cfg.host_id, docker_net)
            net_id = binding.network if binding else None
        net = self.store.get_network(net_id) if net_id else None
        if net is None:
            self._bound.pop(docker_net, None)
        else:
            self._bound[docker_net] = net_id
        if net is None:
            raise NotFound(f"docker network {docker_net[:12]} is not known to netplugin on host {self.cfg.host_id}: "
                           "remove it and create it again with -d netplugin --ipam-driver netplugin")
        if net.name is None and not net.name_conflict:
            net = self.resolve_name(docker_net, net.id) or net
        if net.name_conflict:
            raise Conflict(net.name_conflict)
        return net

    # -- endpoints ------------------------------------------------------------------
    def create_endpoint(self, docker_net: str, endpoint_id: str, interface: dict) -> dict:
        """Returns the Interface fields Docker left empty (normally just MacAddress)."""
        check_docker_id(docker_net, "NetworkID")
        check_docker_id(endpoint_id, "EndpointID")
        if not isinstance(interface, dict):
            raise InvalidRequest("Interface must be an object with Address and MacAddress")
        if interface.get("AddressIPv6"):
            raise InvalidRequest("netplugin networks are IPv4 only: do not pass --ip6")
        net = self.network_for(docker_net)
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
        port, peer = veth_names(endpoint_id)
        ep = Endpoint(id=endpoint_id, network=net.id, docker_network=docker_net, host=self.cfg.host_id,
                      ip=str(ip), prefixlen=subnet.prefixlen, mac=mac, port=port, peer=peer, vlan=net.vlan,
                      network_name=net.label)
        alloc.endpoint, alloc.network = endpoint_id, net.id
        if not self.store.create_endpoint(ep, net.subnet, offset, alloc_rev, alloc):
            existing = self.store.get_endpoint(endpoint_id)     # the transaction requires its absence
            if existing is not None:
                raise Conflict(f"endpoint {endpoint_id[:12]} exists already on host {existing[0].host}")
            raise Conflict(f"endpoint {endpoint_id[:12]} or its address {ip} changed at the same moment: retry")
        try:
            deadline.check("creating the veth pair")
            self.ensure_bridge()
            self.links.create_veth(port, peer, self.cfg.mtu, mac, self.cfg.datapath_type == "netdev")
            deadline.check("adding the OVS port")
            # ovs-vswitchd opens the port while Docker prepares the container; Join,
            # after which the container can send, waits until it has (wait_ofport).
            self.switch.add_access_port(self.cfg.bridge, port, net.vlan, {
                EXT_ENDPOINT: endpoint_id, EXT_NETWORK: net.id, EXT_HOST: self.cfg.host_id}, wait_vswitchd=False)
            if self.limits is not None:
                deadline.check("applying the bandwidth limit")
                self.limits.apply_endpoint(ep, net)
            deadline.check("finishing the endpoint")
        except Exception:
            self._undo_endpoint(ep)
            raise
        self._made[endpoint_id] = ep
        return {} if interface.get("MacAddress") else {"MacAddress": mac}

    def remove_limit(self, endpoint_id: str, port: str) -> None:
        """Meter, flows and policing of a port go before the port itself."""
        if self.limits is not None:
            self.limits.forget(endpoint_id)            # first: no pass may re-add them
            self.limits.limiter.remove(endpoint_id, port, defer=self.later)

    def _undo_endpoint(self, ep: Endpoint) -> None:
        self._made.pop(ep.id, None)
        for step, fn in (("limit", lambda: self.remove_limit(ep.id, ep.port)),
                         ("OVS port", lambda: self.switch.delete_port(ep.port)),
                         ("veth", lambda: self.links.delete(ep.port)),
                         ("etcd record", lambda: self.store.delete_endpoint(ep.id))):
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - keep undoing; the reconciler finishes the rest
                log.error("rollback of endpoint %s: could not remove its %s: %s", ep.id[:12], step, exc)

    def _known_endpoint(self, docker_net: str, endpoint_id: str) -> Endpoint:
        """For calls that only read what never changes under an endpoint's id
        (Leave, ProgramExternalConnectivity, EndpointOperInfo): an endpoint this
        process made is answered from memory, anything else from etcd."""
        check_docker_id(docker_net, "NetworkID")
        check_docker_id(endpoint_id, "EndpointID")
        ep = self._made.get(endpoint_id)
        if ep is not None and ep.docker_network == docker_net:
            return ep
        return self._read_endpoint(docker_net, endpoint_id)[0]

    def _endpoint(self, docker_net: str, endpoint_id: str) -> tuple[Endpoint, int]:
        """The endpoint record and its revision; NotFound unless it is in docker_net."""
        check_docker_id(docker_net, "NetworkID")
        check_docker_id(endpoint_id, "EndpointID")
        return self._read_endpoint(docker_net, endpoint_id)

    def _read_endpoint(self, docker_net: str, endpoint_id: str) -> tuple[Endpoint, int]:
        found = self.store.get_endpoint(endpoint_id)
        if found is None or found[0].docker_network != docker_net:
            raise NotFound(f"endpoint {endpoint_id[:12]} does not exist in docker network {docker_net[:12]}")
        return found

    def join(self, docker_net: str, endpoint_id: str, sandbox_key: str) -> dict:
        ep = self._known_endpoint(docker_net, endpoint_id)
        if not isinstance(sandbox_key, str):
            raise InvalidRequest("SandboxKey must be a string")
        if not self.links.exists(ep.peer):
            raise DataplaneError(f"the container end {ep.peer} of endpoint {endpoint_id[:12]} is missing: "
                                 "remove the container and start it again")
        gateway = self._gateway_of(ep.network, endpoint_id)
        if sandbox_key and ep.sandbox != sandbox_key:
            ep.sandbox = sandbox_key
            self.later(self._record_sandbox, endpoint_id, sandbox_key)
        if self._take_unplugging(endpoint_id) is not None:
            self._replug(ep)                  # joined again after a Leave: the port comes back
        self.switch.wait_ofport(ep.port, deadline.remaining(PORT_PATIENCE))
        self.announce_later(ep)
        return {"InterfaceName": {"SrcName": ep.peer, "DstPrefix": "eth"},
                "Gateway": gateway, "DisableGatewayService": True}

    def _record_sandbox(self, endpoint_id: str, sandbox_key: str) -> None:
        """Note the container's network namespace in the record, right after Join
        answers: it lets the reconciler rebuild a live container's lost record."""
        for _ in range(3):                    # a concurrent 'netctl endpoint set' may win once
            found = self.store.get_endpoint(endpoint_id)
            if found is None or found[0].sandbox == sandbox_key:
                return
            ep, rev = found
            ep.sandbox = sandbox_key
            if self.store.update_endpoint(ep, rev):
                return
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

    def announce_later(self, ep: Endpoint) -> Future | None:
        """Send the endpoint's gratuitous ARP from a background thread.

        Join does not wait for it: it is a packet-out through ovs-ofctl (tens of
        milliseconds on a busy host) that Docker's container start would
        otherwise wait for, and it is a courtesy: neighbours learn the address
        from the container's own first packets anyway. Announcements go out in
        order, one at a time."""
        if self.arp is None:
            return None
        return self.later(self._announce, ep)

    def later(self, fn, *args) -> Future:
        """Run fn(*args) on the driver's background thread, in submission order,
        after the handler has answered. For work Docker need not wait for."""
        with self._bridge_lock:
            if self._background is None:
                self._background = ThreadPoolExecutor(max_workers=1, thread_name_prefix="np-later")
        return self._background.submit(self._logged, fn, *args)

    def _helper(self) -> ThreadPoolExecutor:
        """Threads for work a handler runs alongside its own and waits for."""
        with self._bridge_lock:
            if self._helpers is None:
                self._helpers = ThreadPoolExecutor(max_workers=8, thread_name_prefix="np-helper")
        return self._helpers

    @staticmethod
    def _logged(fn, *args) -> None:
        try:
            fn(*args)
        except NetpluginError as exc:
            log.warning("background %s failed: %s", getattr(fn, "__name__", fn), exc.message)
        except Exception:  # noqa: BLE001 - background work must not fail silently
            log.exception("background %s failed", getattr(fn, "__name__", fn))

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
                self._unplugging[endpoint_id] = self._helper().submit(self._unplug, endpoint_id, ep.port)

    def check_endpoint(self, docker_net: str, endpoint_id: str) -> None:
        """NotFound unless the endpoint exists in docker_net."""
        self._known_endpoint(docker_net, endpoint_id)

    def _unplug(self, endpoint_id: str, port: str) -> None:
        """The endpoint's limit and flows, then its switch port."""
        self.remove_limit(endpoint_id, port)
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

    def _replug(self, ep: Endpoint) -> None:
        """Undo the port removal of a Leave that another Join followed."""
        self.switch.add_access_port(self.cfg.bridge, ep.port, ep.vlan, {
            EXT_ENDPOINT: ep.id, EXT_NETWORK: ep.network, EXT_HOST: self.cfg.host_id})
        if self.limits is not None:
            self.limits.apply_endpoint(ep)

    def check_ids(self, docker_net: str, endpoint_id: str) -> None:
        check_docker_id(docker_net, "NetworkID")
        check_docker_id(endpoint_id, "EndpointID")

    def delete_endpoint(self, docker_net: str, endpoint_id: str) -> None:
        """Remove port and veth, then the record. Unknown endpoints succeed:
        Docker only logs errors here, so whatever exists by name is cleaned.

        Docker forgets the endpoint whatever the answer, so when etcd cannot
        be reached the deletion is also finished in the background, retried
        for up to a minute, rather than left to the reconciler."""
        check_docker_id(docker_net, "NetworkID")
        check_docker_id(endpoint_id, "EndpointID")
        try:
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
        timer = threading.Timer(DELETE_RETRY_EVERY, self.later, (again,))
        timer.daemon = True
        timer.start()

    def _delete_endpoint(self, endpoint_id: str, late: bool = False) -> None:
        """Port (with its limit and flows), then the record; the veth after the answer.

        ``late``: Docker has moved on, and its ReleaseAddress, refused while
        the record existed, will not come again: the address goes with the
        record (and a tombstone says why).

        The veth is deleted after DeleteEndpoint answers: off the switch and
        out of etcd, it carries nothing (Docker has moved the container end
        back out, down and without its address), and the kernel takes 15-25 ms
        to delete it. Should the daemon die before it is gone, it is a veth
        without a record, which the reconciler deletes."""
        port = veth_names(endpoint_id)[0]
        self._made.pop(endpoint_id, None)
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
            self._delete_veth_soon(port)

    def _delete_veth_soon(self, port: str) -> None:
        """Delete a veth on its own thread, after the answer.

        The kernel deletes veths one at a time (15-25 ms each, under the RTNL
        lock), so a burst of deletions queues here rather than behind the
        background thread's ARP and flow work. Past VETH_BACKLOG waiting, the
        caller deletes its own, which holds the backlog (and what a crash
        would leave to the reconciler) to a bound."""
        with self._unplug_lock:
            inline = self._veths_pending >= VETH_BACKLOG
            if not inline:
                self._veths_pending += 1
                if self._reaper is None:
                    self._reaper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="np-veth")
        if inline:
            self.links.delete(port)
            return
        self._reaper.submit(self._logged, self._delete_veth, port)

    def drain(self, timeout: float = 5.0) -> None:
        """Wait until the work queued after earlier answers is done."""
        self.later(lambda: None).result(timeout=timeout)
        with self._unplug_lock:
            reaper = self._reaper
        if reaper is not None:
            reaper.submit(lambda: None).result(timeout=timeout)

    def _delete_veth(self, port: str) -> None:
        try:
            self.links.delete(port)
        finally:
            with self._unplug_lock:
                self._veths_pending -= 1

    def endpoint_info(self, docker_net: str, endpoint_id: str) -> dict:
        ep = self._known_endpoint(docker_net, endpoint_id)
        return {"network": ep.network_name or ep.network, "network_id": ep.network, "vlan": ep.vlan,
                "ip": ep.ip, "mac": ep.mac, "port": ep.port, "host": ep.host, "bridge": self.cfg.bridge}

    # -- start-up -----------------------------------------------------------------------
    def compare_ports_with_store(self) -> dict:
        """Log how this host's OVS ports and its etcd endpoint records differ."""
        ports = {p["external_ids"].get(EXT_ENDPOINT): p["name"] for p in self.switch.list_ports(self.cfg.bridge)
                 if p["external_ids"].get(EXT_HOST) in (None, self.cfg.host_id)}
        records = {ep.id: ep.port for ep in self.store.list_endpoints() if ep.host == self.cfg.host_id}
        diff = {"ports_without_record": sorted(ports[e] for e in set(ports) - set(records)),
                "records_without_port": sorted(e[:12] for e in set(records) - set(ports))}
        if diff["ports_without_record"] or diff["records_without_port"]:
            log.warning("OVS and etcd differ on host %s: %s (the reconciler repairs this)", self.cfg.host_id, diff)
        else:
            log.info("OVS and etcd agree on host %s: %d endpoints", self.cfg.host_id, len(records))
        return diff
